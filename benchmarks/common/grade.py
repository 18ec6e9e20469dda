"""/tests/grade.py TASK_ID — run the hidden tests of one task against its workdir.

Started by /tests/grade.sh as root (DESIGN §3 step 7), after every process of the
agent is gone. It
  1. reads /tasks/TASK_ID/task.json for the workdir and the grade timeout;
  2. lists the expected tests by parsing /tests/TASK_ID/test_*.py with `ast` (the
     agent's code cannot make a test disappear: a test that does not report is ERROR);
  3. copies the hidden tests to a fresh root-only (0700) temporary directory with an
     empty pytest.ini, so that nothing of the workdir (conftest.py, pytest.ini,
     pyproject.toml, a planted pytest.py) configures or replaces pytest;
  4. runs pytest there in a child `python3 -I -B` (isolated: no PYTHON* variables, no
     user site, no .pyc written into the workdir) with a clean environment: pytest and
     its built-in plugins are imported first, then the workdir is put in front of
     sys.path (what PYTHONPATH=workdir would do) so that the tests import the agent's
     code; `-p no:cacheprovider`, `--junitxml`, a deadline below the grade timeout, and
     the child's whole process group killed afterwards;
  5. maps the junit xml to {"test_name": "PASSED"|"FAILED"|"ERROR"|"SKIPPED"} and
     writes {"resolved": bool, "tests": {...}} to $HOIST_GRADE_OUT (and to stdout).
resolved is true when every expected test PASSED. Whatever the agent did (a syntax
error, an import that hangs, a crash of pytest), the result JSON is written; the exit
status is 0 once a verdict exists and 2 when the task itself is unknown or broken.

Executing the agent's code is inherent to grading it: the tests run it as root inside
the sandbox, after the agent phase. This grader keeps the agent from configuring or
shadowing pytest; it cannot stop code that deliberately sabotages the test process.
"""

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

TESTS_DIR = "/tests"
TASKS_DIR = "/tasks"
SEVERITY = {"PASSED": 0, "SKIPPED": 1, "FAILED": 2, "ERROR": 3}
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs in the child: import pytest and its built-in plugins before the workdir can
# shadow anything, then put the workdir first on sys.path and run pytest.
RUNNER = r"""
import importlib, sys
workdir, args = sys.argv[1], sys.argv[2:]
import pytest
from _pytest.config import default_plugins
for name in default_plugins:
    try:
        importlib.import_module("_pytest." + name)
    except Exception:
        pass
sys.path.insert(0, workdir)
sys.exit(pytest.main(args))
"""


def log(msg):
    print(f"grade: {msg}", flush=True)


def expected_tests(paths):
    """Test names pytest will report, from the source (top level and Test* classes)."""
    names = []
    for path in paths:
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                names.append(node.name)
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"):
                        names.append(f"{node.name}.{item.name}")
    return names


def junit_results(path):
    """{name: status} from a pytest junit xml (xunit1); parametrized cases folded."""
    results = {}
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        name = re.sub(r"\[.*\]$", "", case.get("name", ""))
        # classname is "test_module" or "test_module.TestClass" (dotted package path first).
        classname = case.get("classname", "")
        cls = classname.rsplit(".", 1)[-1] if classname else ""
        if cls.startswith("Test"):
            name = f"{cls}.{name}"
        if case.find("error") is not None:
            status = "ERROR"
        elif case.find("failure") is not None:
            status = "FAILED"
        elif case.find("skipped") is not None:
            status = "SKIPPED"
        else:
            status = "PASSED"
        previous = results.get(name)
        if previous is None or SEVERITY[status] > SEVERITY[previous]:
            results[name] = status
    return results


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_pytest(workdir, test_files, timeout):
    """Run pytest on copies of test_files; return ({name: status}, why-not-or-None)."""
    tmp = tempfile.mkdtemp(prefix="hoist-grade-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        os.chmod(tmp, 0o700)
        tests = os.path.join(tmp, "tests")
        os.mkdir(tests, 0o700)
        for path in test_files:
            shutil.copyfile(path, os.path.join(tests, os.path.basename(path)))
        ini = os.path.join(tmp, "pytest.ini")
        with open(ini, "w") as f:
            f.write("[pytest]\n")
        junit = os.path.join(tmp, "junit.xml")
        args = [tests, "-c", ini, "--rootdir", tmp, "--confcutdir", tmp,
                "-p", "no:cacheprovider", "-o", "junit_family=xunit1", "--junitxml", junit,
                "-rA", "--color=no", "--tb=short"]
        env = {"PATH": CLEAN_PATH, "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
               "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        cmd = [sys.executable or "/usr/bin/python3", "-I", "-B", "-c", RUNNER, workdir] + args
        log(f"running pytest in {tmp} against {workdir} (deadline {timeout}s)")
        sys.stdout.flush()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        why = None
        try:
            code = proc.wait(timeout=timeout)
            log(f"pytest exited with {code}")
        except subprocess.TimeoutExpired:
            why = f"pytest did not finish within {timeout}s"
            kill_group(proc.pid)
            proc.wait()
        # Nothing the tests started may outlive grading.
        kill_group(proc.pid)
        if why is None and not os.path.exists(junit):
            why = "pytest wrote no junit xml"
        if why is not None:
            return {}, why
        try:
            return junit_results(junit), None
        except (ET.ParseError, OSError) as e:
            return {}, f"unreadable junit xml: {e}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_result(result):
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    out = os.environ.get("HOIST_GRADE_OUT")
    if out:
        with open(out, "w") as f:
            f.write(text)
    print(text, end="", flush=True)


def grade(task_id):
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", task_id):
        raise LookupError(f"bad task id {task_id!r}")
    task_file = os.path.join(TASKS_DIR, task_id, "task.json")
    hidden = os.path.join(TESTS_DIR, task_id)
    try:
        task = json.load(open(task_file))
        workdir = task["workdir"]
        grade_timeout = int(task.get("grade", {}).get("timeout_sec", 300))
        test_files = sorted(os.path.join(hidden, n) for n in os.listdir(hidden)
                            if n.startswith("test") and n.endswith(".py"))
        expected = expected_tests(test_files)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError) as e:
        raise LookupError(f"task {task_id}: {e}") from e
    if not expected:
        raise LookupError(f"task {task_id}: no hidden tests in {hidden}")
    timeout = max(10, grade_timeout - 30)
    results, why = run_pytest(workdir, test_files, timeout)
    if why:
        log(why)
    tests = {name: results.get(name, "ERROR") for name in expected}
    missing = [n for n in expected if n not in results]
    if missing and not why:
        log(f"no result for {', '.join(missing)}: counted as ERROR")
    resolved = all(status == "PASSED" for status in tests.values())
    log(f"{sum(s == 'PASSED' for s in tests.values())}/{len(tests)} hidden tests passed: "
        f"resolved={str(resolved).lower()}")
    return {"resolved": resolved, "tests": tests}


def main(argv):
    if len(argv) != 2:
        print("usage: grade.sh TASK_ID", file=sys.stderr)
        return 2
    try:
        result = grade(argv[1])
        code = 0
    except LookupError as e:
        log(f"error: {e}")
        result, code = {"resolved": False, "tests": {}}, 2
    except Exception as e:  # never end without a verdict
        log(f"error: grader failed: {type(e).__name__}: {e}")
        result, code = {"resolved": False, "tests": {}}, 2
    write_result(result)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
