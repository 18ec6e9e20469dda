"""versionkit: parse, compare and select Semantic Versions (https://semver.org).

    >>> Version.parse("1.4.0-rc.1") < Version.parse("1.4.0")
    True
    >>> latest(["1.2.0", "1.10.0", "1.9.3"])
    Version('1.10.0')
"""

import functools
import re

__all__ = ["Version", "InvalidVersion", "latest", "bump"]

_SEMVER = re.compile(
    r"^v?(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


class InvalidVersion(ValueError):
    pass


@functools.total_ordering
class Version:
    __slots__ = ("major", "minor", "patch", "prerelease", "build")

    def __init__(self, major, minor, patch, prerelease=(), build=()):
        self.major, self.minor, self.patch = int(major), int(minor), int(patch)
        self.prerelease = tuple(prerelease)
        self.build = tuple(build)

    @classmethod
    def parse(cls, text):
        m = _SEMVER.match(text.strip())
        if not m:
            raise InvalidVersion(f"not a semantic version: {text!r}")
        pre = m.group("pre")
        build = m.group("build")
        return cls(m.group("major"), m.group("minor"), m.group("patch"),
                   pre.split(".") if pre else (), build.split(".") if build else ())

    @property
    def is_prerelease(self):
        return bool(self.prerelease)

    def _key(self):
        # Build metadata does not take part in precedence.
        return (self.major, self.minor, self.patch, self.prerelease)

    def __eq__(self, other):
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __lt__(self, other):
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __hash__(self):
        return hash(self._key())

    def __str__(self):
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    def __repr__(self):
        return f"Version({str(self)!r})"


def _as_version(v):
    return v if isinstance(v, Version) else Version.parse(v)


def latest(versions, include_prereleases=False):
    """The highest version, ignoring pre-releases unless asked; None if there is none."""
    candidates = [_as_version(v) for v in versions]
    if not include_prereleases:
        candidates = [v for v in candidates if not v.is_prerelease]
    return max(candidates, default=None)


def bump(version, part):
    """Next version: part is "major", "minor" or "patch"; drops pre-release and build."""
    v = _as_version(version)
    if part == "major":
        return Version(v.major + 1, 0, 0)
    if part == "minor":
        return Version(v.major, v.minor + 1, 0)
    if part == "patch":
        return Version(v.major, v.minor, v.patch + 1)
    raise ValueError(f"unknown part: {part!r}")
