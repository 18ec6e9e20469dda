#!/bin/sh
# /tests/grade.sh TASK_ID — grade one task: run its hidden tests (/tests/TASK_ID/) with
# pytest against the task's workdir and write {"resolved": bool, "tests": {...}} to
# $HOIST_GRADE_OUT (and stdout). Runs as root; see /tests/grade.py for the details.
exec /usr/bin/python3 -I -B /tests/grade.py "$@"
