"""A readable rendering of a CDS Hooks response, for `lumbar-mri-cds evaluate` and `call`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_INDICATOR = {"critical": "CRITICAL", "warning": "WARNING", "info": "INFO"}


def render_text(response: Mapping[str, Any], *, orders_reviewed: int | None) -> str:
    """Cards, suggestions and ratings as plain text (``orders_reviewed`` None: not known, as for an
    answer over HTTP)."""
    cards = response.get("cards", [])
    if not cards and not response.get("systemActions"):
        if orders_reviewed is None:
            return "No cards."
        reason = "no lumbar imaging order to review" if orders_reviewed == 0 else "no card for this order"
        return f"No cards ({reason})."
    lines: list[str] = []
    for card in cards:
        topic = card.get("source", {}).get("topic", {}).get("code", "?")
        lines.append(f"[{_INDICATOR.get(card.get('indicator'), card.get('indicator'))}] {card.get('summary')}")
        lines.append(f"  rule: {topic}    source: {card.get('source', {}).get('label')}")
        for line in str(card.get("detail", "")).splitlines():
            lines.append(f"  | {line}" if line else "  |")
        for suggestion in card.get("suggestions", []):
            star = "*" if suggestion.get("isRecommended") else "-"
            kinds = ", ".join(a.get("type", "?") for a in suggestion.get("actions", []))
            lines.append(f"  {star} suggestion: {suggestion.get('label')} ({kinds})")
        reasons = [r.get("display") for r in card.get("overrideReasons", [])]
        if reasons:
            lines.append("  override reasons: " + "; ".join(str(r) for r in reasons))
        lines.append("")
    for action in response.get("systemActions", []):
        resource = action.get("resource", {})
        rating = next(
            (e["valueCodeableConcept"]["coding"][0]["code"] for e in resource.get("extension", []) if e.get("url", "").endswith("/pama-rating")),
            "?",
        )
        lines.append(f"Rating: ServiceRequest/{resource.get('id')} = {rating}")
    return "\n".join(lines).rstrip()
