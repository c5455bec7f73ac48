"""Decide: run the ordered rule table over one order's facts. Returns; never acts."""

from __future__ import annotations

from dataclasses import dataclass

from service.facts.model import Facts
from service.rules.predicates import PREDICATES
from service.rules.table import RATING_RANK
from service.rules.table import Cell
from service.rules.table import Modifier
from service.rules.table import RatingRow
from service.rules.table import Rule
from service.rules.table import RuleTable
from service.rules.table import StudyColumn
from service.rules.table import When

# decision-rules.md "Ratings by modality": UA and MBA adhere to the AUC, UNA (or not listed) does not.
PAMA_OF_ACR = {"UA": "appropriate", "MBA": "appropriate", "UNA": "not-appropriate"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    facts: Facts
    rule: Rule | None                 # None: no rule matched (the order gets nothing)
    modifiers: tuple[Modifier, ...]   # at most one per modifier id
    row: RatingRow | None = None      # the rule's row of the rating table (rules 9 and 10 have none)
    acr: str | None = None            # UA | MBA | UNA: the ordered study's rating in that row
    better: StudyColumn | None = None # the study to offer instead: usually appropriate where the ordered one is not
    ordered: StudyColumn | None = None  # the ordered study's column of the rating table

    @property
    def rated(self) -> bool:
        """False for an order PAMA does not cover (radiography): cards, no rating."""
        return self.ordered is None or self.ordered.rated

    @property
    def rating(self) -> str | None:
        """The PAMA rating code, or None when the order is not rated (rule 9, no rule, radiography)."""
        if self.rule is None or self.rule.rating == "none" or not self.rated:
            return None
        if self.acr is None:
            return self.rule.rating
        return PAMA_OF_ACR[self.acr]


def cell_rating(cell: Cell | None, facts: Facts) -> str:
    """The ACR rating a cell gives for these facts; a study the row does not list is UNA."""
    if cell is None:
        return "UNA"
    for name, rating in cell.choices:
        if PREDICATES[name](facts):
            return rating
    return cell.otherwise


def study_rating(row: RatingRow, study: StudyColumn, facts: Facts) -> str:
    """The ACR rating of `study` in `row` for these facts."""
    return cell_rating(row.cells.get(study.column), facts)


def _better(row: RatingRow, facts: Facts, column: str) -> StudyColumn | None:
    """The first usually appropriate study of the row other than the ordered one; in pregnancy, only a
    study marked safe in pregnancy (decision-rules.md `pregnancy-radiation`: MRI without contrast)."""
    if not row.may_be_usual:
        return None  # no study is usually appropriate in this variant (V1, V2, repeat imaging)
    pregnant = PREDICATES["pregnant"](facts)
    for study in row.may_be_usual:
        if study.column == column or (pregnant and not study.pregnancy):
            continue
        if study_rating(row, study, facts) == "UA":
            return study
    return None


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
    """The first matching rule decides the variant; the ordered study's rating in it rates the order;
    matching modifiers sit beside it."""
    rule = next((r for r in table.rules if holds(r.when, facts)), None)
    rule_id = rule.id if rule else None
    column = facts.order.study.column
    ordered = table.studies.get(column)
    row = table.ratings.get(rule_id) if rule_id else None
    acr = cell_rating(row.cells.get(column), facts) if row is not None else None
    better = _better(row, facts, column) if row is not None and acr != "UA" else None
    fired: dict[str, Modifier] = {}
    for modifier in table.modifiers:
        if modifier.id in fired or any(m in fired for m in modifier.unless):
            continue
        if modifier.rules and rule_id not in modifier.rules:
            continue
        if rule_id in modifier.not_rules:
            continue
        if holds(modifier.when, facts) and (
            not modifier.better_rated or _rated_above(table, row, facts, modifier.replace_with, acr)
        ):
            fired[modifier.id] = modifier
    return Decision(facts=facts, rule=rule, modifiers=tuple(fired.values()), row=row, acr=acr, better=better,
                    ordered=ordered)


def _rated_above(table: RuleTable, row: RatingRow | None, facts: Facts, code: str | None, acr: str | None) -> bool:
    """Whether the study `code` orders is rated above the ordered study in the row."""
    target = table.by_code.get(code or "")
    if row is None or target is None or acr is None:
        return False
    return RATING_RANK[study_rating(row, target, facts)] > RATING_RANK[acr]
