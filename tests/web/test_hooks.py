"""The hook services over HTTP (Flask test client, real tokens, real store)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date

import pytest

from service import config
from service.app import create_app
from service.app import services_of
from tests import fhir

SELECT = "/cds-services/order-select"
SIGN = "/cds-services/order-sign"

# fixture -> rule ids of the cards, in order (the rating card first, then modifiers)
EXPECTED = [
    ("cauda-equina", ["cauda-equina"]),
    ("suspected-cancer-infection", ["suspected-cancer-infection"]),
    ("fever-infection-risk", ["suspected-cancer-infection"]),
    ("prior-lumbar-surgery", ["prior-lumbar-surgery"]),
    ("fracture-risk", ["fracture-risk"]),
    ("trauma-ct-first", ["trauma-ct-first"]),
    ("persistent-after-conservative-care", ["persistent-after-conservative-care"]),
    ("acute-uncomplicated", ["acute-uncomplicated"]),
    ("no-conservative-trial", ["no-conservative-trial"]),
    ("no-indication", ["no-indication"]),
    ("no-criteria-apply", []),
    ("pregnancy-contrast", ["acute-uncomplicated", "pregnancy-contrast"]),
    ("contrast-choice", ["persistent-after-conservative-care"]),  # v2: the rating card offers 72148 itself
    ("repeat-imaging", ["repeat-imaging"]),
    ("steroid-statement", ["fracture-risk"]),
    ("cauda-equina-contrast", ["cauda-equina"]),
    ("child", []),
    ("ct-acute-uncomplicated", ["acute-uncomplicated"]),
    ("ct-pregnancy", ["persistent-after-conservative-care", "pregnancy-radiation"]),
    ("ct-cauda-equina", ["cauda-equina"]),
    ("xr-acute-uncomplicated", ["acute-uncomplicated"]),
    ("ct-repeat-imaging", ["repeat-imaging"]),
]

SANDBOX_SHAPES = ["sandbox-empty-order", "sandbox-medication-order", "sandbox-dstu2-medication-order", "sandbox-no-draft-orders"]


def post(client, signer, path, body, **headers):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, data=data, content_type=headers.pop("content_type", "application/json"),
                       headers={**signer.headers(path), **headers})


def topics(response):
    return [card["source"]["topic"]["code"] for card in response.get_json()["cards"]]


def test_discovery_lists_both_services_with_prefetch(client):
    response = client.get("/cds-services")
    assert response.status_code == 200
    services = {s["id"]: s for s in response.get_json()["services"]}
    assert set(services) == {"order-select", "order-sign"}
    assert services["order-select"]["hook"] == "order-select"
    prefetch = services["order-sign"]["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert all("{{context.patientId}}" in q for q in prefetch.values())
    assert "8310-5" in prefetch["observations"]  # body temperature is read for fever
    # v2: medication use is read from statements and dispenses too (long-term steroids, conservative care)
    assert prefetch["medicationStatements"] == "MedicationStatement?patient={{context.patientId}}"
    assert prefetch["medicationDispenses"] == "MedicationDispense?patient={{context.patientId}}"
    # v2 change 6: prior studies of every modality are read (no modality filter on imaging queries)
    assert prefetch["imagingStudies"] == "ImagingStudy?patient={{context.patientId}}"
    assert prefetch["diagnosticReports"] == "DiagnosticReport?patient={{context.patientId}}"
    for service in services.values():  # what is reviewed, and that radiography is not rated
        assert all(word in service["description"] for word in ("MRI", "CT", "radiography", "PAMA"))


@pytest.mark.parametrize(("name", "rules"), EXPECTED)
def test_each_story_gets_the_cards_its_rule_promises(client, signer, name, rules):
    request = fhir.load_request(name, shift_to=date.today())
    response = post(client, signer, SELECT, request)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert topics(response) == rules


def test_rating_is_mirrored_for_the_sandbox(client, signer):
    body = post(client, signer, SELECT, fhir.load_request("acute-uncomplicated", shift_to=date.today())).get_json()
    assert body["systemActions"] == body["extension"]["systemActions"]
    resource = body["systemActions"][0]["resource"]
    rating = {e["url"].rsplit("/", 1)[1]: e for e in resource["extension"]}
    assert rating["pama-rating"]["valueCodeableConcept"]["coding"][0]["code"] == "not-appropriate"
    assert rating["pama-rating-auc-applied"]["valueUri"].endswith("#acute-uncomplicated")
    assert resource["id"] == "example-request-id"


def test_no_criteria_apply_is_rated_without_a_card(client, signer):
    body = post(client, signer, SELECT, fhir.load_request("no-criteria-apply", shift_to=date.today())).get_json()
    assert body["cards"] == []
    ext = {e["url"].rsplit("/", 1)[1]: e for e in body["systemActions"][0]["resource"]["extension"]}
    assert ext["pama-rating"]["valueCodeableConcept"]["coding"][0]["code"] == "no-criteria-apply"


@pytest.fixture
def sandbox(settings, jwks_file, signer):
    """A development-profile app and a signer whose tokens carry the sandbox's `iss` (the test key
    stands in for the sandbox's, whose private half this repository does not hold)."""
    issuer = config.IssuerSettings(iss=config.SANDBOX_ISSUER, jwks_file=jwks_file, any_fhir_server=True)
    app = create_app(replace(settings, profile=config.Profile.DEVELOPMENT, issuers=(issuer,)))
    yield app.test_client(), replace(signer, iss=config.SANDBOX_ISSUER)
    services_of(app).close()


