import pytest

from pager import PageNotFound, page_count, page_links, paginate


def test_first_page():
    page = paginate(range(30), 1, per_page=10)
    assert page.items == list(range(10))
    assert (page.number, page.total_pages, page.total_items) == (1, 3, 30)
    assert page.has_next and not page.has_prev
    assert page.next_number == 2 and page.prev_number is None


def test_last_full_page():
    page = paginate(range(30), 3, per_page=10)
    assert page.items == list(range(20, 30))
    assert not page.has_next and page.has_prev


def test_empty_listing_has_one_empty_page():
    page = paginate([], 1)
    assert page.items == [] and page.total_pages == 1
    assert not page.has_next and not page.has_prev


def test_out_of_range():
    with pytest.raises(PageNotFound):
        paginate(range(20), 0, per_page=10)
    with pytest.raises(PageNotFound):
        paginate(range(20), 3, per_page=10)


def test_bad_arguments():
    with pytest.raises(ValueError):
        page_count(10, 0)
    with pytest.raises(ValueError):
        page_count(-1, 10)


def test_page_links_window():
    page = paginate(range(100), 5, per_page=10)
    assert page_links(page) == [3, 4, 5, 6, 7]
    assert page_links(paginate(range(100), 1, per_page=10)) == [1, 2, 3]
