"""progress.py with a fake clock: rate limit, elapsed time, details, timeouts."""

from __future__ import annotations

import logging

import pytest

from datacloud.errors import TransientError, UserError
from datacloud.progress import Pending, Progress, wait_for


class FakeClock:
    """A monotonic clock the test advances by hand; sleep() advances it too."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "datacloud.progress"]


def test_tick_logs_at_most_every_interval(caplog):
    caplog.set_level(logging.INFO, logger="datacloud.progress")
    clock = FakeClock()
    p = Progress("containerd on slave2", component="Node prep", clock=clock)
    logged = []
    for _ in range(120):  # one tick per second for two minutes
        clock.now += 1
        logged.append(p.tick("apt-get install"))
    assert sum(logged) == 8  # 120 s / 15 s
    lines = _lines(caplog)
    assert lines[0] == "Node prep | waiting for containerd on slave2: apt-get install (15s elapsed)"
    assert lines[-1] == "Node prep | waiting for containerd on slave2: apt-get install (2m00s elapsed)"


def test_tick_without_detail_and_done(caplog):
    caplog.set_level(logging.INFO, logger="datacloud.progress")
    clock = FakeClock()
    p = Progress("the rollout", clock=clock)
    clock.now += 14.9
    assert p.tick() is False
    clock.now += 0.1
    assert p.tick() is True
    clock.now += 3700
    assert p.done("3/3 replicas") == pytest.approx(3715)
    assert _lines(caplog) == [
        "Wait | waiting for the rollout (15s elapsed)",
        "Wait | the rollout ready after 1h01m: 3/3 replicas",
    ]


def test_wait_for_returns_result_and_reports_details(caplog):
    caplog.set_level(logging.INFO, logger="datacloud.progress")
    clock = FakeClock()
    answers = iter([Pending("1/3 nodes Ready")] * 10 + [Pending("2/3 nodes Ready")] * 10 + [["a", "b", "c"]])
    result = wait_for("nodes Ready", lambda: next(answers), timeout=600, poll=2, component="Kubernetes",
                      clock=clock, sleep=clock.sleep)
    assert result == ["a", "b", "c"]
    assert clock.now - 1000 == 40  # 20 polls of 2 s
    assert _lines(caplog) == [
        "Kubernetes | waiting for nodes Ready: 1/3 nodes Ready (16s elapsed)",
        "Kubernetes | waiting for nodes Ready: 2/3 nodes Ready (32s elapsed)",
        "Kubernetes | nodes Ready ready after 40s",
    ]


def test_wait_for_timeout_names_last_state():
    clock = FakeClock()
    with pytest.raises(TransientError) as exc:
        wait_for("Ceph HEALTH_OK", lambda: Pending("HEALTH_WARN"), timeout=300, poll=7, clock=clock, sleep=clock.sleep)
    assert str(exc.value) == "Ceph HEALTH_OK was not ready after 5m00s (timeout 5m00s); last state: HEALTH_WARN."
    assert clock.now - 1000 == 300  # the last sleep is cut to the deadline
    assert max(clock.slept) == 7


def test_wait_for_custom_error_and_plain_falsy():
    clock = FakeClock()
    with pytest.raises(UserError, match=r"^the hub was not ready after 10s \(timeout 10s\)\.$"):
        wait_for("the hub", lambda: None, timeout=10, poll=1, clock=clock, sleep=clock.sleep, error=UserError)


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval"):
        Progress("x", interval=0)