@pytest.mark.parametrize("name", SANDBOX_SHAPES)
def test_what_the_sandbox_really_sends_gets_empty_cards(sandbox, name):
    client, sandbox_signer = sandbox
    response = post(client, sandbox_signer, SELECT, fhir.load_request(name))
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


@pytest.mark.parametrize("name", [n for n in SANDBOX_SHAPES if n != "sandbox-no-draft-orders"])
def test_the_sandboxs_other_odd_shapes_get_empty_cards_from_any_ehr(client, signer, name):
    response = post(client, signer, SELECT, fhir.load_request(name))
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


@pytest.mark.parametrize(("drop", "named"), [
    (["selections", "draftOrders"], "context.selections"),
    (["selections"], "context.selections"),
    (["draftOrders"], "context.draftOrders"),
])
def test_order_select_without_selections_or_draft_orders_is_a_clear_400(client, signer, drop, named):
    """CDS Hooks requires both for order-select; an empty answer would hide a client's bug."""
    request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    for key in drop:
        del request["context"][key]
    response = post(client, signer, SELECT, request)
    assert response.status_code == 400
    issue = response.get_json()["issue"][0]
    assert issue["expression"] == [named]
    assert "required for the order-select hook" in issue["diagnostics"]


def test_order_sign_needs_no_selections(client, signer):
    request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    request["hook"] = "order-sign"
    del request["context"]["selections"]
    assert topics(post(client, signer, SIGN, request)) == ["acute-uncomplicated"]


def test_order_sign_reviews_every_draft_lumbar_mri(client, signer):
    response = post(client, signer, SIGN, fhir.load_request("order-sign-two-orders", shift_to=date.today()))
    assert response.status_code == 200
    assert topics(response) == ["acute-uncomplicated", "acute-uncomplicated", "contrast-choice"]
    rated = [a["resource"]["id"] for a in response.get_json()["systemActions"]]
    assert rated == ["mri-1", "mri-2"]  # not the CBC


def test_order_select_reviews_only_the_selected_order(client, signer):
    request = fhir.load_request("order-sign-two-orders", shift_to=date.today())
    request["hook"] = "order-select"
    request["context"]["selections"] = ["ServiceRequest/mri-2"]
    body = post(client, signer, SELECT, request).get_json()
    assert [a["resource"]["id"] for a in body["systemActions"]] == ["mri-2"]


