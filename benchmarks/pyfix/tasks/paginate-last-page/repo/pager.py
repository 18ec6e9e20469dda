"""pager: split a sequence into numbered pages (1-based), for listings and APIs.

    page = paginate(rows, number=2, per_page=25)
    page.items, page.number, page.total_pages, page.has_next, page.has_prev
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional

__all__ = ["Page", "PageNotFound", "page_count", "paginate", "page_links"]


class PageNotFound(LookupError):
    """The requested page number is out of range."""


@dataclass(frozen=True)
class Page:
    items: List[Any] = field(repr=False)
    number: int
    total_pages: int
    total_items: int

    @property
    def has_next(self) -> bool:
        return self.number < self.total_pages

    @property
    def has_prev(self) -> bool:
        return self.number > 1

    @property
    def next_number(self) -> Optional[int]:
        return self.number + 1 if self.has_next else None

    @property
    def prev_number(self) -> Optional[int]:
        return self.number - 1 if self.has_prev else None


def page_count(total_items: int, per_page: int) -> int:
    """Number of pages needed for total_items; an empty listing still has one page."""
    if per_page < 1:
        raise ValueError("per_page must be at least 1")
    if total_items < 0:
        raise ValueError("total_items must not be negative")
    return max(1, total_items // per_page)


def paginate(items, number: int = 1, per_page: int = 10) -> Page:
    """Return page `number` (1-based) of `items`."""
    items = list(items)
    pages = page_count(len(items), per_page)
    if not 1 <= number <= pages:
        raise PageNotFound(f"page {number} of {pages}")
    start = (number - 1) * per_page
    return Page(items[start:start + per_page], number, pages, len(items))


def page_links(page: Page, window: int = 2) -> List[int]:
    """Page numbers to show around the current page, e.g. [1, 2, 3, 4, 5]."""
    low = max(1, page.number - window)
    high = min(page.total_pages, page.number + window)
    return list(range(low, high + 1))
