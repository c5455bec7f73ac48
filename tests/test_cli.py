"""The `lumbar-mri-cds` command: evaluate on every fixture, exit codes."""

from __future__ import annotations

import json

import pytest

from service import cli
from tests import fhir

AS_OF = fhir.AS_OF.isoformat()

# fixture -> a line `evaluate` must print (the verdict of the rule the story is about)
STORIES = [
    ("cauda-equina", "rule: cauda-equina"),
    ("suspected-cancer-infection", "rule: suspected-cancer-infection"),
    ("fever-infection-risk", "rule: suspected-cancer-infection"),
    ("prior-lumbar-surgery", "rule: prior-lumbar-surgery"),
    ("fracture-risk", "rule: fracture-risk"),
    ("trauma-ct-first", "rule: trauma-ct-first"),
    ("persistent-after-conservative-care", "rule: persistent-after-conservative-care"),
    ("acute-uncomplicated", "rule: acute-uncomplicated"),
    ("no-conservative-trial", "rule: no-conservative-trial"),
    ("no-indication", "rule: no-indication"),
    ("no-criteria-apply", "Rating: ServiceRequest/example-request-id = no-criteria-apply"),
    ("pregnancy-contrast", "rule: pregnancy-contrast"),
    ("contrast-choice", "Change to MRI lumbar spine without contrast (72148)"),
    ("repeat-imaging", "rule: repeat-imaging"),
    ("acute-weaker-risk-factors", "found, does not by itself support immediate imaging"),
    ("trauma-high-energy", "* suggestion: Change to CT lumbar spine without contrast"),
    ("cauda-equina-contrast", "* suggestion: Make STAT and change to MRI lumbar spine without contrast (72148)"),
    ("child", "No cards (no card for this order)."),
    ("sandbox-empty-order", "No cards (no lumbar imaging order to review)."),
    # v2 change 6: lumbar CT and radiography orders
    ("ct-acute-uncomplicated", "[WARNING] Lumbar CT not recommended: acute low back pain without red flags (< 6 weeks)"),
    ("ct-pregnancy", "[WARNING] Pregnant patient: MRI without contrast is the imaging of choice in pregnancy, not lumbar CT"),
    ("ct-cauda-equina", "* suggestion: Make STAT and change to MRI lumbar spine without contrast (72148)"),
    ("xr-acute-uncomplicated", "No rating recorded: PAMA appropriate use criteria cover advanced imaging (MRI, CT) only."),
    ("ct-repeat-imaging", "[WARNING] Lumbar CT already done on 2026-07-14"),
]


def run(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize(("name", "line"), STORIES)
def test_evaluate_prints_the_card_the_rule_promises(capsys, name, line):
    code, out, _ = run(capsys, "evaluate", str(fhir.FIXTURES / "requests" / f"{name}.json"), "--today", AS_OF)
    assert code == 0
    assert line.lower() in out.lower()


def test_evaluate_json_is_the_raw_response(capsys):
    code, out, _ = run(capsys, "evaluate", str(fhir.FIXTURES / "requests" / "acute-uncomplicated.json"), "--today", AS_OF, "--json")
    assert code == 0
    body = json.loads(out)
    assert body["cards"][0]["source"]["topic"]["code"] == "acute-uncomplicated"
    assert body["systemActions"] == body["extension"]["systemActions"]


def test_evaluate_a_malformed_request_exits_3(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hook": "order-select", "context": {}}')
    code, _, err = run(capsys, "evaluate", str(bad))
    assert code == 3
    assert "hookInstance" in err


def test_evaluate_the_sandboxs_call_without_selections_exits_3(capsys):
    """Offline there is no caller to make an exception for: the spec's rule holds (test_hooks.py has
    the sandbox's own tokens get {"cards": []})."""
    code, _, err = run(capsys, "evaluate", str(fhir.FIXTURES / "requests" / "sandbox-no-draft-orders.json"))
    assert code == 3
    assert "context.selections is required for the order-select hook" in err


def test_evaluate_without_required_prefetch_exits_4(capsys, tmp_path):
    request = fhir.load_request("acute-uncomplicated")
    del request["prefetch"]["conditions"]
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(request))
    code, _, err = run(capsys, "evaluate", str(path))
    assert code == 4
    assert "conditions" in err


def test_a_bad_configuration_exits_2(capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("profile = 'staging'\n")
    code, _, err = run(capsys, "serve", "--config", str(config))
    assert code == 2
    assert "profile must be" in err


def test_help_exits_0(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "evaluate" in out and "serve" in out and "call" in out


def test_rules_prints_each_fact_and_the_rule_table_in_order(capsys):
    code, out, _ = run(capsys, "rules")
    assert code == 0
    facts, rules = out.split("RULES, in order", 1)
    # each fact: what it reads, its window, code systems with counts, and the source of each list
    assert "recent_infection: Recent infection [red flag]" in facts
    assert "window: within 90 days" in facts
    assert "long_term_steroids" in facts and "MedicationStatement" in facts and "glucocorticoid_medication: " in facts
    assert "ICD-10-CM " in facts and "SNOMED CT " in facts and "RxNorm " in facts
    order = [line.split(".", 1)[1].split("->")[0].strip() for line in rules.splitlines() if line[:3].strip().rstrip(".").isdigit()]
    assert order[:6] == ["cauda-equina", "suspected-cancer-infection", "prior-lumbar-surgery", "fracture-risk", "trauma-ct-first", "repeat-imaging"]
    assert "trauma_with_ankylosing_spondylitis (recent_trauma, ankylosing_spondylitis)" in rules


def test_rules_json(capsys):
    code, out, _ = run(capsys, "rules", "--json")
    assert code == 0
    model = json.loads(out)
    steroids = model["facts"]["long_term_steroids"]["reads"]
    medication = next(r for r in steroids if "MedicationStatement" in r["resources"])
    concept = medication["concepts"][0]
    assert concept["name"] == "glucocorticoid_medication" and concept["codes"]["RxNorm"] > 0
    assert all(s["release"] and s["title"] for s in concept["sources"])
    assert [r["id"] for r in model["rules"]][-1] == "no-criteria-apply"
    # v2 change 6: the rating table, each row with its source; radiography is never rated
    rows = {r["rule"]: r for r in model["ratings"]}
    assert rows["cauda-equina"]["studies"]["ct-without"] == "MBA" and rows["cauda-equina"]["source"] == "ACR-LBP"
    assert rows["trauma-ct-first"]["studies"]["ct-without"] == "UA if high_energy_trauma, else MBA"
    assert [s["rated"] for s in model["studies"] if s["column"] == "xr"] == [False]


def test_rules_prints_the_ratings_by_modality(capsys):
    code, out, _ = run(capsys, "rules")
    assert code == 0
    ratings = out.split("RATINGS BY MODALITY", 1)[1]
    assert "xr = X-ray lumbar spine, 2 or 3 views (72100) (no rating)" in ratings
    assert "mri-without UA; mri-without-with MBA; mri-with UNA; ct-without UA;" in ratings  # fracture-risk (V6)
