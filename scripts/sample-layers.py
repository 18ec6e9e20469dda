#!/usr/bin/env python3
"""scripts/sample-layers.py — write the layer tars of the sample axis images.

Used by scripts/build-samples; each tar is then added to an image with
`umoci raw add-layer`. Every entry has a fixed mtime (2024-01-01T00:00:00Z), numeric
owners and no user/group names, entries are sorted, and the git repositories are
committed with fixed identities and dates, so the bytes depend only on the sources
(and, for users.tar, on the base rootfs's /etc files).

  sample-layers.py REPO BASE_ROOTFS OUTDIR

reads REPO/{benchmarks,agents,models} and writes into OUTDIR:

  users.tar            /etc/{passwd,group,shadow,gshadow} of BASE_ROOTFS plus user and
                       group agent (1000:1000), /home/agent (0755 1000:1000)
  pyfix.tar            every task of benchmarks/pyfix/tasks (a shared environment)
  swe-mini-ID.tar      one per task of benchmarks/swe-mini/tasks (one task per image)
  agent-oracle.tar     /opt/agent/{run, patches/ID.diff for every task} + /etc/oracle-leak
  agent-noop.tar       /opt/agent/run
  agent-scripted.tar   /opt/agent/run
  agent-probe.tar      /opt/agent/run
  agent-hostile-install.tar  /opt/agent/{run, install.sh, hostile.py}
  agent-hostile-run.tar      /opt/agent/{run, hostile.py}
  agent-hostile-grader.tar   /opt/agent/{run, hostile.py}
  agent-hostile-output.tar  /opt/agent/{run, install.sh}
  gateway-replay.tar   /opt/gateway/{run, recordings/*.json} (root only)
  images.json          what build-samples assembles: [{"tag", "axis", "base": bool,
                       "layers": [tar names], "tasks": [ids]}] in build order

A benchmark task is a directory benchmarks/NAME/tasks/ID/ holding task.json (its "id"
is ID, its "workdir" /testbed/REPO, its grade command ["/tests/grade.sh", ID]), repo/
(the project at its buggy commit), hidden/test_*.py and fix.diff (the gold patch,
checked here to apply to repo/). Its layer holds

  /tasks/ (0700 root)  /tasks/ID/ (0700)  /tasks/ID/task.json (0600)
  /tests/ (0700 root)  /tests/grade.sh (0700)  /tests/grade.py (0600)
  /tests/ID/ (0700)    /tests/ID/test_*.py (0600)
  /testbed/ (0755 root)  /testbed/REPO/ — a git repository (one commit on main,
                       with .git), everything 1000:1000, dirs 0755, files 0644/0755
"""
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

MTIME = 1704067200  # 2024-01-01T00:00:00Z
GIT_DATE = "2024-01-01T00:00:00+00:00"
AGENT_UID = AGENT_GID = 1000
SHADOW_DAY = MTIME // 86400  # the last password change, in days since the epoch
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def die(msg):
    sys.exit(f"error: sample-layers.py: {msg}")


