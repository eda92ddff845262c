"""Quality gates: each failure is one sentence naming the number that is off."""

from __future__ import annotations

import pytest

from datacloud.pipelines.quality import Measured, evaluate

CARRIERS = ["AA", "B6", "UA"]


def measured(**changes) -> Measured:
    base = dict(
        date="2013-01-01", source_rows=842, good_landed=842, flights_in_mongo=842, rejected_in_mongo=0, duplicate_keys=0,
        carriers_flown=CARRIERS, stats_carriers=CARRIERS, stats_flights=842,
    )
    return Measured(**{**base, **changes})


def test_all_gates_pass():
    assert evaluate(measured(), 0.01) == []


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        ({"flights_in_mongo": 840, "stats_flights": 840, "rejected_in_mongo": 2},
         "MongoDB holds 840 flights for 2013-01-01 but 842 good rows were landed."),
        ({"rejected_in_mongo": 3},
         "good 842 + rejected 3 = 845 rows for 2013-01-01, but the source has 842."),
        ({"duplicate_keys": 2}, "2 natural keys appear more than once in flights for 2013-01-01."),
        ({"stats_carriers": ["AA", "UA"]},
         "daily_delay_stats has 2 documents for 2013-01-01 but 3 carriers flew (missing B6)."),
        ({"stats_carriers": ["AA", "AA", "B6", "UA"]},
         "daily_delay_stats has 4 documents for 2013-01-01 but 3 carriers flew (more than one for AA)."),
        ({"stats_carriers": ["AA", "B6", "UA", "ZZ"]},
         "daily_delay_stats has 4 documents for 2013-01-01 but 3 carriers flew (extra ZZ)."),
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
    assert len(problems) == 3
