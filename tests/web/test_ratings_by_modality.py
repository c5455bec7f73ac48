"""decision-rules.md v2, "Ratings by modality", row by row and study by study, over HTTP.

For each row, a fixture patient whose record matches that rule gets a draft order of each study (MRI
72148/72158/72149, CT 72131/72132/72133, radiography 72100), once with full prefetch and once with an
empty prefetch and the record on a real FHIR server (Medplum, in memory). The expected ACR ratings are
transcribed here from decision-rules.md, not read from cards/ratings.toml, so that the data file is
held to the clinical reference.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa

from service.app import services_of
from service.store import schema
from tests import fhir
from tests.fhirserver.runner import serving_stories
from tests.web.test_fetch_missing import fetching_client  # noqa: F401 (a fixture: the app reading fhir_base)

CODES = ("72148", "72158", "72149", "72131", "72132", "72133", "72100")
MODALITY = {"72148": "MRI", "72158": "MRI", "72149": "MRI", "72131": "CT", "72132": "CT", "72133": "CT", "72100": "radiograph"}
RADIOGRAPHY = "72100"
# rule -> (fixture story whose record matches it, ACR rating of each study of CODES), decision-rules.md v2.
ROWS: dict[str, tuple[str, str]] = {
    "cauda-equina": ("cauda-equina", "UA UA UNA MBA UNA UNA UNA"),
    "suspected-cancer-infection": ("suspected-cancer-infection", "UA UA UNA MBA MBA UNA MBA"),
    "prior-lumbar-surgery": ("prior-lumbar-surgery", "UA UA UNA MBA UNA UNA UA"),
    "fracture-risk": ("fracture-risk", "UA MBA UNA UA UNA UNA UA"),
    "trauma-ct-first/low-energy": ("trauma-ct-first", "UNA UNA UNA MBA UNA UNA UA"),
    "trauma-ct-first/high-energy": ("trauma-high-energy", "UNA UNA UNA UA UNA UNA MBA"),
    "repeat-imaging/mri": ("repeat-imaging", "UNA UNA UNA - - - -"),      # a prior lumbar MRI: MRI orders
    "repeat-imaging/ct": ("ct-repeat-imaging", "- - - UNA UNA UNA -"),    # a prior lumbar CT: CT orders
    "persistent-after-conservative-care": ("persistent-after-conservative-care", "UA MBA UNA MBA UNA UNA MBA"),
    "acute-uncomplicated": ("acute-uncomplicated", "UNA UNA UNA UNA UNA UNA UNA"),
    "no-conservative-trial": ("no-conservative-trial", "UNA UNA UNA UNA UNA UNA UNA"),
}
WORDS = {"UA": "usually appropriate", "MBA": "may be appropriate", "UNA": "usually not appropriate"}
PAMA = {"UA": "appropriate", "MBA": "appropriate", "UNA": "not-appropriate"}
TOKEN = "fhir-access-token-not-for-logs"


def cases() -> list[Any]:
    out = []
    for row, (story, ratings) in ROWS.items():
        for code, acr in zip(CODES, ratings.split(), strict=True):
            if acr != "-":
                out.append(pytest.param(row, story, code, acr, id=f"{row}-{code}"))
    return out


@pytest.fixture(scope="module")
def fhir_base():
    with serving_stories(sorted({story for story, _ in ROWS.values()})) as base:
        yield base


def request_for(story: str, code: str) -> dict[str, Any]:
    """The story's request, its draft order replaced by an order of this study (CPT)."""
    request = fhir.load_request(story, shift_to=date.today())
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    order["code"] = {"coding": [{"system": fhir.CPT, "code": code}]}
    return request


def answer(client, signer, request: dict[str, Any]) -> dict[str, Any]:
    path = "/cds-services/" + request["hook"]
    response = client.post(path, json=request, headers=signer.headers(path))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def topic(card: dict[str, Any]) -> str:
    return card["source"]["topic"]["code"]