class Layer:
    """Collects entries, then writes them sorted (parents first) into a PAX tar."""

    def __init__(self):
        self.entries = {}

    def _add(self, name, kind, mode, uid, gid, data=None, linkname=""):
        name = name.strip("/")
        if name in self.entries:
            die(f"duplicate layer entry {name}")
        self.entries[name] = (kind, mode, uid, gid, data, linkname)

    def dir(self, name, mode=0o755, uid=0, gid=0):
        self._add(name, tarfile.DIRTYPE, mode, uid, gid)

    def file(self, name, data, mode=0o644, uid=0, gid=0):
        if isinstance(data, str):
            data = data.encode()
        self._add(name, tarfile.REGTYPE, mode, uid, gid, data)

    def symlink(self, name, target, uid=0, gid=0):
        self._add(name, tarfile.SYMTYPE, 0o777, uid, gid, linkname=target)

    def tree(self, dest, src, uid, gid):
        """src's contents below dest (dest itself included), with normalised modes."""
        self.dir(dest, 0o755, uid, gid)
        for root, dirs, files in os.walk(src):
            dirs.sort()
            rel = os.path.relpath(root, src)
            base = dest if rel == "." else f"{dest}/{rel}"
            for d in dirs:
                path = os.path.join(root, d)
                if os.path.islink(path):
                    self.symlink(f"{base}/{d}", os.readlink(path), uid, gid)
                else:
                    self.dir(f"{base}/{d}", 0o755, uid, gid)
            for f in sorted(files):
                path = os.path.join(root, f)
                if os.path.islink(path):
                    self.symlink(f"{base}/{f}", os.readlink(path), uid, gid)
                    continue
                mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
                with open(path, "rb") as fh:
                    self.file(f"{base}/{f}", fh.read(), mode, uid, gid)

    def write(self, path):
        names = sorted(self.entries, key=lambda n: n.split("/"))
        for name in names:
            parent = name.rpartition("/")[0]
            if parent and parent not in self.entries:
                die(f"{path}: {name} has no parent directory entry")
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                kind, mode, uid, gid, data, linkname = self.entries[name]
                ti = tarfile.TarInfo(name + "/" if kind == tarfile.DIRTYPE else name)
                ti.type, ti.mode, ti.uid, ti.gid = kind, mode, uid, gid
                ti.uname = ti.gname = ""
                ti.mtime = MTIME
                ti.linkname = linkname
                if kind == tarfile.REGTYPE:
                    ti.size = len(data)
                    tar.addfile(ti, io.BytesIO(data))
                else:
                    tar.addfile(ti)


# ---- benchmark-base: the agent user --------------------------------------------------

def users_layer(base, out):
    layer = Layer()
    for d in ("etc", "home"):
        st = os.stat(os.path.join(base, d))
        layer.dir(d, st.st_mode & 0o7777, st.st_uid, st.st_gid)
    lines = {
        "passwd": "agent:x:1000:1000:hoist agent:/home/agent:/bin/sh\n",
        "group": "agent:x:1000:\n",
        "shadow": f"agent:!:{SHADOW_DAY}:0:99999:7:::\n",
        "gshadow": "agent:!::\n",
    }
    for name, line in lines.items():
        path = os.path.join(base, "etc", name)
        if not os.path.exists(path):
            if name == "gshadow":
                continue
            die(f"{path} is missing")
        st = os.stat(path)
        text = open(path, encoding="utf-8").read()
        for existing in text.splitlines():
            fields = existing.split(":")
            if fields[0] == "agent" or (name in ("passwd", "group") and len(fields) > 2
                                        and fields[2] == "1000"):
                die(f"{path} already has {existing!r}")
        if text and not text.endswith("\n"):
            text += "\n"
        layer.file(f"etc/{name}", text + line, st.st_mode & 0o7777, st.st_uid, st.st_gid)
    layer.dir("home/agent", 0o755, AGENT_UID, AGENT_GID)
    layer.write(out)


# ---- benchmarks ----------------------------------------------------------------------

def git_binary():
    return "/usr/bin/git" if os.access("/usr/bin/git", os.X_OK) else shutil.which("git") or die("git not found")


def git_env(home):
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": home, "TZ": "UTC", "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "hoist samples", "GIT_AUTHOR_EMAIL": "samples@hoist.invalid",
        "GIT_COMMITTER_NAME": "hoist samples", "GIT_COMMITTER_EMAIL": "samples@hoist.invalid",
        "GIT_AUTHOR_DATE": GIT_DATE, "GIT_COMMITTER_DATE": GIT_DATE,
    }


