#!/usr/bin/python3
# /opt/agent/install.sh of agent-hostile-install: python, not sh (the name is
# DESIGN's, the interpreter the agent's choice). Runs as root before the
# agent; see README.md and /opt/agent/hostile.py.
import sys

import hostile

sys.exit(hostile.install_main())
