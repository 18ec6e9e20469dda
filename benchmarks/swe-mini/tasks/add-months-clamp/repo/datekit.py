"""datekit: calendar arithmetic for billing periods and reports.

    add_months(date(2024, 1, 15), 1)   -> date(2024, 2, 15)
    month_starts(date(2024, 1, 10), date(2024, 3, 1))
                                        -> [date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)]

Functions accept date and datetime objects and return the same type.
"""

import calendar
from datetime import date, timedelta

__all__ = ["add_months", "last_day_of_month", "month_starts", "billing_periods", "quarter"]


def last_day_of_month(d):
    """The last day of d's month (same type as d; times are kept)."""
    return d.replace(day=calendar.monthrange(d.year, d.month)[1])


def add_months(d, months):
    """d moved by a whole number of months (negative moves back)."""
    index = d.year * 12 + (d.month - 1) + months
    year, month0 = divmod(index, 12)
    return d.replace(year=year, month=month0 + 1)


def month_starts(start, end):
    """The first day of every month from start's month to end's month, inclusive."""
    current = date(start.year, start.month, 1)
    stop = date(end.year, end.month, 1)
    result = []
    while current <= stop:
        result.append(current)
        current = add_months(current, 1)
    return result


def billing_periods(anchor, count):
    """count consecutive monthly periods (start, end) beginning at anchor.

    A period ends the day before the next one starts.
    """
    periods = []
    for i in range(count):
        start = add_months(anchor, i)
        end = add_months(anchor, i + 1) - timedelta(days=1)
        periods.append((start, end))
    return periods


def quarter(d):
    """1..4"""
    return (d.month - 1) // 3 + 1
