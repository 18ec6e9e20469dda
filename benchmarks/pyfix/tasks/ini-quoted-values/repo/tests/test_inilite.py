import pytest

from inilite import ParseError, get_bool, parse


def test_sections_and_keys():
    config = parse("[a]\nx = 1\n\n[b]\nY = two words\n")
    assert config == {"a": {"x": "1"}, "b": {"y": "two words"}}


def test_full_line_comments_are_skipped():
    config = parse("; leading comment\n[s]\n# another\nk = v\n")
    assert config == {"s": {"k": "v"}}


def test_inline_comment_after_plain_value():
    config = parse("[s]\nhost = example.org   ; the public name\nport = 8080 # default\n")
    assert config["s"] == {"host": "example.org", "port": "8080"}


def test_quotes_keep_surrounding_spaces():
    config = parse('[s]\nprompt = "> "\nname = \'Ada Lovelace\'\n')
    assert config["s"] == {"prompt": "> ", "name": "Ada Lovelace"}


def test_hash_without_space_is_part_of_value():
    config = parse("[s]\ncolor = #ff0000\nurl = http://example.org/#top\n")
    assert config["s"] == {"color": "#ff0000", "url": "http://example.org/#top"}


def test_errors_have_line_numbers():
    with pytest.raises(ParseError) as err:
        parse("[s]\nok = 1\nbroken line\n")
    assert err.value.lineno == 3
    with pytest.raises(ParseError):
        parse("key = outside\n")
    with pytest.raises(ParseError):
        parse("[unterminated\n")


def test_get_bool():
    config = parse("[f]\na = yes\nb = Off\nc = maybe\n")
    assert get_bool(config, "f", "a") is True
    assert get_bool(config, "f", "B") is False
    assert get_bool(config, "f", "missing", default=True) is True
    with pytest.raises(ValueError):
        get_bool(config, "f", "c")
