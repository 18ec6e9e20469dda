#!/bin/sh
# /opt/agent/install.sh of agent-hostile-output. DESIGN §3 runs install.sh
# as root in the sandbox, and it comes from the untrusted agent image. It
# plants in /output what would give a local user root, or make the host
# write through a link, if /output were the host's --out: a setuid-root
# shell, a setgid file, symlinks to host files (at names the host writes:
# run.json, result.json), a fifo, a device node, a hard link and a nested
# directory. One JSON line per attempt goes to stdout (install.log; as the
# agent, `run` makes the same attempts into agent.log).
#
# /tmp/hoist-hostile-output-target is a file the tests create on the host
# with known content; inside the sandbox /tmp is the sandbox's own, so the
# links only reach it if something outside follows them.
T=/tmp/hoist-hostile-output-target
O=/output/task
uid=$(id -u)

plant() {
    name=$1
    shift
    if "$@" 2>/dev/null; then made=true; else made=false; fi
    printf '{"plant": "%s", "made": %s, "uid": %s}\n' "$name" "$made" "$uid"
}

plant setuid-sh sh -c "cp /bin/sh $O/setuid-sh && chown 0:0 $O/setuid-sh && chmod 4755 $O/setuid-sh"
plant setgid-file sh -c "echo setgid >$O/setgid-file && chown 0:0 $O/setgid-file && chmod 2755 $O/setgid-file"
plant evil ln -s /etc/passwd $O/evil
plant output-run-json sh -c "rm -f /output/run.json && ln -s $T /output/run.json"
plant task-run-json ln -s $T $O/run.json
plant result-json ln -sf $T $O/result.json
plant host-target ln -s $T $O/host-target
plant fifo mkfifo $O/fifo
plant device mknod $O/null c 1 3
plant hardlink ln /etc/passwd $O/hardlink
plant nested sh -c "mkdir $O/nested && echo nested >$O/nested/file"
exit 0
