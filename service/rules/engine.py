"""Decide: run the ordered rule table over one order's facts. Returns; never acts."""

from __future__ import annotations

from dataclasses import dataclass

from service.facts.model import Facts
from service.rules.predicates import PREDICATES
from service.rules.table import Modifier
from service.rules.table import Rule
from service.rules.table import RuleTable
from service.rules.table import When


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    facts: Facts
    rule: Rule | None                 # None: no rule matched (the order gets nothing)
    modifiers: tuple[Modifier, ...]   # at most one per modifier id

    @property
    def rating(self) -> str | None:
        """The PAMA rating code, or None when the order is not rated (rule 9, or no rule)."""
        if self.rule is None or self.rule.rating == "none":
            return None
        return self.rule.rating


def holds(when: When, facts: Facts) -> bool:
    """Whether a `when` combination of predicates holds for these facts."""
    # Plain loops, in the order all, any, none: all()/any() over generators cost more than the
    # predicates they call.
    for name in when.all:
        if not PREDICATES[name](facts):
            return False
    if when.any:
        for name in when.any:
            if PREDICATES[name](facts):
                break
        else:  # none of `any` holds
            return False
    for name in when.none:
        if PREDICATES[name](facts):
            return False
    return True


def decide(table: RuleTable, facts: Facts) -> Decision:
    """The first matching rule rates the order; matching modifiers sit beside it."""
    rule = next((r for r in table.rules if holds(r.when, facts)), None)
    rule_id = rule.id if rule else None
    fired: dict[str, Modifier] = {}
    for modifier in table.modifiers:
        if modifier.id in fired or any(m in fired for m in modifier.unless):
            continue
        if modifier.rules and rule_id not in modifier.rules:
            continue
        if rule_id in modifier.not_rules:
            continue
        if holds(modifier.when, facts):
            fired[modifier.id] = modifier
    return Decision(facts=facts, rule=rule, modifiers=tuple(fired.values()))
