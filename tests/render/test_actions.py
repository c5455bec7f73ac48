"""Actions: every resource returned is a valid R4 ServiceRequest, checked once per draft order.

The actions skip the whole-resource check when the draft order is valid and each added element was
checked on its own (``actions.Checks``). These tests hold that shortcut to the old behaviour, the
whole resource checked every time, over valid and broken drafts, element by element.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import uuid
from typing import Any

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from service.facts.model import Contrast
from service.facts.model import Order
from service.render import actions
from service.render import cards
from service.rules import table
from tests import fhir
from tests.fhir import load_request

TABLE = table.load_table()
LBP = {"system": fhir.SNOMED, "code": "279039007", "display": "Low back pain (finding)"}


class WholeResourceChecks(actions.Checks):
    """The old behaviour: no element is taken as known, so every resource is checked whole."""

    def element(self, key: tuple[str, ...], make: Any) -> bool:
        return False


def order(resource: dict[str, Any]) -> Order:
    return Order(reference=f"ServiceRequest/{resource.get('id')}", resource=resource, study=fhir.study("72148", Contrast.WITHOUT),
                 priority=None, has_reason=True)


# Each action as the cards call it (ratings and rule ids from the card content).
ACTIONS = {
    "rating": lambda d: actions.rating_action(d, "not-appropriate", "acute-uncomplicated"),
    "stat": lambda d: actions.set_priority_stat(d, "appropriate", "cauda-equina"),
    "stat-unrated": lambda d: actions.set_priority_stat(d, None, "none"),
    "replace-code": lambda d: actions.replace_code(d, "72158", "MRI lumbar spine without and with contrast",
                                                   "appropriate", "persistent-after-conservative-care"),
    "add-reason": lambda d: actions.add_reason(d, "radiculopathy"),
    "refer": lambda d: actions.refer_physical_therapy(d),
    "delete": lambda d: actions.delete_order(d),
}

# Top-level elements of a draft, valid and not: the shortcut must agree with the whole check.
ELEMENTS: dict[str, list[Any]] = {
    "priority": ["routine", "stat", "stat ", 5, None],
    "extension": [[], [{"url": "http://example.org/x", "valueString": "a"}], [{"url": 5}], ["junk"],
                  [{"url": actions.PAMA_RATING, "valueString": 5}], [None]],
    "reasonCode": [[{"coding": [LBP]}], [{"coding": [{"code": 5}]}], ["x", {"text": "no coding"}], [None], []],
    "code": [{"coding": [{"system": fhir.CPT, "code": "72148"}]}, {"coding": [{"system": fhir.CPT, "code": "72148"}], "text": 5}],
    "subject": [{"reference": "Patient/p"}, {"reference": 5}, "Patient/p"],
    "encounter": [{"reference": "Encounter/e"}, {"reference": 7}],
    "requester": [{"reference": "Practitioner/1"}, 3],
    "note": [[{"text": "n"}], [None], [{"text": 1}]],
    "status": ["draft", 5],
    "_priority": [{"extension": [{"url": "http://example.org/p", "valueString": "y"}]}],
    "occurrencePeriod": [{"start": "2026-01-01"}],
    "unknownElement": [1],
}


def outcome(build: Any, resource: dict[str, Any], checks: actions.Checks) -> Any:
    """What an action gives for this draft: its JSON with the consult id blanked, or the error class."""
    try:
        action = build(actions.Draft(order(copy.deepcopy(resource)), checks))
    except (actions.InvalidOrder, KeyError, TypeError) as exc:
        return type(exc).__name__
    return re.sub(r"urn:uuid:[0-9a-f-]{36}", "urn:uuid:U", repr(action))


def assert_same_as_whole_checks(resource: dict[str, Any], checks: actions.Checks) -> None:
    for name, build in ACTIONS.items():
        fast = outcome(build, resource, checks)
        assert fast == outcome(build, resource, WholeResourceChecks()), name
        if not isinstance(fast, str) or fast.startswith("{"):
            got = build(actions.Draft(order(copy.deepcopy(resource)), checks))
            if "resource" in got:
                ServiceRequest.model_validate(got["resource"])  # the promise: valid R4, every time


CHECKS = cards.prepare_checks(TABLE)
CASES = [(k, v) for k, values in ELEMENTS.items() for v in values]


@pytest.mark.parametrize(("element", "value"), CASES, ids=[f"{k}={v!r}"[:60] for k, v in CASES])
def test_shortcut_agrees_with_the_whole_check(element: str, value: Any) -> None:
    resource = fhir.mri_order(reasons=[LBP])
    resource[element] = value
    assert_same_as_whole_checks(resource, CHECKS)


def test_a_missing_subject_fails_as_before() -> None:
    resource = fhir.mri_order()
    del resource["subject"]
    assert_same_as_whole_checks(resource, CHECKS)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(ELEMENTS)), st.integers(min_value=0, max_value=10), max_size=4))
def test_shortcut_agrees_on_combinations(choice: dict[str, int]) -> None:
    resource = fhir.mri_order(reasons=[LBP])
    for element, n in choice.items():
        values = ELEMENTS[element]
        resource[element] = values[n % len(values)]
    assert_same_as_whole_checks(resource, CHECKS)


def test_a_valid_draft_is_checked_once_for_all_its_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = cards.prepare_checks(TABLE)
    seen: list[Any] = []
    original = actions._valid
    monkeypatch.setattr(actions, "_valid", lambda resource: seen.append(resource) or original(resource))
    draft = actions.Draft(order(fhir.mri_order(reasons=[LBP])), checks)
    for build in ACTIONS.values():
        build(draft)
    assert len(seen) == 1  # the draft order itself; every addition was checked at start-up


def test_start_up_checks_every_addition_the_card_content_can_make() -> None:
    checks = cards.prepare_checks(TABLE)
    known = len(checks)
    from service import pipeline
    from service.facts import codes
    from service.intake.envelope import parse_request

    evaluator = pipeline.Evaluator(codes.ValueSets.load(), TABLE)
    evaluator.prepared = dataclasses.replace(evaluator.prepared, checks=checks)
    for path in sorted((fhir.FIXTURES / "requests").glob("*.json")):
        data = load_request(path.stem)
        request = parse_request(data, hook=data["hook"], sandbox_quirks=path.stem.startswith("sandbox-"))
        evaluator.evaluate(request, fhir.AS_OF)
    assert len(checks) == known  # nothing left to check on a request


def test_an_invalid_addition_is_not_taken_as_valid() -> None:
    checks = actions.Checks()
    assert not checks.code(" 72158", "x")  # a code with a leading space is not a FHIR code
    action = outcome(lambda d: actions.replace_code(d, " 72158", "x", None, "none"), fhir.mri_order(), checks)
    assert action == "InvalidOrder"


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_uuid_text_is_the_uuid_module_s(raw: bytes) -> None:
    assert actions.uuid_text(raw) == str(uuid.UUID(bytes=raw, version=4))


def test_random_uuids_are_version_4_and_differ() -> None:
    drawn = {actions.random_uuid() for _ in range(1000)}
    assert len(drawn) == 1000
    assert all(uuid.UUID(u).version == 4 and uuid.UUID(u).variant == uuid.RFC_4122 for u in drawn)
