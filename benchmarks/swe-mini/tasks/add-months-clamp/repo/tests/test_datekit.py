from datetime import date, datetime

from datekit import add_months, billing_periods, last_day_of_month, month_starts, quarter


def test_add_months_mid_month():
    assert add_months(date(2024, 1, 15), 1) == date(2024, 2, 15)
    assert add_months(date(2024, 1, 15), 13) == date(2025, 2, 15)


def test_add_months_backwards_across_years():
    assert add_months(date(2024, 2, 10), -2) == date(2023, 12, 10)
    assert add_months(date(2024, 1, 1), -25) == date(2021, 12, 1)


def test_add_months_keeps_type_and_time():
    moved = add_months(datetime(2024, 3, 5, 12, 30), 2)
    assert moved == datetime(2024, 5, 5, 12, 30)


def test_last_day_of_month():
    assert last_day_of_month(date(2024, 2, 3)) == date(2024, 2, 29)
    assert last_day_of_month(date(2023, 2, 3)) == date(2023, 2, 28)
    assert last_day_of_month(date(2023, 12, 31)) == date(2023, 12, 31)


def test_month_starts():
    assert month_starts(date(2023, 11, 20), date(2024, 2, 1)) == [
        date(2023, 11, 1), date(2023, 12, 1), date(2024, 1, 1), date(2024, 2, 1)]


def test_billing_periods_from_mid_month():
    assert billing_periods(date(2024, 1, 10), 2) == [
        (date(2024, 1, 10), date(2024, 2, 9)),
        (date(2024, 2, 10), date(2024, 3, 9)),
    ]


def test_quarter():
    assert [quarter(date(2024, m, 1)) for m in (1, 3, 4, 9, 12)] == [1, 1, 2, 3, 4]
