"""Bounded retries with exponential backoff for registry requests.

A request is retried on connection errors, timeouts, truncated bodies, ``429 Too Many
Requests`` and ``5xx`` answers. The number of attempts is bounded and so is each wait, so a
read that cannot be served fails after a known time instead of hanging.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

__all__ = ["RetryPolicy", "parse_retry_after"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry.

    ``attempts`` counts every try, the first included. The wait before try *n* (n >= 2) is
    ``base_delay * 2**(n-2)`` capped at ``max_delay``, with up to 25 % random jitter; a
    server's ``Retry-After`` replaces it, capped at ``max_retry_after``.
    """

    attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 4.0
    max_retry_after: float = 30.0

    def delay(self, failed_attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after ``failed_attempts`` tries (>= 1) have failed."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        d = min(self.base_delay * (2 ** (failed_attempts - 1)), self.max_delay)
        return d * (1 + random.random() * 0.25)

    def worst_case(self) -> float:
        """An upper bound of the total time spent waiting between tries (not in requests)."""
        return sum(
            min(self.base_delay * 2 ** (n - 1), self.max_delay) * 1.25
            for n in range(1, self.attempts)
        )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