def load_task(task_dir):
    tid = os.path.basename(task_dir)
    if not ID_RE.fullmatch(tid):
        die(f"{task_dir}: bad task id")
    try:
        raw = open(os.path.join(task_dir, "task.json"), "rb").read()
        task = json.loads(raw)
    except (OSError, ValueError) as e:
        die(f"{task_dir}/task.json: {e}")
    workdir = task.get("workdir", "")
    repo = workdir[len("/testbed/"):] if workdir.startswith("/testbed/") else ""
    if task.get("id") != tid:
        die(f"{task_dir}/task.json: id {task.get('id')!r} is not the directory name {tid!r}")
    if not ID_RE.fullmatch(repo):
        die(f"{task_dir}/task.json: workdir must be /testbed/NAME, not {workdir!r}")
    if task.get("grade", {}).get("command") != ["/tests/grade.sh", tid]:
        die(f"{task_dir}/task.json: grade.command must be [\"/tests/grade.sh\", \"{tid}\"]")
    if not isinstance(task.get("instruction"), str) or not task["instruction"].strip():
        die(f"{task_dir}/task.json: no instruction")
    hidden = sorted(f for f in os.listdir(os.path.join(task_dir, "hidden"))
                    if f.startswith("test") and f.endswith(".py"))
    if not hidden:
        die(f"{task_dir}/hidden: no test_*.py")
    for f in ("fix.diff", "repo"):
        if not os.path.exists(os.path.join(task_dir, f)):
            die(f"{task_dir}/{f} is missing")
    return {"id": tid, "dir": task_dir, "raw": raw, "repo": repo, "hidden": hidden}


def tasks_of(bench_dir):
    tasks_dir = os.path.join(bench_dir, "tasks")
    return [load_task(os.path.join(tasks_dir, d)) for d in sorted(os.listdir(tasks_dir))
            if os.path.isdir(os.path.join(tasks_dir, d))]


