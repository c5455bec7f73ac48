"""The feedback request body (CDS Hooks 2.0 feedback): parse untrusted JSON into ``FeedbackItem`` s.

The body is decoded under the same limits as a hook call's (``envelope.parse_json``: size, nesting
depth, string length), then every item is checked; every problem is reported in one InvalidRequest
naming the first bad element (``feedback[1].outcome``). Whether the cards exist is the store's
question (``store/card_store.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone
from enum import StrEnum
from typing import Any

import orjson

from service.config import LimitsSettings
from service.errors import InvalidRequest
from service.intake import envelope

MAX_ITEMS = 100               # feedback items per request
MAX_SUGGESTIONS = 100         # acceptedSuggestions per item
MAX_COMMENT_CHARS = 2000      # overrideReason.userComment
MAX_ID_CHARS = 64             # card and suggestion uuids (a uuid is 36)
MAX_CODE_CHARS = 256          # Coding.code
MAX_TEXT_CHARS = 1024         # Coding.system, Coding.display


class Outcome(StrEnum):
    """What the clinician did with a card."""

    ACCEPTED = "accepted"
    OVERRIDDEN = "overridden"


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackItem:
    """One validated, normalized feedback entry."""

    card_uuid: str
    outcome: Outcome
    accepted_suggestions: tuple[str, ...]  # sorted, without repeats
    override_code: str | None
    override_system: str | None
    override_display: str | None
    user_comment: str | None               # free text: stored, never logged
    outcome_timestamp: datetime            # aware, UTC


def parse_feedback_body(body: bytes, limits: LimitsSettings) -> list[FeedbackItem]:
    """Decode a feedback body under the hook-body limits and check it (InvalidRequest when bad)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON", expression="feedback") from None
    envelope.check_limits(data, len(body), limits)
    return parse_feedback(data)


_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d+))?(?P<offset>[Zz]|[+-]\d{2}:\d{2})"
)

Errors = list[tuple[str, str]]  # (where, what), e.g. ("feedback[1].outcome", "must be …")


