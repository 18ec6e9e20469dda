from datetime import date, datetime

from datekit import add_months, billing_periods


def test_end_of_month_clamps_to_shorter_month():
    assert add_months(date(2024, 1, 31), 1) == date(2024, 2, 29)
    assert add_months(date(2023, 1, 31), 1) == date(2023, 2, 28)
    assert add_months(date(2024, 8, 31), 1) == date(2024, 9, 30)


def test_backwards_clamps_too():
    assert add_months(date(2024, 3, 31), -1) == date(2024, 2, 29)
    assert add_months(date(2023, 5, 31), -3) == date(2023, 2, 28)


def test_leap_day_plus_a_year():
    assert add_months(date(2024, 2, 29), 12) == date(2025, 2, 28)
    assert add_months(date(2024, 2, 29), 48) == date(2028, 2, 29)


def test_day_kept_when_it_exists():
    assert add_months(date(2024, 1, 31), 2) == date(2024, 3, 31)
    assert add_months(date(2024, 1, 30), 1) == date(2024, 2, 29)


def test_datetime_clamped_keeps_time():
    assert add_months(datetime(2023, 10, 31, 23, 59, 58), 1) == datetime(2023, 11, 30, 23, 59, 58)


def test_billing_periods_anchored_on_the_31st():
    assert billing_periods(date(2024, 1, 31), 3) == [
        (date(2024, 1, 31), date(2024, 2, 28)),
        (date(2024, 2, 29), date(2024, 3, 30)),
        (date(2024, 3, 31), date(2024, 4, 29)),
    ]
