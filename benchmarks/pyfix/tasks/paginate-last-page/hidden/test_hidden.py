import pytest

from pager import PageNotFound, page_count, page_links, paginate


def test_partial_last_page_is_counted():
    assert page_count(25, 10) == 3
    assert page_count(1, 10) == 1
    assert page_count(11, 10) == 2


def test_exact_multiples_unchanged():
    assert page_count(30, 10) == 3
    assert page_count(0, 10) == 1
    assert page_count(7, 1) == 7


def test_partial_last_page_is_reachable():
    page = paginate(range(25), 3, per_page=10)
    assert page.items == [20, 21, 22, 23, 24]
    assert page.total_pages == 3 and not page.has_next


def test_second_to_last_page_links_forward():
    page = paginate(range(25), 2, per_page=10)
    assert page.has_next and page.next_number == 3


def test_page_after_partial_page_not_found():
    with pytest.raises(PageNotFound):
        paginate(range(25), 4, per_page=10)


def test_fewer_items_than_one_page():
    page = paginate("abc", 1, per_page=10)
    assert page.items == ["a", "b", "c"] and page.total_pages == 1


def test_page_links_include_partial_page():
    page = paginate(range(41), 4, per_page=10)
    assert page_links(page) == [2, 3, 4, 5]
