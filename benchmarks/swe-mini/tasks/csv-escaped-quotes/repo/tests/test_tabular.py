import pytest

from tabular import CSVError, read_rows, split_row, to_dicts


def test_plain_fields():
    assert split_row("a,b,c") == ["a", "b", "c"]
    assert split_row("a,,c,") == ["a", "", "c", ""]
    assert split_row("") == [""]


def test_nothing_is_trimmed():
    assert split_row(" a , b ") == [" a ", " b "]


def test_quoted_delimiter():
    assert split_row('Ada,"likes, commas",1815') == ["Ada", "likes, commas", "1815"]


def test_other_delimiter():
    assert split_row('a;"b;c";d', delimiter=";") == ["a", "b;c", "d"]
    with pytest.raises(ValueError):
        split_row("a", delimiter='"')


def test_unterminated_quote():
    with pytest.raises(CSVError):
        split_row('a,"b')


def test_read_rows_skips_blank_lines():
    assert read_rows("a,b\n\n1,2\n") == [["a", "b"], ["1", "2"]]


def test_to_dicts():
    text = "name,lang\nAda,\"Python, C\"\nBob\n"
    assert to_dicts(text) == [
        {"name": "Ada", "lang": "Python, C"},
        {"name": "Bob", "lang": ""},
    ]
    with pytest.raises(CSVError):
        to_dicts("a\n1,2\n")
