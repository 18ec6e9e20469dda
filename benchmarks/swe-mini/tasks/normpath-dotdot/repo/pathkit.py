"""pathkit: lexical helpers for '/'-separated paths (URL paths, archive members).

Nothing here touches the file system: normalize() works on the text alone,
like posixpath.normpath, and safe_join() maps an untrusted relative path
below a root, refusing paths that climb out of it.
"""

__all__ = ["normalize", "join", "safe_join", "split_ext", "UnsafePath"]


class UnsafePath(ValueError):
    """A path that would leave the directory it is joined to."""


def normalize(path):
    """Collapse '.', '..' and repeated slashes.

    normalize("a/./b//c/") == "a/b/c"; normalize("/x/../y") == "/y";
    '..' at the root of an absolute path stays at the root; an empty result is ".".
    """
    absolute = path.startswith("/")
    parts = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts:
                parts.pop()
            continue
        parts.append(segment)
    result = "/".join(parts)
    if absolute:
        return "/" + result
    return result or "."


def join(*paths):
    """Join paths like posixpath.join (an absolute part restarts) and normalize."""
    result = ""
    for path in paths:
        if path.startswith("/") or not result:
            result = path
        else:
            result = result.rstrip("/") + "/" + path
    return normalize(result) if result else "."


def safe_join(root, untrusted):
    """root + untrusted, refusing absolute paths and paths that climb out of root."""
    if untrusted.startswith("/"):
        raise UnsafePath(f"absolute path: {untrusted!r}")
    relative = normalize(untrusted)
    if relative == ".." or relative.startswith("../"):
        raise UnsafePath(f"path leaves its root: {untrusted!r}")
    if relative == ".":
        return normalize(root)
    return join(root, relative)


def split_ext(path):
    """("dir/name", ".ext") — a leading dot (".bashrc") is not an extension."""
    head, _, name = path.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem.strip("."):
        return path, ""
    prefix = head + "/" if head or path.startswith("/") else ""
    return prefix + stem, "." + ext
