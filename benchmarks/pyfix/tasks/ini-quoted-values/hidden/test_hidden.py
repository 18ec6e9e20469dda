from inilite import parse


def test_semicolon_inside_double_quotes():
    config = parse('[db]\npassword = "hunter2 ; not a comment"\n')
    assert config["db"]["password"] == "hunter2 ; not a comment"


def test_hash_inside_single_quotes():
    config = parse("[ui]\ntitle = 'Issue #42 #fixed'\n")
    assert config["ui"]["title"] == "Issue #42 #fixed"


def test_comment_after_quoted_value():
    config = parse('[ui]\nbanner = "a ; b"   ; the banner text\n')
    assert config["ui"]["banner"] == "a ; b"


def test_comment_marker_of_other_kind_inside_quotes():
    config = parse("[s]\nmix = \"x # y\" ; trailing\nother = 'p ; q' # trailing\n")
    assert config["s"] == {"mix": "x # y", "other": "p ; q"}


def test_unquoted_inline_comments_still_stripped():
    config = parse("[s]\nhost = example.org ; public\nport = 80 # http\n")
    assert config["s"] == {"host": "example.org", "port": "80"}


def test_quoted_values_without_comments_unchanged():
    config = parse('[s]\nprompt = "> "\nempty = ""\n')
    assert config["s"] == {"prompt": "> ", "empty": ""}
