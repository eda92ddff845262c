"""Errors a user can fix, and how tasks report them.

A ``UserError`` carries one sentence that says what to change. Tasks turn it
into ``AirflowFailException`` so Airflow fails fast without retries; anything
else is treated as transient and retried with backoff by the task's policy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UserError(Exception):
    """A problem the user fixes (bad inventory, unreachable host, too little RAM)."""


class InventoryError(UserError):
    """The inventory file is invalid; the message names the field and the fix."""


class TransientError(Exception):
    """A failure worth retrying (network blip, service still starting)."""


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """Inside a task: re-raise a UserError as AirflowFailException (no retries)."""
    try:
        yield
    except UserError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from None
