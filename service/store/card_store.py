"""Cards issued and feedback received: the SQL behind the hook answers, the feedback endpoint and
the report.

- ``record_call`` / ``record_cards`` run on the hook request path: they queue the rows for the card
  writer thread (``store/card_writer.py``), which keeps them in this worker's card outbox on local
  disk until they are committed (``store/outbox.py``), and return at once.
- ``record_feedback`` is the feedback endpoint's: check each item's card was issued by this service
  (and to this issuer and tenant), then store all items in one transaction. It returns only after
  the commit, so an HTTP 200 means the feedback is durable (CDS Hooks 2.0 feedback; interface.md).
  The items come checked from ``intake/feedback_items.py``.

Nothing here logs a user comment, a patient id or SQL parameters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from service.call_record import CallRecord
from service.errors import StoreUnavailable
from service.intake.feedback_items import FeedbackItem
from service.intake.feedback_items import raise_if
from service.security.pseudonyms import patient_hash
from service.store import schema
from service.store import bounded
from service.store.card_writer import CardWriter

log = logging.getLogger(__name__)

LOCK_ATTEMPTS = 3             # feedback transactions tried when a lock or pool wait (schema) runs out
LOOKUP_WAIT_SECONDS = 1.0     # how long to wait for a card another worker may just have issued
# A feedback call that has not ended by then answers 503 (store/bounded.py: a database hung on a live
# connection would hold the request thread without end). Above its longest busy case: the lookup
# wait and LOCK_ATTEMPTS lock or pool waits of about a second each.
FEEDBACK_WAIT_SECONDS = 10.0
FEEDBACK_THREADS = 32         # per worker: more than its request threads


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCard:
    """One row of the cards table, before its patient id is hashed."""

    card_uuid: str                      # the card's `uuid` as sent to the EHR
    suggestion_uuids: tuple[str, ...]   # `uuid` of each of its suggestions
    service_id: str                     # order-select | order-sign
    rule_id: str                        # = source.topic.code
    indicator: str                      # info | warning | critical
    rating: str | None                  # the appropriateness rating the card carries, if any
    hook_instance: str                  # the request's hookInstance
    issuer: str                         # JWT `iss` of the hook call
    tenant: str | None                  # JWT `tenant`, if any
    patient_id: str | None              # hashed with the salt before it is stored; never stored as is
    modality: str | None = None         # mri | ct | xr: the modality of the order the card is about


def dedup_key(service_id: str, item: FeedbackItem) -> str:
    """SHA-256 of the normalized item: identical feedback gets the same key."""
    canonical = json.dumps(
        [
            service_id,
            item.card_uuid,
            item.outcome.value,
            list(item.accepted_suggestions),
            item.override_system,
            item.override_code,
            item.override_display,
            item.user_comment,
            item.outcome_timestamp.isoformat(),
        ],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def utcnow() -> datetime:
    """Now, in UTC (the default clock of a CardStore)."""
    return datetime.now(timezone.utc)


class CardStore:
    """Records the cards the service issues and the feedback clinicians give on them."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        salt: str,
        clock: Callable[[], datetime] = utcnow,
        lookup_wait: float = LOOKUP_WAIT_SECONDS,
        feedback_wait: float = FEEDBACK_WAIT_SECONDS,
        outbox_dir: Path | None = None,
    ) -> None:
        self._engine = engine
        self._salt = salt
        self._clock = clock            # tests pass a fixed clock; times are stored in UTC
        self._lookup_wait = lookup_wait
        self._writer = CardWriter(engine, outbox_dir)
        self._run = bounded.runner("feedback", feedback_wait, threads=FEEDBACK_THREADS,
                                   bounded=schema.may_hang(engine.url))
        if outbox_dir is not None:
            self._writer.start()  # at once: it recovers what a worker that died left in the outbox

    def record_cards(self, cards: Sequence[IssuedCard]) -> None:
        """Queue the cards of one hook answer for writing; returns at once (no database I/O)."""
        if not cards:
            return
        issued_at = self._clock().astimezone(timezone.utc)
        card_rows = [self._card_row(card, issued_at) for card in cards]
        suggestion_rows = [
            {"card_uuid": card.card_uuid, "suggestion_uuid": s} for card in cards for s in set(card.suggestion_uuids)
        ]
        self._writer.put(card_rows, suggestion_rows)

    def record_call(self, call: CallRecord) -> None:
        """Queue the cards of one answered hook call (see ``record_cards``)."""
        if call.service_id is None or call.hook_instance is None or call.issuer is None:
            raise ValueError("a call record without service, hookInstance or issuer cannot be stored")
        self.record_cards([
            IssuedCard(
                card_uuid=card.card_uuid,
                suggestion_uuids=card.suggestion_uuids,
                service_id=call.service_id,
                rule_id=card.rule_id,
                indicator=card.indicator,
                rating=card.rating,
                modality=card.modality,
                hook_instance=call.hook_instance,
                issuer=call.issuer,
                tenant=call.tenant,
                patient_id=call.patient_id,
            )
            for card in call.cards
        ])

    def record_feedback(
        self, service_id: str, items: Sequence[FeedbackItem], *, issuer: str | None = None, tenant: str | None = None
    ) -> int:
        """Durably store checked feedback items (``intake.feedback_items``); returns how many were new.

        ``issuer`` / ``tenant`` (the caller's token claims), when given, restrict the cards one may
        give feedback on to those issued to that issuer and tenant. Raises InvalidRequest (nothing
        stored) for an unknown card or suggestion, StoreUnavailable when the database fails or has
        not answered within ``feedback_wait`` (if it commits later, a resend is stored once).
        """
        return self._run(self._record_feedback, service_id, items, issuer, tenant)

    def _record_feedback(
        self, service_id: str, items: Sequence[FeedbackItem], issuer: str | None, tenant: str | None
    ) -> int:
        try:
            for attempt in range(1, LOCK_ATTEMPTS + 1):
                try:
                    with self._engine.connect() as conn:
                        self._check_cards(conn, service_id, items, issuer, tenant)
                        conn.commit()  # end the read transaction; the writes get their own
                        return self._insert(conn, service_id, items)
                except (sa.exc.OperationalError, sa.exc.TimeoutError) as exc:
                    # Another writer held the lock past the lock timeout, or every pooled connection
                    # stayed taken past the pool timeout (about a second each): try again, a bounded
                    # number of times (a busy database, not a broken one).
                    if attempt == LOCK_ATTEMPTS or not schema.is_busy(exc):
                        raise
            raise AssertionError("unreachable")
        except sa.exc.SQLAlchemyError as exc:
            # The engine hides SQL parameters (schema.create_engine), so the class name is safe.
            log.error("feedback not stored: database error %s", type(exc).__name__)
            raise StoreUnavailable("the feedback store is unavailable; retry later") from exc

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every card queued so far is written (or the timeout passes)."""
        self._writer.flush(timeout)

    def close(self) -> None:
        """Write what is pending and stop the writer thread."""
        self._writer.close()

    def _card_row(self, card: IssuedCard, issued_at: datetime) -> dict[str, Any]:
        return {
            "card_uuid": card.card_uuid,
            "service_id": card.service_id,
            "rule_id": card.rule_id,
            "indicator": card.indicator,
            "rating": card.rating,
            "modality": card.modality,
            "hook_instance": card.hook_instance,
            "issuer": card.issuer,
            "tenant": card.tenant,
            "patient_hash": patient_hash(self._salt, card.patient_id) if card.patient_id else None,
            "issued_at": issued_at,
        }

    def _check_cards(
        self,
        conn: sa.Connection,
        service_id: str,
        items: Sequence[FeedbackItem],
        issuer: str | None,
        tenant: str | None,
    ) -> None:
        wanted = {item.card_uuid for item in items}
        known = self._lookup(conn, service_id, wanted, issuer, tenant)
        if wanted - known.keys():
            # Another worker (or our own writer thread) may have issued the card moments ago.
            deadline = time.monotonic() + self._lookup_wait
            self._writer.flush(self._lookup_wait)
            while True:
                conn.commit()  # a fresh snapshot: see what other workers committed since
                known |= self._lookup(conn, service_id, wanted - known.keys(), issuer, tenant)
                if not wanted - known.keys() or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        errors = []
        for n, item in enumerate(items):
            suggestions = known.get(item.card_uuid)
            if suggestions is None:
                errors.append((f"feedback[{n}].card", f"unknown card for service {service_id!r}"))
                continue
            for s in item.accepted_suggestions:
                if s not in suggestions:
                    errors.append((f"feedback[{n}].acceptedSuggestions", f"{s!r} is not a suggestion of that card"))
        raise_if(errors)

    def _lookup(
        self, conn: sa.Connection, service_id: str, uuids: Iterable[str], issuer: str | None, tenant: str | None
    ) -> dict[str, frozenset[str]]:
        """Card uuid → its suggestion uuids, for the cards of this service among ``uuids``."""
        uuids = list(uuids)
        if not uuids:
            return {}
        cards, suggestions = schema.cards, schema.card_suggestions
        query = (
            sa.select(cards.c.card_uuid, suggestions.c.suggestion_uuid)
            .select_from(cards.outerjoin(suggestions, suggestions.c.card_uuid == cards.c.card_uuid))
            .where(cards.c.card_uuid.in_(uuids), cards.c.service_id == service_id)
        )
        if issuer is not None:
            query = query.where(cards.c.issuer == issuer)
            query = query.where(cards.c.tenant == tenant if tenant is not None else cards.c.tenant.is_(None))
        found: dict[str, set[str]] = {}
        for card_uuid, suggestion_uuid in conn.execute(query):
            found.setdefault(card_uuid, set())
            if suggestion_uuid is not None:
                found[card_uuid].add(suggestion_uuid)
        return {k: frozenset(v) for k, v in found.items()}

    def _insert(self, conn: sa.Connection, service_id: str, items: Sequence[FeedbackItem]) -> int:
        received_at = self._clock().astimezone(timezone.utc)
        stored = 0
        # One transaction: all items or none. A repeat of an already stored item (a client retry)
        # hits the unique dedup_key and is skipped, not an error.
        with conn.begin():
            for item in items:
                row = _feedback_row(service_id, item, received_at)
                insert = schema.insert_ignore(conn, schema.feedback).values(**row).returning(schema.feedback.c.id)
                stored += len(conn.execute(insert).all())  # no row back: a duplicate, skipped
        log.info("feedback stored: service=%s items=%d new=%d", service_id, len(items), stored)
        return stored


def _feedback_row(service_id: str, item: FeedbackItem, received_at: datetime) -> dict[str, Any]:
    return {
        "card_uuid": item.card_uuid,
        "service_id": service_id,
        "outcome": item.outcome.value,
        "accepted_suggestions": json.dumps(list(item.accepted_suggestions)),
        "override_code": item.override_code,
        "override_system": item.override_system,
        "override_display": item.override_display,
        "user_comment": item.user_comment,
        "outcome_timestamp": item.outcome_timestamp,
        "received_at": received_at,
        "dedup_key": dedup_key(service_id, item),
    }
