"""POST /cds-services/{id}/feedback through the real app (create_app), on SQLite and PostgreSQL."""

import threading
import uuid
from datetime import date
from datetime import timedelta

import pytest
import sqlalchemy as sa

from service.app import services_of
from service.store import card_store
from service.store import report
from service.store import schema
from tests import fhir
from tests.conftest import ISSUER
from tests.conftest import with_settings
from tests.store import databases

NO_DEDUP = timedelta(0)  # every card its own decision: these tests are about feedback, not re-fires (test_report.py)

PATH = "/cds-services/order-select/feedback"


@pytest.fixture(params=databases.KINDS)
def settings(request, settings, tmp_path):
    with databases.database(request.param, tmp_path) as url:
        yield with_settings(settings, database_url=url)


@pytest.fixture
def services(app):
    services = services_of(app)
    yield services
    services.recorder.close()  # before the app's engine and database go away


def issue(services, *, tenant=None, service_id="order-select"):
    card = card_store.IssuedCard(
        card_uuid=str(uuid.uuid4()), suggestion_uuids=(str(uuid.uuid4()),), service_id=service_id,
        rule_id="acute-uncomplicated", indicator="warning", rating="not-appropriate",
        hook_instance=str(uuid.uuid4()), issuer=ISSUER, tenant=tenant, patient_id="pat-1")
    services.recorder.record_cards([card])
    return card


def item(card, outcome="accepted", **extra):
    entry = {"card": card.card_uuid, "outcome": outcome, "outcomeTimestamp": "2025-03-03T10:00:00Z", **extra}
    if outcome == "accepted":
        entry["acceptedSuggestions"] = [{"id": card.suggestion_uuids[0]}]
    return entry


def stored(services):
    with services.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(schema.feedback)).scalar_one()


def test_round_trip(client, signer, services):
    a, b = issue(services), issue(services)
    reason = {"reason": {"system": "http://example.org/o", "code": "patient-preference", "display": "Patient"}}
    body = {"feedback": [item(a), item(b, "overridden", overrideReason=reason)]}
    answer = client.post(PATH, json=body, headers=signer.headers(PATH))
    assert answer.status_code == 200
    assert answer.data == b"" and "Content-Type" not in answer.headers
    result = report.build_report(services.engine, dedup=NO_DEDUP)
    counts = {"cards": 2, "refires": 0, "accepted": 1, "overridden": 1, "override_reasons": {"patient-preference": 1},
              "acceptance_rate": 0.5}
    assert result["rules"]["acute-uncomplicated"] == {**counts, "modalities": {"unknown": counts}}


def test_feedback_on_cards_from_a_real_hook_call(client, signer, services):
    request = fhir.load_request("pregnancy-contrast", shift_to=date.today())  # a rating card and a modifier card
    hook = client.post("/cds-services/order-select", json=request, headers=signer.headers("/cds-services/order-select"))
    assert hook.status_code == 200
    cards = hook.get_json()["cards"]
    rated = next(c for c in cards if c.get("suggestions"))
    others = [c for c in cards if c is not rated]
    reason = others[0]["overrideReasons"][0] if others and others[0].get("overrideReasons") else None
    body = {"feedback": [
        {"card": rated["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": rated["suggestions"][0]["uuid"]}],
         "outcomeTimestamp": "2025-03-03T10:00:00Z"},
        *[{"card": c["uuid"], "outcome": "overridden", "outcomeTimestamp": "2025-03-03T10:00:00Z",
           **({"overrideReason": {"reason": reason}} if reason else {})} for c in others],
    ]}
    # Straight after the hook answer: the card rows may still be on their way to the database.
    answer = client.post(PATH, json=body, headers=signer.headers(PATH))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    result = report.build_report(services.engine, dedup=NO_DEDUP)
    rules = result["rules"]
    assert rules[rated["source"]["topic"]["code"]]["accepted"] == 1
    assert result["cards_total"] == len(cards) and result["feedback_total"] == len(cards)
    if reason:
        assert rules[others[0]["source"]["topic"]["code"]]["override_reasons"] == {reason["code"]: 1}


