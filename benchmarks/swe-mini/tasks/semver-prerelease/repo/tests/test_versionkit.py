import pytest

from versionkit import InvalidVersion, Version, bump, latest


def test_parse_and_str():
    v = Version.parse("v1.2.3-beta.2+build.77")
    assert (v.major, v.minor, v.patch) == (1, 2, 3)
    assert v.prerelease == ("beta", "2") and v.build == ("build", "77")
    assert str(v) == "1.2.3-beta.2+build.77"


@pytest.mark.parametrize("text", ["1.2", "1.2.3.4", "01.2.3", "1.2.3-", "x.y.z", ""])
def test_invalid(text):
    with pytest.raises(InvalidVersion):
        Version.parse(text)


def test_numeric_ordering_of_release_parts():
    assert Version.parse("1.9.0") < Version.parse("1.10.0")
    assert Version.parse("2.0.0") > Version.parse("1.99.99")
    assert Version.parse("0.0.9") < Version.parse("0.1.0")


def test_build_metadata_ignored_in_comparisons():
    assert Version.parse("1.0.0+a") == Version.parse("1.0.0+b")
    assert len({Version.parse("1.0.0+a"), Version.parse("1.0.0")}) == 1


def test_latest_release():
    assert str(latest(["1.2.0", "1.10.0", "1.9.3"])) == "1.10.0"
    assert latest([]) is None


def test_bump():
    assert str(bump("1.2.3-rc.1", "patch")) == "1.2.4"
    assert str(bump("1.2.3", "minor")) == "1.3.0"
    assert str(bump("1.2.3", "major")) == "2.0.0"
