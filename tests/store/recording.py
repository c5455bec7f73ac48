"""Feedback bodies as the feedback endpoint stores them: checked by intake, then recorded."""

from __future__ import annotations

from typing import Any

from service.intake.feedback_items import parse_feedback
from service.store.card_store import CardStore


def record_feedback(store: CardStore, service_id: str, body: Any, **claims: Any) -> int:
    """Check a feedback body (``intake.feedback_items``) and store its items; returns how many were new."""
    return store.record_feedback(service_id, parse_feedback(body), **claims)