def parse_feedback(body: Any) -> list[FeedbackItem]:
    """Check a feedback request body; every problem is reported in one InvalidRequest."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("the body must be a JSON object with a `feedback` array", expression="feedback")
    entries = body.get("feedback")
    if not isinstance(entries, list):
        raise InvalidRequest("feedback must be an array of feedback items", expression="feedback")
    if not entries:
        raise InvalidRequest("feedback must not be empty", expression="feedback")
    if len(entries) > MAX_ITEMS:
        raise InvalidRequest(f"feedback holds {len(entries)} items; at most {MAX_ITEMS} per request", expression="feedback")
    errors: Errors = []
    items = [_parse_item(entry, f"feedback[{n}]", errors) for n, entry in enumerate(entries)]
    raise_if(errors)
    return [item for item in items if item is not None]


def raise_if(errors: Errors) -> None:
    """One InvalidRequest naming every problem (the first ten), or nothing when there is none."""
    if errors:
        shown = "; ".join(f"{where}: {what}" for where, what in errors[:10])
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise InvalidRequest(shown + more, expression=errors[0][0])


def _parse_item(entry: Any, at: str, errors: Errors) -> FeedbackItem | None:
    if not isinstance(entry, Mapping):
        errors.append((at, "must be an object"))
        return None
    before = len(errors)
    card = _string(entry.get("card"), f"{at}.card", MAX_ID_CHARS, errors, required=True)
    outcome = entry.get("outcome")
    if outcome not in (Outcome.ACCEPTED.value, Outcome.OVERRIDDEN.value):
        what = "is required" if outcome is None else "must be 'accepted' or 'overridden'"
        errors.append((f"{at}.outcome", what))
    suggestions = _accepted_suggestions(entry.get("acceptedSuggestions"), f"{at}.acceptedSuggestions", errors)
    if suggestions and outcome == Outcome.OVERRIDDEN.value:
        errors.append((f"{at}.acceptedSuggestions", "only allowed when outcome is 'accepted'"))
    # CDS Hooks 2.0, Feedback: "`acceptedSuggestions` | CONDITIONAL | *array* | An array of json
    # objects identifying one or more of the user's **AcceptedSuggestion**s. Required for `accepted`
    # outcomes." (https://cds-hooks.hl7.org/2.0/#feedback). An accepted card without them cannot say
    # what was done, and the report would count it as accepted all the same.
    if outcome == Outcome.ACCEPTED.value and not suggestions and not _has_errors_at(errors, before, f"{at}.acceptedSuggestions"):
        errors.append((f"{at}.acceptedSuggestions", "is required when outcome is 'accepted' (one or more {id} of the "
                                                    "card's suggestions; CDS Hooks 2.0)"))
    code, system, display, comment = _override_reason(entry.get("overrideReason"), f"{at}.overrideReason", errors)
    if entry.get("overrideReason") is not None and outcome == Outcome.ACCEPTED.value:
        errors.append((f"{at}.overrideReason", "only allowed when outcome is 'overridden'"))
    timestamp = _timestamp(entry.get("outcomeTimestamp"), f"{at}.outcomeTimestamp", errors)
    if len(errors) > before or card is None or timestamp is None:
        return None
    return FeedbackItem(
        card_uuid=card,
        outcome=Outcome(outcome),
        accepted_suggestions=suggestions,
        override_code=code,
        override_system=system,
        override_display=display,
        user_comment=comment,
        outcome_timestamp=timestamp,
    )


def _has_errors_at(errors: Errors, since: int, prefix: str) -> bool:
    """Whether an error about `prefix` (or inside it) was added after index `since`."""
    return any(where.startswith(prefix) for where, _ in errors[since:])


def _string(value: Any, at: str, limit: int, errors: Errors, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            errors.append((at, "is required"))
        return None
    if not isinstance(value, str) or not value.strip():
        errors.append((at, "must be a non-empty string"))
        return None
    if len(value) > limit:
        errors.append((at, f"is longer than {limit} characters"))
        return None
    return value


def _accepted_suggestions(value: Any, at: str, errors: Errors) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        errors.append((at, "must be an array of {id} objects"))
        return ()
    if len(value) > MAX_SUGGESTIONS:
        errors.append((at, f"at most {MAX_SUGGESTIONS} suggestions"))
        return ()
    ids = set()
    for n, suggestion in enumerate(value):
        if not isinstance(suggestion, Mapping):
            errors.append((f"{at}[{n}]", "must be an object with an `id`"))
            continue
        sid = _string(suggestion.get("id"), f"{at}[{n}].id", MAX_ID_CHARS, errors, required=True)
        if sid is not None:
            ids.add(sid)
    return tuple(sorted(ids))


def _override_reason(value: Any, at: str, errors: Errors) -> tuple[str | None, str | None, str | None, str | None]:
    if value is None:
        return None, None, None, None
    if not isinstance(value, Mapping):
        errors.append((at, "must be an object with `reason` and/or `userComment`"))
        return None, None, None, None
    code = system = display = None
    reason = value.get("reason")
    if reason is not None:
        if not isinstance(reason, Mapping):
            errors.append((f"{at}.reason", "must be a Coding {system, code, display}"))
        else:
            code = _string(reason.get("code"), f"{at}.reason.code", MAX_CODE_CHARS, errors, required=True)
            system = _string(reason.get("system"), f"{at}.reason.system", MAX_TEXT_CHARS, errors)
            display = _string(reason.get("display"), f"{at}.reason.display", MAX_TEXT_CHARS, errors)
    comment = value.get("userComment")
    if comment is not None:
        if not isinstance(comment, str):
            errors.append((f"{at}.userComment", "must be a string"))
            comment = None
        elif len(comment) > MAX_COMMENT_CHARS:
            errors.append((f"{at}.userComment", f"is longer than {MAX_COMMENT_CHARS} characters"))
            comment = None
    return code, system, display, comment or None


def _timestamp(value: Any, at: str, errors: Errors) -> datetime | None:
    """An RFC 3339 date-time with an offset, as an aware UTC datetime."""
    if value is None:
        errors.append((at, "is required"))
        return None
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        errors.append((at, "must be an RFC 3339 date-time with a time zone, e.g. 2025-01-31T14:05:00Z"))
        return None
    frac = (match["frac"] or "")[:6].ljust(6, "0")  # datetime keeps microseconds
    offset = "+00:00" if match["offset"] in ("Z", "z") else match["offset"]
    try:
        parsed = datetime.fromisoformat(f"{match['date']}T{match['time']}.{frac}{offset}")
        return parsed.astimezone(timezone.utc)  # OverflowError at the edges of year 1 and 9999
    except (ValueError, OverflowError):
        errors.append((at, "is not a valid date-time"))
        return None

