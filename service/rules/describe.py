"""The decision model as a clinical reviewer reads it: ``lumbar-mri-cds rules [--json]``.

For each fact: what it is read from (resources, value-set concepts with their code systems, code counts
and sources, from ``ValueSets.describe()``) and its window; then the rule table in order and the
modifiers, each with the facts its predicates read. Pure: the value sets and table are arguments.
"""

from __future__ import annotations

from typing import Any

from service.facts.codes import ValueSets
from service.facts.extract import fact_reads
from service.rules.predicates import READS
from service.rules.table import RuleTable
from service.rules.table import Cell
from service.rules.table import When

SYSTEM_NAMES = {
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD-10",
    "http://snomed.info/sct": "SNOMED CT",
    "http://loinc.org": "LOINC",
    "http://www.ama-assn.org/go/cpt": "CPT",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://www.whocc.no/atc": "ATC",
}


def describe_model(vs: ValueSets, table: RuleTable) -> dict[str, Any]:
    """The facts, rules and modifiers as plain data (the --json shape)."""
    summaries = {s.name: s for s in vs.describe()}
    facts: dict[str, dict[str, Any]] = {}
    for read in fact_reads():
        label = table.findings.get(read.finding.value)
        entry = facts.setdefault(read.finding.value, {
            "label": label.label if label else read.finding.value,
            "looked_for": label.looked_for if label else "",
            "red_flag": bool(label and label.red_flag),
            "reads": [],
        })
        entry["reads"].append({
            "resources": read.resources,
            "window": read.window,
            "concepts": [_concept(summaries, name) for name in read.concepts],
        })
    return {
        "facts": facts,
        "rules": [
            {"order": n, "id": r.id, "rating": r.rating, "card": r.card, "when": _when(r.when)}
            for n, r in enumerate(table.rules, start=1)
        ],
        "modifiers": [
            {"id": m.id, "when": _when(m.when), "only_after": list(m.rules), "never_after": list(m.not_rules),
             "unless": list(m.unless), "replace_with": m.replace_with}
            for m in table.modifiers
        ],
        "studies": [
            {"column": s.column, "label": s.label, "code": s.code, "display": s.display, "rated": s.rated}
            for s in table.studies.values()
        ],
        "ratings": [
            {"rule": row.rule, "variant": row.variant, "source": row.source, "source_detail": row.source_detail,
             "studies": {column: _cell(cell) for column, cell in row.cells.items()}}
            for row in table.ratings.values()
        ],
    }


def _cell(cell: Cell) -> str:
    """A cell in words: "UA", or "UA if high_energy_trauma, else MBA"."""
    choices = [f"{rating} if {name}" for name, rating in cell.choices]
    return ", ".join([*choices, f"else {cell.otherwise}"]) if choices else cell.otherwise


def _concept(summaries: dict[str, Any], name: str) -> dict[str, Any]:
    summary = summaries.get(name)
    if summary is None:
        return {"name": name, "codes": {}, "sources": [], "missing": True}
    return {
        "name": name,
        "description": summary.description,
        "codes": {SYSTEM_NAMES.get(system, system): n for system, n in summary.codes.items()},
        "sources": [
            {"system": SYSTEM_NAMES.get(s.system, s.system), "title": s.title, "reference": s.reference,
             "release": s.release, "codes": s.codes}
            for s in summary.sources
        ],
    }


def _when(when: When) -> dict[str, list[dict[str, Any]]]:
    return {
        part: [{"predicate": name, "reads": [f.value for f in READS[name]]} for name in names]
        for part, names in (("all", when.all), ("any", when.any), ("none", when.none))
        if names
    }


def render_text(model: dict[str, Any]) -> str:
    """The model as text a clinical reviewer reads top to bottom."""
    lines = ["FACTS (decision-rules.md, \"The facts the rules read\")", ""]
    for key, fact in model["facts"].items():
        flag = " [red flag]" if fact["red_flag"] else ""
        lines.append(f"{key}: {fact['label']}{flag}")
        for read in fact["reads"]:
            lines.append(f"  reads {read['resources']}; window: {read['window']}")
            for concept in read["concepts"]:
                counts = ", ".join(f"{system} {n}" for system, n in concept["codes"].items()) or "no codes"
                lines.append(f"    {concept['name']}: {counts}")
                for source in concept["sources"]:
                    lines.append(f"      {source['system']} ({source['codes']}): {source['title']}, {source['release']}"
                                 f"{' - ' + _short(source['reference']) if source['reference'] else ''}")
        lines.append("")
    lines += ["RULES, in order (the first that matches rates the order)", ""]
    for rule in model["rules"]:
        rating = "no rating" if rule["rating"] == "none" else rule["rating"]
        lines.append(f"{rule['order']:>2}. {rule['id']}  ->  {rating}{'' if rule['card'] else ' (no card)'}")
        lines += _when_lines(rule["when"])
    lines += ["", "MODIFIERS (extra cards beside the rating card)", ""]
    for m in model["modifiers"]:
        scope = (f" only after {', '.join(m['only_after'])}" if m["only_after"] else "") + (
            f" never after {', '.join(m['never_after'])}" if m["never_after"] else "")
        lines.append(f"- {m['id']}{scope}{'; suggests ' + m['replace_with'] if m['replace_with'] else ''}")
        lines += _when_lines(m["when"])
    lines += ["", "RATINGS BY MODALITY (the ordered study's ACR rating in the rule's variant decides the rating;",
              "UA and MBA: appropriate, UNA: not appropriate; a study marked (no rating) gets cards only)", ""]
    lines.append("studies: " + "; ".join(f"{s['column']} = {s['display']} ({s['code']}){'' if s['rated'] else ' (no rating)'}"
                                         for s in model["studies"]))
    for row in model["ratings"]:
        lines.append(f"- {row['rule']}: {row['variant']} [{row['source']}: {_short(row['source_detail'])}]")
        lines.append("      " + "; ".join(f"{column} {rating}" for column, rating in row["studies"].items()))
    return "\n".join(lines)


def _when_lines(when: dict[str, list[dict[str, Any]]]) -> list[str]:
    words = {"all": "all of", "any": "any of", "none": "none of"}
    return [
        f"      {words[part]}: " + "; ".join(f"{p['predicate']} ({', '.join(p['reads']) or 'the order'})" for p in preds)
        for part, preds in when.items()
    ]


def _short(text: str, limit: int = 110) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
