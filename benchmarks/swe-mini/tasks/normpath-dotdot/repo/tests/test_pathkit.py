import pytest

from pathkit import UnsafePath, join, normalize, safe_join, split_ext


@pytest.mark.parametrize("path, expected", [
    ("a/./b//c/", "a/b/c"),
    ("/x/../y", "/y"),
    ("/", "/"),
    ("", "."),
    ("./", "."),
    ("a/b/..", "a"),
    ("/a/b/../../..", "/"),
    ("/../etc", "/etc"),
])
def test_normalize(path, expected):
    assert normalize(path) == expected


def test_join():
    assert join("static", "css/site.css") == "static/css/site.css"
    assert join("/srv/www", "a/../b") == "/srv/www/b"
    assert join("a", "/abs", "c") == "/abs/c"


def test_safe_join_inside_root():
    assert safe_join("/srv/www", "img/logo.png") == "/srv/www/img/logo.png"
    assert safe_join("/srv/www", "img/../index.html") == "/srv/www/index.html"
    assert safe_join("/srv/www", "") == "/srv/www"


def test_safe_join_refuses_absolute():
    with pytest.raises(UnsafePath):
        safe_join("/srv/www", "/etc/passwd")


def test_split_ext():
    assert split_ext("dir/archive.tar.gz") == ("dir/archive.tar", ".gz")
    assert split_ext(".bashrc") == (".bashrc", "")
    assert split_ext("/x/README") == ("/x/README", "")