def ordered_codes(card: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(code, priority) of the order each suggestion of the card would update it to."""
    return [(a["resource"]["code"]["coding"][0]["code"], a["resource"].get("priority"))
            for s in card.get("suggestions", []) for a in s["actions"] if a["type"] == "update" and "code" in a["resource"]]


def check(body: dict[str, Any], row: str, code: str, acr: str) -> None:
    rule = row.split("/")[0]
    story_ratings = dict(zip(CODES, ROWS[row][1].split(), strict=True))
    usually = [c for c, r in story_ratings.items() if r == "UA" and c != code]
    rating_cards = [c for c in body["cards"] if topic(c) == rule]
    actions = body.get("systemActions", [])
    if code == RADIOGRAPHY:
        # PAMA covers advanced imaging only: never a rating; a card only where radiography is UNA.
        assert actions == [] and "extension" not in body
        assert len(rating_cards) == (1 if acr == "UNA" else 0), [topic(c) for c in body["cards"]]
    else:
        assert len(actions) == 1
        extensions = {e["url"]: e for e in actions[0]["resource"]["extension"]}
        rating = extensions["http://fhir.org/argonaut/Extension/pama-rating"]["valueCodeableConcept"]["coding"][0]["code"]
        assert rating == PAMA[acr]
        assert extensions["http://fhir.org/argonaut/Extension/pama-rating-auc-applied"]["valueUri"].endswith(f"#{rule}")
        assert len(rating_cards) == 1
    if not rating_cards:
        return
    card = rating_cards[0]
    expected_indicator = "critical" if rule == "cauda-equina" else "warning" if acr == "UNA" else "info"
    assert card["indicator"] == expected_indicator
    assert f"**{WORDS[acr]}**" in card["detail"]
    if rule != "cauda-equina":  # rule 1 keeps "Emergent lumbar MRI indicated" whatever was ordered
        assert MODALITY[code] in card["summary"], card["summary"]
    offered = ordered_codes(card)
    if acr != "UA" and usually:
        # The rating card offers a usually appropriate study instead (rule 1: made STAT too).
        assert any(c in usually for c, _ in offered), offered
        if rule == "cauda-equina":
            assert all(priority == "stat" for c, priority in offered if c in usually)
    if rule == "cauda-equina":
        plain_stat = [s for s in card.get("suggestions", []) if s["label"].startswith("Make this")]
        assert bool(plain_stat) == (acr == "UA")  # plain STAT only for a usually appropriate study


@pytest.mark.parametrize(("row", "story", "code", "acr"), cases())
def test_rating_and_cards_with_prefetch(client, signer, row, story, code, acr):
    check(answer(client, signer, request_for(story, code)), row, code, acr)


@pytest.mark.parametrize(("row", "story", "code", "acr"), cases())
def test_rating_and_cards_fetched_from_the_fhir_server(fetching_client, signer, fhir_base, row, story, code, acr):
    request = request_for(story, code)
    request["prefetch"] = {}
    request["fhirServer"] = fhir_base
    request["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "scope": "patient/*.read", "subject": "cds"}
    check(answer(fetching_client, signer, request), row, code, acr)


@pytest.mark.parametrize(("story", "code", "rule"), [
    pytest.param("ct-repeat-imaging", "72148", "acute-uncomplicated", id="prior-ct-is-not-a-repeat-for-mri"),
    pytest.param("repeat-imaging", "72131", "acute-uncomplicated", id="prior-mri-is-not-a-repeat-for-ct"),
    pytest.param("ct-repeat-imaging", "72100", "acute-uncomplicated", id="radiography-is-never-a-repeat"),
])
def test_a_repeat_is_a_prior_study_of_the_same_modality(client, signer, story, code, rule):
    body = answer(client, signer, request_for(story, code))
    assert [topic(c) for c in body["cards"]] == [rule]


def test_ct_and_mri_selected_together_in_one_order_sign_call(app, client, signer):
    """Each order is rated by its own study; the store keeps the modality of each card."""
    pat = fhir.patient("pat-both", birth="1958-07-02", gender="female")
    resources = [
        fhir.condition("Z85.3", onset="2019-02-01", clinical="resolved", display="Personal history of malignant neoplasm of breast",
                       pid="pat-both"),
        fhir.condition("M54.50", onset=(date.today().replace(day=1)).isoformat(), pid="pat-both"),
    ]
    lbp = fhir.coding("279039007", "Low back pain (finding)")
    orders = [fhir.imaging_order("72158", reasons=[lbp], oid="mri-1", pid="pat-both"),
              fhir.imaging_order("72133", reasons=[lbp], oid="ct-1", pid="pat-both")]
    request = fhir.hook_request(orders, pat=pat, resources=resources, hook="order-sign")
    body = answer(client, signer, request)
    ratings = {a["resource"]["id"]: a["resource"]["extension"][-3]["valueCodeableConcept"]["coding"][0]["code"]
               for a in body["systemActions"]}
    assert ratings == {"mri-1": "appropriate", "ct-1": "not-appropriate"}  # V7: MRI 72158 UA, CT 72133 UNA
    summaries = [c["summary"] for c in body["cards"] if topic(c) == "suspected-cancer-infection"]
    assert summaries[0].startswith("Lumbar MRI appropriate") and summaries[1].startswith("Lumbar CT without and with contrast")
    assert "contrast-choice" in [topic(c) for c in body["cards"]]  # CT without contrast (72131) is rated higher in V7
    services = services_of(app)
    services.recorder.flush()
    with services.engine.connect() as conn:
        stored = dict(conn.execute(sa.select(schema.cards.c.card_uuid, schema.cards.c.modality)).all())
    assert {stored[c["uuid"]] for c in body["cards"]} == {"mri", "ct"}
    assert [stored[c["uuid"]] for c in body["cards"] if topic(c) == "suspected-cancer-infection"] == ["mri", "ct"]
