import csv
import io

from tabular import split_row, to_dicts


def test_doubled_quote_is_a_literal_quote():
    assert split_row('1,"He said ""hi""",x') == ["1", 'He said "hi"', "x"]


def test_field_of_only_a_quote():
    assert split_row('"""",b') == ['"', "b"]


def test_empty_quoted_field():
    assert split_row('a,"",c') == ["a", "", "c"]


def test_escaped_quote_next_to_delimiter():
    assert split_row('"a "",b","c"') == ['a ",b', "c"]


def test_round_trip_with_csv_writer():
    rows = [
        ['plain', 'with, comma', 'with "quotes"', '"', '""', '', 'end"'],
        ['x;y', ' spaced ', 'a "b", c'],
    ]
    for row in rows:
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(row)
        assert split_row(out.getvalue()) == row


def test_to_dicts_with_escaped_quotes():
    text = 'title,quote\n"The ""Analytical"" Engine","weaves ""algebraic patterns"""\n'
    assert to_dicts(text) == [
        {"title": 'The "Analytical" Engine', "quote": 'weaves "algebraic patterns"'}]