def test_repeated_feedback_is_stored_once(client, signer, services):
    body = {"feedback": [item(issue(services))]}
    for _ in range(3):
        assert client.post(PATH, json=body, headers=signer.headers(PATH)).status_code == 200
    assert stored(services) == 1


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"outcome": "maybe"}, "feedback[1].outcome"),
        ({"card": "6f1c4d2e-0000-4000-8000-000000000000"}, "feedback[1].card"),
        ({"outcomeTimestamp": "03/03/2025"}, "feedback[1].outcomeTimestamp"),
        ({"acceptedSuggestions": [{"id": "not-a-suggestion-of-it"}]}, "feedback[1].acceptedSuggestions"),
    ],
    ids=["outcome", "unknown card", "timestamp", "suggestion"],
)
def test_bad_item_is_400_and_nothing_is_stored(client, signer, services, bad, where):
    body = {"feedback": [item(issue(services)), {**item(issue(services)), **bad}]}
    answer = client.post(PATH, json=body, headers=signer.headers(PATH))
    assert answer.status_code == 400
    outcome = answer.get_json(force=True)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [where]
    assert stored(services) == 0


@pytest.mark.parametrize("body", [{"feedback": []}, {"feedback": {}}, []], ids=["empty", "object", "array"])
def test_bad_body_is_400(client, signer, services, body):
    answer = client.post(PATH, json=body, headers=signer.headers(PATH))
    assert answer.status_code == 400
    assert answer.get_json(force=True)["issue"][0]["expression"] == ["feedback"]


def test_not_json(client, signer):
    answer = client.post(PATH, data="feedback", content_type="text/plain", headers=signer.headers(PATH))
    assert answer.status_code == 415
    answer = client.post(PATH, data="{not json", content_type="application/json", headers=signer.headers(PATH))
    assert answer.status_code == 400


def test_token_is_checked_first(client, signer, services):
    body = {"feedback": [item(issue(services))]}
    assert client.post(PATH, json=body).status_code == 401
    hook_path = "/cds-services/order-select"  # a token for another URL (`aud`) does not do
    assert client.post(PATH, json=body, headers=signer.headers(hook_path)).status_code == 401
    assert client.post("/cds-services/nope/feedback", json=body).status_code == 401
    assert stored(services) == 0


def test_unknown_service_is_404(client, signer, services):
    path = "/cds-services/nope/feedback"
    assert client.post(path, json={"feedback": [item(issue(services))]}, headers=signer.headers(path)).status_code == 404


def test_feedback_on_another_service_or_tenant_is_refused(client, signer, services):
    signing = issue(services, service_id="order-sign")
    answer = client.post(PATH, json={"feedback": [item(signing)]}, headers=signer.headers(PATH))
    assert answer.status_code == 400
    northern = issue(services, tenant="north")
    answer = client.post(PATH, json={"feedback": [item(northern)]}, headers=signer.headers(PATH))  # no tenant
    assert answer.status_code == 400
    answer = client.post(PATH, json={"feedback": [item(northern)]}, headers=signer.headers(PATH, tenant="north"))
    assert answer.status_code == 200


def test_store_failure_is_503(client, signer, services):
    card = issue(services)
    services.recorder.flush()
    with services.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE feedback"))
    answer = client.post(PATH, json={"feedback": [item(card)]}, headers=signer.headers(PATH))
    assert answer.status_code == 503
    assert answer.get_json(force=True)["issue"][0]["code"] == "transient"


def test_concurrent_posts_are_all_counted(app, signer, services):
    threads, posts = 20, 25
    cards = [[issue(services) for _ in range(posts)] for _ in range(threads)]
    statuses = []

    def post(mine):
        client = app.test_client()
        for n, card in enumerate(mine):
            body = {"feedback": [item(card) if n % 2 == 0 else item(card, "overridden")]}
            statuses.append(client.post(PATH, json=body, headers=signer.headers(PATH)).status_code)

    workers = [threading.Thread(target=post, args=(mine,)) for mine in cards]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert statuses == [200] * threads * posts
    result = report.build_report(services.engine, dedup=NO_DEDUP)
    assert (result["cards_total"], result["feedback_total"]) == (threads * posts, threads * posts)
    assert result["rules"]["acute-uncomplicated"]["accepted"] == threads * 13


@pytest.mark.parametrize("suggestions", [None, []], ids=["absent", "empty"])
def test_accepted_without_accepted_suggestions_is_refused(client, signer, services, suggestions):
    """CDS Hooks 2.0: acceptedSuggestions is "Required for `accepted` outcomes"."""
    card = issue(services)
    entry = {k: v for k, v in item(card).items() if k != "acceptedSuggestions"}
    if suggestions is not None:
        entry["acceptedSuggestions"] = suggestions
    answer = client.post(PATH, json={"feedback": [entry]}, headers=signer.headers(PATH))
    assert answer.status_code == 400
    issue_ = answer.get_json()["issue"][0]
    assert issue_["expression"] == ["feedback[0].acceptedSuggestions"]
    assert "is required when outcome is 'accepted'" in issue_["diagnostics"]
    assert stored(services) == 0
