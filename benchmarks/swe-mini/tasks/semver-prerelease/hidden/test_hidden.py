from versionkit import Version, latest

SPEC_ORDER = [
    "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
    "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0",
]


def v(text):
    return Version.parse(text)


def test_prerelease_is_lower_than_release():
    assert v("1.0.0-rc.1") < v("1.0.0")
    assert v("1.0.0") > v("1.0.0-alpha")
    assert v("2.0.0-alpha") > v("1.9.9")


def test_numeric_identifiers_compare_numerically():
    assert v("1.0.0-beta.2") < v("1.0.0-beta.11")
    assert v("1.0.0-rc.9") < v("1.0.0-rc.10")


def test_numeric_identifiers_lower_than_alphanumeric():
    assert v("1.0.0-1") < v("1.0.0-alpha")
    assert v("1.0.0-alpha.1") < v("1.0.0-alpha.beta")


def test_longer_prerelease_wins_when_prefix_equal():
    assert v("1.0.0-alpha") < v("1.0.0-alpha.1")


def test_spec_example_order():
    shuffled = [SPEC_ORDER[i] for i in (7, 3, 0, 5, 1, 6, 4, 2)]
    assert [str(x) for x in sorted(map(v, shuffled))] == SPEC_ORDER


def test_latest_with_prereleases():
    assert str(latest(["1.0.0-rc.1", "1.0.0", "0.9.0"], include_prereleases=True)) == "1.0.0"
    assert str(latest(["2.0.0-beta.2", "2.0.0-beta.10"], include_prereleases=True)) == "2.0.0-beta.10"


def test_equality_and_hash_still_ignore_build():
    assert v("1.0.0-rc.1+x") == v("1.0.0-rc.1+y")
    assert hash(v("1.0.0-rc.1+x")) == hash(v("1.0.0-rc.1"))