def test_unknown_prefetch_elements_are_ignored(client, signer):
    request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    request["somethingNew"] = {"x": 1}
    request["context"]["futureField"] = [1, 2]
    request["prefetch"]["extraKey"] = {"resourceType": "Bundle"}
    assert topics(post(client, signer, SELECT, request)) == ["acute-uncomplicated"]


@pytest.mark.parametrize(("mutate", "expression"), [
    (lambda r: r.pop("hookInstance"), "hookInstance"),
    (lambda r: r.update(hook="patient-view"), "hook"),
    (lambda r: r.pop("context"), "context"),
    (lambda r: r.update(context="Patient/1"), "context"),
    (lambda r: r["context"].pop("patientId"), "context.patientId"),
    (lambda r: r["context"].update(draftOrders=[1, 2]), "context.draftOrders"),
    (lambda r: r["context"].update(selections="ServiceRequest/x"), "context.selections"),
    (lambda r: r["context"]["draftOrders"].update(entry=[{"resource": 5}]), "context.draftOrders.entry[0]"),
    (lambda r: r.update(prefetch=[1]), "prefetch"),
    (lambda r: r.update(fhirServer="ftp://x"), "fhirServer"),
])
def test_malformed_requests_get_400_naming_the_field(client, signer, mutate, expression):
    request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    mutate(request)
    response = post(client, signer, SELECT, request)
    assert response.status_code == 400
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [expression]


def test_a_body_that_is_not_json_is_400(client, signer):
    response = post(client, signer, SELECT, b"{not json")
    assert response.status_code == 400
    assert "not valid JSON" in response.get_json()["issue"][0]["diagnostics"]


def test_a_body_that_is_not_an_object_is_400(client, signer):
    assert post(client, signer, SELECT, b"[1,2]").status_code == 400


def test_wrong_content_type_is_415(client, signer):
    response = post(client, signer, SELECT, "hello", content_type="text/plain")
    assert response.status_code == 415
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_unknown_service_is_404(client, signer):
    response = post(client, signer, "/cds-services/patient-greeter", {})
    assert response.status_code == 404


def test_missing_token_is_a_bare_401(client):
    response = client.post(SELECT, json=fhir.load_request("acute-uncomplicated"))
    assert response.status_code == 401
    assert response.get_data() == b""


def test_missing_required_prefetch_without_fhir_server_is_412(client, signer):
    request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    del request["prefetch"]["conditions"]
    del request["fhirServer"]
    response = post(client, signer, SELECT, request)
    assert response.status_code == 412
    outcome = response.get_json()
    assert outcome["issue"][0]["code"] == "incomplete"
    assert "conditions" in outcome["issue"][0]["diagnostics"]


def test_missing_optional_prefetch_still_answers_and_says_so(client, signer):
    request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    del request["prefetch"]["procedures"]
    del request["fhirServer"]
    body = post(client, signer, SELECT, request).get_json()
    assert [c["source"]["topic"]["code"] for c in body["cards"]] == ["acute-uncomplicated"]
    assert "**Not available:** procedures" in body["cards"][0]["detail"]


def test_null_prefetch_key_counts_as_missing(client, signer):
    request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    request["prefetch"]["patient"] = None
    del request["fhirServer"]
    assert post(client, signer, SELECT, request).status_code == 412


def test_prefetch_of_another_patient_is_refused(client, signer):
    request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    request["context"]["patientId"] = "someone-else"
    response = post(client, signer, SELECT, request)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["prefetch.patient"]


def test_fhir_server_outside_the_allowlist_is_never_contacted(client, signer, httpserver):
    request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    del request["prefetch"]["conditions"]
    request["fhirServer"] = httpserver.url_for("/fhir")
    request["fhirAuthorization"] = {"access_token": "secret-token", "token_type": "Bearer", "scope": "patient/*.read", "subject": "x"}
    response = post(client, signer, SELECT, request)
    assert response.status_code == 412
    assert "not one this EHR's issuer is trusted for" in response.get_json()["issue"][0]["diagnostics"]
    assert httpserver.log == []
