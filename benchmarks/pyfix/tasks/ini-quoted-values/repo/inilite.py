"""inilite: a small reader for INI-style configuration files.

    [server]
    host = example.org        ; inline comments start with " ;" or " #"
    banner = "Welcome, friend"

parse() returns {section: {key: value}}. Keys are case-insensitive (stored
lower-case), values are strings; a value wrapped in matching single or double
quotes is returned without them, so that leading and trailing spaces can be
kept.
"""

__all__ = ["ParseError", "parse", "get_bool"]

COMMENT_MARKERS = (" ;", " #")
_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


class ParseError(ValueError):
    """A line that is not a section header, a comment or a key = value pair."""

    def __init__(self, lineno, message):
        super().__init__(f"line {lineno}: {message}")
        self.lineno = lineno


def _strip_inline_comment(value):
    value = value.strip()
    for marker in COMMENT_MARKERS:
        pos = value.find(marker)
        if pos != -1:
            value = value[:pos]
    return value.strip()


def _unquote(value):
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse(text):
    """Parse INI text into a dict of sections, each a dict of key -> value."""
    data = {}
    section = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ParseError(lineno, "unterminated section header")
            section = line[1:-1].strip()
            if not section:
                raise ParseError(lineno, "empty section name")
            data.setdefault(section, {})
            continue
        if section is None:
            raise ParseError(lineno, "key outside of any section")
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise ParseError(lineno, "expected 'key = value'")
        data[section][key] = _unquote(_strip_inline_comment(value))
    return data


def get_bool(config, section, key, default=False):
    """Read a boolean (1/0, yes/no, true/false, on/off) from parsed config."""
    value = config.get(section, {}).get(key.lower())
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"[{section}] {key}: not a boolean: {value!r}")