def committed_repo(task, scratch):
    """A copy of the task's repo/ as a git repository with one reproducible commit."""
    git, work = git_binary(), os.path.join(scratch, task["id"], task["repo"])
    home = os.path.join(scratch, "home")
    os.makedirs(home, exist_ok=True)
    shutil.copytree(os.path.join(task["dir"], "repo"), work, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
    for root, dirs, files in os.walk(work):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, 0o755 if os.stat(p).st_mode & 0o111 else 0o644)
    env = git_env(home)

    def run(*args):
        proc = subprocess.run([git, *args], cwd=work, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            die(f"{task['id']}: git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    run("-c", "init.defaultBranch=main", "init", "-q", "--template=")
    run("add", "-A")
    run("-c", "commit.gpgsign=false", "commit", "-q", "--no-verify",
        "-m", f"Import {task['repo']}")
    if run("status", "--porcelain"):
        die(f"{task['id']}: the committed repository is not clean")
    run("apply", "--check", os.path.join(task["dir"], "fix.diff"))
    # The index git wrote holds inode numbers and ctimes: rebuild it from the commit with
    # zeroed stat data (git re-checks the files by content on its first look).
    os.unlink(os.path.join(work, ".git", "index"))
    run("read-tree", "HEAD")
    return work


def benchmark_layer(tasks, common, scratch, out):
    layer = Layer()
    layer.dir("tasks", 0o700)
    layer.dir("tests", 0o700)
    layer.dir("testbed", 0o755)
    with open(os.path.join(common, "grade.sh"), "rb") as f:
        layer.file("tests/grade.sh", f.read(), 0o700)
    with open(os.path.join(common, "grade.py"), "rb") as f:
        layer.file("tests/grade.py", f.read(), 0o600)
    for task in tasks:
        tid = task["id"]
        layer.dir(f"tasks/{tid}", 0o700)
        layer.file(f"tasks/{tid}/task.json", task["raw"], 0o600)
        layer.dir(f"tests/{tid}", 0o700)
        for name in task["hidden"]:
            with open(os.path.join(task["dir"], "hidden", name), "rb") as f:
                layer.file(f"tests/{tid}/{name}", f.read(), 0o600)
        work = committed_repo(task, scratch)
        layer.tree(f"testbed/{task['repo']}", work, AGENT_UID, AGENT_GID)
    layer.write(out)


# ---- agents and the gateway ----------------------------------------------------------

def read(path):
    with open(path, "rb") as f:
        return f.read()


def agent_layer(run_path, out, extra=None):
    layer = Layer()
    layer.dir("opt")
    layer.dir("opt/agent")
    layer.file("opt/agent/run", read(run_path), 0o755)
    install = os.path.join(os.path.dirname(run_path), "install.sh")
    if os.path.exists(install):
        layer.file("opt/agent/install.sh", read(install), 0o755)
    if extra:
        extra(layer)
    layer.write(out)


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__)
    repo, base, outdir = argv[1:]
    os.makedirs(outdir, exist_ok=True)
    images = []
    users_layer(base, os.path.join(outdir, "users.tar"))
    images.append({"tag": "benchmark-base", "axis": "benchmark", "base": True,
                   "layers": ["users.tar"], "tasks": []})

    common = os.path.join(repo, "benchmarks", "common")
    pyfix = tasks_of(os.path.join(repo, "benchmarks", "pyfix"))
    swe = tasks_of(os.path.join(repo, "benchmarks", "swe-mini"))
    all_tasks = pyfix + swe
    ids = [t["id"] for t in all_tasks]
    if len(set(ids)) != len(ids):
        die(f"task ids are not unique across the benchmarks: {ids}")
    repos = [t["repo"] for t in pyfix]
    if len(set(repos)) != len(repos):
        die(f"pyfix tasks share a workdir: {repos}")

    with tempfile.TemporaryDirectory(prefix="hoist-samples-") as scratch:
        benchmark_layer(pyfix, common, os.path.join(scratch, "pyfix"),
                        os.path.join(outdir, "pyfix.tar"))
        images.append({"tag": "pyfix", "axis": "benchmark", "base": True,
                       "layers": ["pyfix.tar"], "tasks": [t["id"] for t in pyfix]})
        for task in swe:
            name = f"swe-mini-{task['id']}"
            benchmark_layer([task], common, os.path.join(scratch, name),
                            os.path.join(outdir, name + ".tar"))
            images.append({"tag": name, "axis": "benchmark", "base": True,
                           "layers": [name + ".tar"], "tasks": [task["id"]]})

    agents = os.path.join(repo, "agents")

    def oracle_extra(layer):
        layer.dir("opt/agent/patches")
        for task in all_tasks:
            layer.file(f"opt/agent/patches/{task['id']}.diff",
                       read(os.path.join(task["dir"], "fix.diff")), 0o644)
        # Outside /opt/agent: hoist must not take it into the fused rootfs.
        layer.dir("etc")
        layer.file("etc/oracle-leak", "agent-oracle: this file lies outside /opt/agent; "
                   "it must never appear in a fused rootfs.\n", 0o644)

    def hostile_extra(layer):
        # The attacks the three hostile agents share (agents/hostile-lib).
        layer.file("opt/agent/hostile.py", read(os.path.join(agents, "hostile-lib", "hostile.py")),
                   0o644)

    for name, extra in (("oracle", oracle_extra), ("noop", None), ("scripted", None),
                        ("probe", None), ("sleeper", None), ("hostile-install", hostile_extra),
                        ("hostile-run", hostile_extra), ("hostile-grader", hostile_extra),
                        ("hostile-output", None)):
        agent_layer(os.path.join(agents, name, "run"), os.path.join(outdir, f"agent-{name}.tar"),
                    extra)
        images.append({"tag": f"agent-{name}", "axis": "agent", "base": False,
                       "layers": [f"agent-{name}.tar"],
                       "tasks": ids if name == "oracle" else []})

    replay = os.path.join(repo, "models", "replay")
    layer = Layer()
    layer.dir("opt")
    layer.dir("opt/gateway", 0o700)
    layer.file("opt/gateway/run", read(os.path.join(replay, "run")), 0o700)
    layer.dir("opt/gateway/recordings", 0o700)
    recorded = []
    for name in sorted(os.listdir(os.path.join(replay, "recordings"))):
        if name.endswith(".json"):
            data = read(os.path.join(replay, "recordings", name))
            rec = json.loads(data)
            if rec.get("task_id") != name[:-5] or not isinstance(rec.get("responses"), list):
                die(f"models/replay/recordings/{name}: task_id must be {name[:-5]!r} "
                    "and responses a list")
            layer.file(f"opt/gateway/recordings/{name}", data, 0o600)
            recorded.append(name[:-5])
    layer.write(os.path.join(outdir, "gateway-replay.tar"))
    images.append({"tag": "gateway-replay", "axis": "gateway", "base": False,
                   "layers": ["gateway-replay.tar"], "tasks": recorded})

    with open(os.path.join(outdir, "images.json"), "w") as f:
        json.dump(images, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv)
