#!/usr/bin/env python3
"""scripts/code-shape.py — the shape of the code, for issue notes (issue 14).

Prints, for the tree at REPO (default: this checkout):

- the module graph: for each top-level module of src/ (a file src/X.rs or a
  directory src/X/), the other top-level modules its non-test code names
  (`crate::X` in the library, `hoist::X` in the binary's cli), and the cycles
  among them (strongly connected components of more than one module);
- function sizes: the lines of every non-test `fn` with a body (from its
  `fn` line to its closing brace), as count, median, p90 and max, and the
  largest few.

Test code is left out: what follows `#[cfg(test)]` in a file (the tests
module, by convention at the end), and tests/; so are comments and strings. The parse is textual (braces
counted outside strings, chars and comments), good for figures, not a
Rust parser.

Usage: scripts/code-shape.py [REPO] [--json]
"""
import json
import re
import statistics
import sys
from pathlib import Path

FN = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?(?:extern\s+\"C\"\s+)?fn\s+(\w+)")
NAMED = re.compile(r"\b(?:crate|hoist)::(\w+)")
USE_GROUP = re.compile(r"\buse\s+(?:crate|hoist)::\{([^;]*)\}", re.S)


def non_test(text):
    """The file's text before its first `#[cfg(test)]`."""
    i = text.find("#[cfg(test)]")
    return text if i < 0 else text[:i]


def strip_literals(line, state):
    """`line` with strings, chars and comments blanked; `state` carries an
    open block comment or string across lines."""
    out = []
    i = 0
    while i < len(line):
        c = line[i]
        if state["block"]:
            if line.startswith("*/", i):
                state["block"] = False
                i += 2
            else:
                i += 1
            continue
        if state["string"]:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                state["string"] = False
            i += 1
            continue
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"] = True
            i += 2
            continue
        if c == '"':
            state["string"] = True
            i += 1
            continue
        if c == "'":
            # A char literal ('x', '\n', '{'), not a lifetime ('a).
            m = re.match(r"'(?:\\.|[^\\'])'", line[i:])
            if m:
                i += len(m.group(0))
                continue
        out.append(c)
        i += 1
    return "".join(out)


def functions(text):
    """(name, lines) of each fn with a body in `text`."""
    lines = text.split("\n")
    clean = []
    state = {"block": False, "string": False}
    for line in lines:
        clean.append(strip_literals(line, state))
    found = []
    for start, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        depth = 0  # braces
        nest = 0  # parentheses and brackets, before the body
        opened = False
        for j in range(start, len(lines)):
            end = None
            for ch in clean[j]:
                if not opened and ch in "([":
                    nest += 1
                elif not opened and ch in ")]":
                    nest -= 1
                elif not opened and ch == ";" and nest == 0:
                    end = "declaration"  # no body: a trait's
                    break
                elif ch == "{":
                    depth += 1
                    opened = True
                elif ch == "}":
                    depth -= 1
                    if opened and depth == 0:
                        end = "body"
                        break
            if end == "body":
                found.append((m.group(1), j - start + 1))
            if end:
                break
    return found


def top_module(path, src):
    rel = path.relative_to(src)
    first = rel.parts[0]
    return first[:-3] if first.endswith(".rs") else first


def analyse(repo):
    src = repo / "src"
    modules = sorted(
        {top_module(p, src) for p in src.rglob("*.rs")} - {"lib", "main"}
    )
    edges = {m: set() for m in modules}
    sizes = []
    for p in sorted(src.rglob("*.rs")):
        mod = top_module(p, src)
        text = non_test(p.read_text())
        state = {"block": False, "string": False}
        code = "\n".join(strip_literals(l, state) for l in text.split("\n"))
        if mod in edges:
            named = set(NAMED.findall(code))
            for group in USE_GROUP.findall(code):
                named |= {g.strip().split("::")[0] for g in group.split(",")}
            edges[mod] |= {n for n in named if n in edges and n != mod}
        for name, n in functions(text):
            sizes.append((n, f"{p.relative_to(repo)}:{name}"))
    return modules, edges, sizes


def cycles(edges):
    """Tarjan's strongly connected components of more than one node."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def percentile(values, p):
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    repo = Path(args[0] if args else Path(__file__).resolve().parent.parent)
    modules, edges, sizes = analyse(repo)
    loops = cycles(edges)
    n = [s for s, _ in sizes]
    figures = {
        "functions": len(n),
        "median_lines": statistics.median(n),
        "p90_lines": percentile(n, 90),
        "max_lines": max(n),
        "largest": [f"{s} {where}" for s, where in sorted(sizes, reverse=True)[:10]],
    }
    if "--json" in sys.argv:
        print(json.dumps({
            "edges": {m: sorted(e) for m, e in edges.items()},
            "cycles": loops,
            "function_sizes": figures,
        }, indent=2))
        return
    print("module graph (non-test code; `crate::X` / `hoist::X`):")
    for m in modules:
        print(f"  {m:<12} -> {', '.join(sorted(edges[m])) or '-'}")
    print("cycles:", "none" if not loops else "")
    for c in loops:
        print("  " + " <-> ".join(c))
    print(
        f"functions (non-test, with a body): {figures['functions']}; "
        f"median {figures['median_lines']:g} lines, p90 {figures['p90_lines']}, "
        f"max {figures['max_lines']}"
    )
    for line in figures["largest"]:
        print("  " + line)


if __name__ == "__main__":
    main()
