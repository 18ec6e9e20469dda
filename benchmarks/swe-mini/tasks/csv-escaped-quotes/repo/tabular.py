"""tabular: a dependency-free reader for CSV text (RFC 4180 style).

    rows = read_rows('name,comment\\nAda,"likes, commas"\\n')
    records = to_dicts(text)        # header row -> dict per record

Fields may be wrapped in double quotes to hold the delimiter; nothing is
trimmed. Records spanning several lines are not supported.
"""

__all__ = ["CSVError", "split_row", "read_rows", "to_dicts"]


class CSVError(ValueError):
    pass


def split_row(line, delimiter=","):
    """Split one CSV record into its fields."""
    if len(delimiter) != 1 or delimiter == '"':
        raise ValueError("delimiter must be one character other than '\"'")
    fields = []
    buf = []
    in_quotes = False
    for ch in line:
        if in_quotes:
            if ch == '"':
                in_quotes = False
            else:
                buf.append(ch)
        elif ch == '"':
            in_quotes = True
        elif ch == delimiter:
            fields.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    if in_quotes:
        raise CSVError(f"unterminated quoted field in {line!r}")
    fields.append("".join(buf))
    return fields


def read_rows(text, delimiter=","):
    """All records of text; blank lines are skipped."""
    return [split_row(line, delimiter) for line in text.splitlines() if line.strip()]


def to_dicts(text, delimiter=","):
    """Records as dicts keyed by the header row; short rows are padded with ''."""
    rows = read_rows(text, delimiter)
    if not rows:
        return []
    header, records = rows[0], []
    for number, row in enumerate(rows[1:], 2):
        if len(row) > len(header):
            raise CSVError(f"record {number} has {len(row)} fields, the header {len(header)}")
        row = row + [""] * (len(header) - len(row))
        records.append(dict(zip(header, row)))
    return records
