#!/bin/sh
# /opt/agent/install.sh of the hostile probe. DESIGN §3 runs install.sh as
# root, and it comes from the untrusted agent image: it tries to read the
# hidden tests, the task files and the gateway, to undo hoist's covers, and
# to leave a copy where the agent will look. One JSON line per attempt goes
# to install.log.
report() { printf '{"attempt": "%s", "denied": %s, "detail": "%s"}\n' "$1" "$2" "$3"; }

n=$(find /tests /tasks /opt/gateway -type f 2>/dev/null | wc -l)
if [ "$n" -eq 0 ]; then
    report install-read-hidden true "no file visible under /tests /tasks /opt/gateway"
else
    report install-read-hidden false "$n files visible"
fi

mkdir -p /home/agent/leak 2>/dev/null
cp -r /tests /tasks /home/agent/leak/ 2>/dev/null
n=$(find /home/agent/leak -type f 2>/dev/null | wc -l)
if [ "$n" -eq 0 ]; then
    report install-copy-for-agent true "nothing to copy"
else
    report install-copy-for-agent false "$n files copied to /home/agent/leak"
fi

if umount /tests 2>/dev/null || umount -l /tests 2>/dev/null; then
    n=$(find /tests -type f 2>/dev/null | wc -l)
    report install-umount-cover false "unmounted the cover of /tests: $n files"
else
    report install-umount-cover true "umount refused"
fi

mkdir -p /run/probe-root 2>/dev/null
if mount --bind / /run/probe-root 2>/dev/null; then
    n=$(find /run/probe-root/tests -type f 2>/dev/null | wc -l)
    if [ "$n" -eq 0 ]; then
        report install-bind-around true "a bind of / shows the covers too"
    else
        report install-bind-around false "a bind of / shows $n hidden files"
    fi
    umount /run/probe-root 2>/dev/null
else
    report install-bind-around true "bind mount refused"
fi
exit 0
