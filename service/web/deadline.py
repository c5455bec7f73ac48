"""A hook call's deadline, counted from when the request arrived, not from when a thread took it.

The EHR starts waiting when it sends the request: the time the request spent arriving, queued for
a request thread, and in the token check counts against ``limits.deadline_seconds`` as much as the
FHIR reads and the store writes do. ``serve``'s workers put the time the request's first byte
arrived into the WSGI environ (``ARRIVED_KEY``); behind nginx, the proxy's ``X-Request-Start:
t=<epoch seconds>`` (deploy/nginx.conf) moves it earlier to when the proxy got the request. Neither
can move it later than this process saw it, so a forged header can only shorten its own call.

``Deadline.check`` raises ``DeadlineExceeded`` (503 with ``Retry-After``) as soon as the call can no
longer be answered in time: a fast 503 the EHR can act on, never a late 200.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.errors import DeadlineExceeded

ARRIVED_KEY = "lumbar_mri_cds.arrived"  # environ: time.monotonic() when the request's first byte came
PROXY_START_HEADER = "HTTP_X_REQUEST_START"
MAX_PROXY_AGE_SECONDS = 60.0            # an older proxy time is not believed (a clock gone wrong)
# Time kept back for deciding, rendering and sending the answer after the last wait.
ANSWER_MARGIN_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class Deadline:
    arrived: float   # time.monotonic() when the request arrived
    expires: float   # time.monotonic() by which the answer must be sent

    def for_waits(self) -> float:
        """The time.monotonic() by which waits (FHIR reads, store) must end, leaving time to answer."""
        return self.expires - ANSWER_MARGIN_SECONDS

    def check(self, step: str, *, answering: bool = False) -> None:
        """Raise DeadlineExceeded when the answer can no longer be sent in time after ``step``: when
        less than ``ANSWER_MARGIN_SECONDS`` is left, or (``answering``: the answer is ready) none."""
        if time.monotonic() > (self.expires if answering else self.for_waits()):
            elapsed = time.monotonic() - self.arrived
            raise DeadlineExceeded(
                f"the call cannot be answered within its deadline ({self.expires - self.arrived:g} s; "
                f"{elapsed:.1f} s had passed after {step}); retry"
            )


def for_request(environ: Mapping[str, Any], seconds: float, *, now: float | None = None) -> Deadline:
    """The deadline of the request with this WSGI environ."""
    now = time.monotonic() if now is None else now
    arrived = environ.get(ARRIVED_KEY)
    arrived = now if not isinstance(arrived, float) or arrived > now else arrived
    proxy = _proxy_start(environ.get(PROXY_START_HEADER), now)
    if proxy is not None:
        arrived = min(arrived, proxy)
    return Deadline(arrived=arrived, expires=arrived + seconds)


def _proxy_start(value: Any, now: float) -> float | None:
    """``t=1733472000.123`` (nginx's ``$msec``) as a time.monotonic() value, if believable."""
    if not isinstance(value, str) or not value.startswith("t="):
        return None
    try:
        age = time.time() - float(value[2:])
    except ValueError:
        return None
    if not 0.0 <= age <= MAX_PROXY_AGE_SECONDS:
        return None
    return now - age
