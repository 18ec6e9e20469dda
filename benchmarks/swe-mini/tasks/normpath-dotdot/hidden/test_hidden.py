import posixpath

import pytest

from pathkit import UnsafePath, join, normalize, safe_join


def test_leading_dotdot_kept_for_relative_paths():
    assert normalize("../a") == "../a"
    assert normalize("..") == ".."
    assert normalize("../../x") == "../../x"


def test_dotdot_beyond_start_of_relative_path():
    assert normalize("a/../../b") == "../b"
    assert normalize("a/b/../../..") == ".."
    assert normalize("./../x/./y/..") == "../x"


def test_dotdot_never_cancels_dotdot():
    assert normalize("../../x/..") == "../.."


def test_absolute_paths_still_clamped_at_root():
    assert normalize("/../a") == "/a"
    assert normalize("/a/../../..") == "/"


def test_agrees_with_posixpath_without_double_slash_root():
    for path in ["a/../../b/c", "../x/../y", "x/y/../../../z", "/x/../../y", "a//b/./../c/"]:
        assert normalize(path) == posixpath.normpath(path), path


def test_join_keeps_escaping_dotdot():
    assert join("a", "../../b") == "../b"


def test_safe_join_refuses_climbing_out():
    for path in ["../secret", "a/../../secret", "..", "x/y/../../../z"]:
        with pytest.raises(UnsafePath):
            safe_join("/srv/www", path)


def test_safe_join_still_allows_inner_dotdot():
    assert safe_join("/srv/www", "a/b/../../c") == "/srv/www/c"
