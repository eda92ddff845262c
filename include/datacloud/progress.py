"""Progress lines for long waits: what we wait for, how long so far, at most every 15 s.

Two ways to use it:

* ``wait_for(what, check, timeout=...)`` polls ``check()`` until it returns a
  truthy value (returned to the caller). While waiting, ``check()`` may return
  ``Pending("2/3 nodes Ready")`` to say what it saw; that detail appears in
  the progress lines and in the timeout message.
* ``Progress(what)`` for loops the caller drives (streaming a node's script
  output, draining a queue): call ``tick(detail)`` as often as you like; a
  line is logged only when ``interval`` seconds passed since the last one.

Log lines follow the "Component | Action" convention::

    Ceph | waiting for HEALTH_OK: HEALTH_WARN (1 osds down) (45s elapsed)
    Ceph | HEALTH_OK ready after 62s

The clock and sleep are injectable so tests run without waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from datacloud.errors import TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_INTERVAL = 15.0


class Pending:
    """A falsy answer from a check, carrying what it saw ("2/3 nodes Ready")."""

    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Pending({self.detail!r})"


def _elapsed(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Rate-limited progress lines for one thing we wait for."""

    def __init__(
        self,
        what: str,
        *,
        component: str = "Wait",
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.what = what
        self.component = component
        self.interval = interval
        self.clock = clock
        self.log = logger or log
        self.started = clock()
        self._last_line = self.started
        self.detail: str | None = None
        self.lines = 0

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def tick(self, detail: str | None = None) -> bool:
        """Remember ``detail``; log a progress line if ``interval`` passed since the last one."""
        if detail is not None:
            self.detail = detail
        now = self.clock()
        if now - self._last_line < self.interval:
            return False
        self._last_line = now
        self.lines += 1
        elapsed = _elapsed(now - self.started)
        if self.detail:
            self.log.info("%s | waiting for %s: %s (%s elapsed)", self.component, self.what, self.detail, elapsed)
        else:
            self.log.info("%s | waiting for %s (%s elapsed)", self.component, self.what, elapsed)
        return True

    def done(self, detail: str | None = None) -> float:
        """Log the final line and return the elapsed seconds."""
        elapsed = self.elapsed
        suffix = f": {detail}" if detail else ""
        self.log.info("%s | %s ready after %s%s", self.component, self.what, _elapsed(elapsed), suffix)
        return elapsed


def wait_for(
    what: str,
    check: Callable[[], Any],
    *,
    timeout: float,
    poll: float = 2.0,
    component: str = "Wait",
    interval: float = DEFAULT_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    error: type[Exception] = TransientError,
    logger: logging.Logger | None = None,
) -> Any:
    """Poll ``check()`` until it returns something truthy; return that.

    Raises ``error`` (TransientError by default, so the task retries) with one
    sentence naming what did not become ready, after how long, and the last
    state ``check()`` reported.
    """
    progress = Progress(what, component=component, interval=interval, clock=clock, logger=logger)
    while True:
        result = check()
        if result:
            progress.done()
            return result
        progress.tick(result.detail if isinstance(result, Pending) else None)
        if progress.elapsed >= timeout:
            last = f"; last state: {progress.detail}" if progress.detail else ""
            raise error(f"{what} was not ready after {_elapsed(progress.elapsed)} (timeout {_elapsed(timeout)}){last}.")
        remaining = timeout - progress.elapsed
        sleep(max(0.0, min(poll, remaining)))
