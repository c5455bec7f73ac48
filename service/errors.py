"""The service's error hierarchy.

Each class carries its own outcome (HTTP status, OperationOutcome issue code, CLI exit code), the way
click's exceptions carry ``exit_code``. ``web/errors.py`` is the one place they meet HTTP and
``cli.py`` the one place they meet exit codes. Nothing here imports Flask.

    ServiceError
    ├── InvalidRequest        400  the request is malformed
    ├── NotAuthenticated      401  bad or missing bearer token (the body says nothing)
    ├── UnknownService        404  no such CDS service
    ├── DataUnobtainable      412  neither prefetch nor the FHIR server gave what the rules need
    ├── StoreUnavailable      503  the database cannot be reached
    ├── DeadlineExceeded      503  the call can no longer be answered within its deadline
    ├── AddressInUse               `serve`: the host and port are taken
    └── ExportError                the audit's bulk export is missing, malformed or not obtainable
    ConfigError                    the configuration is unusable (start-up, check-config)
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """An error with a known outcome for the caller."""

    status: ClassVar[int] = 500
    issue_code: ClassVar[str] = "exception"  # OperationOutcome.issue.code
    exit_code: ClassVar[int] = 1
    retry_after: ClassVar[int | None] = None  # seconds, sent as Retry-After

    def __init__(self, message: str, *, expression: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression  # the request element at fault, e.g. "context.draftOrders"


class InvalidRequest(ServiceError):
    """The request is malformed: wrong JSON shape, wrong hook, missing fields."""

    status = 400
    issue_code = "invalid"
    exit_code = 3


class NotAuthenticated(ServiceError):
    """The bearer token is missing or does not verify; callers get no detail."""

    status = 401
    issue_code = "login"


class UnknownService(ServiceError):
    """No CDS service has this id."""

    status = 404
    issue_code = "not-found"


class DataUnobtainable(ServiceError):
    """Neither prefetch nor the FHIR server gave what the rules need."""

    status = 412
    issue_code = "incomplete"
    exit_code = 4


class StoreUnavailable(ServiceError):
    """The database cannot be reached or refused the write."""

    status = 503
    issue_code = "transient"
    exit_code = 5
    retry_after = 2


class AddressInUse(ServiceError):
    """`serve` cannot listen: another process holds the host and port."""


class ExportError(ServiceError):
    """The audit's FHIR bulk export is missing, malformed (the message names file and line) or could
    not be obtained from the FHIR server."""

    issue_code = "invalid"
    exit_code = 6


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and key."""

    exit_code: ClassVar[int] = 2


class DeadlineExceeded(ServiceError):
    """The call can no longer be answered within its deadline (queued, or waits ran long)."""

    status = 503
    issue_code = "timeout"
    exit_code = 1
    retry_after = 1
