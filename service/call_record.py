"""The call record: what one request was about and what it decided, in ids, keys and counts.

The view fills one ``CallRecord`` as the request goes and hands it to the card recorder
(``store/card_store.py``) and to the request log and metrics (``web/observability.py``). Neither reads
the request, the pipeline's objects or ``flask.g`` to learn what happened. It holds no token, name,
code or body; the patient id is kept only for the recorder and the log to hash with the salt.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

# Where a prefetch key's data came from (the values of ``CallRecord.prefetch``).
FROM_PREFETCH = "prefetch"
FROM_FHIR = "fhir"
UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallCard:
    """One card of the answer, as the store keeps it and the log counts it."""

    card_uuid: str                      # the card's `uuid` as sent to the EHR
    suggestion_uuids: tuple[str, ...]   # `uuid` of each of its suggestions
    rule_id: str                        # = source.topic.code
    indicator: str                      # info | warning | critical
    rating: str | None                  # the appropriateness rating the card carries, if any
    modality: str | None = None         # mri | ct | xr: the modality of the order it is about


@dataclass(frozen=True, slots=True, kw_only=True)
class FhirFetchNote:
    """One FHIR fetch for keys prefetch lacked."""

    keys: tuple[str, ...]               # prefetch keys asked, in order
    failed: frozenset[str]              # those that could not be had
    requests_made: int                  # HTTP requests sent


@dataclass(kw_only=True)
class CallRecord:
    """One request's record, filled by its view as it goes (a failed call keeps what it reached)."""

    service_id: str | None = None       # a service of ours, or None
    issuer: str | None = None           # JWT `iss`, once verified
    tenant: str | None = None           # JWT `tenant`, if any
    hook_instance: str | None = None    # the request's hookInstance, once parsed
    patient_id: str | None = None       # hashed before it is stored or logged; never kept as is
    orders_reviewed: int | None = None  # None: the call was not evaluated
    order_ratings: list[tuple[str, str]] = field(default_factory=list)  # (rule id, rating) per order rated
    cards: list[CallCard] = field(default_factory=list)
    prefetch: dict[str, str] | None = None                     # prefetch key -> FROM_PREFETCH | FROM_FHIR | UNAVAILABLE
    fhir_fetches: list[FhirFetchNote] = field(default_factory=list)
    feedback_outcomes: list[str] = field(default_factory=list)  # outcome of each stored feedback item
