"""Build service/facts/terminology/snomed.json: per concept, the SNOMED CT codes it matches by hierarchy.

    python tools/valuesets/build_snomed.py \\
        --checkout cqframework/ecqm-content-qicore-2024=PATH \\
        --checkout cqframework/ecqm-content-r4=PATH \\
        --checkout HL7/fhir-ips=PATH \\
        --checkout bvdh/dicom-terminology-in-fhir=PATH

Each PATH is a git clone of that public repository (https://github.com/<owner>/<name>); the script reads
the files at the commits pinned in SOURCES with ``git show``, so the output depends on nothing else.

What a list is (each list in the output says which, in its ``filter``):

- **A published expansion, whole**: a VSAC value set as expanded for the eCQMs (NLM, SNOMED CT US
  Edition), whose definition is the named concept and its descendants (e.g. "Ankylosing Spondylitis").
- **A published expansion, filtered by display**: where the published value set is wider than the fact
  (e.g. "All Primary and Secondary Cancer" minus basal and squamous cell carcinoma of skin), the
  filter is a regular expression on the display, written beside the list.
- **Codes found in published expansions**: where no published value set is the fact, the codes whose
  display names the fact, taken from every expansion of a source (the eCQM value sets, the SNOMED
  International IPS free set, DICOM PS3.16 context groups). These are the descendants *found* in
  published lists, not a complete closure of the hierarchy: a code no published list holds is not
  here (a FHIR terminology server can fill such gaps at run time; see README).

No code is typed in by hand: every code and display comes from a source file. A code already listed
for the concept by an earlier list is not repeated. Codes are checked with the SNOMED CT Verhoeff
check digit.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common import TERMINOLOGY
from common import write_json

from service.facts.codes import SNOMED_FILE
from service.facts.codes import snomed_check_digit_ok

SCT = "http://snomed.info/sct"


@dataclass(frozen=True)
class Source:
    """A public repository at a pinned commit."""

    repo: str
    commit: str
    what: str       # what the repository publishes


SOURCES: dict[str, Source] = {
    "ecqm": Source("cqframework/ecqm-content-qicore-2024", "9ebd48ffebf2ed2489f3904cc8393ebf8979bfc9",
                   "VSAC value set expansions used by the 2024 QI-Core eCQMs (NLM VSAC; SNOMED CT US Edition)"),
    "ecqm-r4": Source("cqframework/ecqm-content-r4", "04f5c4919ee8a56e24484c3269f74d47b03e3d75",
                      "VSAC value set expansions used by the FHIR R4 eCQMs (NLM VSAC; SNOMED CT US Edition)"),
    "ips": Source("HL7/fhir-ips", "57c3299fe9759f9be7c7b6976ce61f57ef9a7bd1",
                  "SNOMED International IPS Terminology (IPS free set, CC BY 4.0), as expanded in the HL7 IPS IG"),
    "dicom": Source("bvdh/dicom-terminology-in-fhir", "9f098270ff7180e43a8df1a2eef0130b72231d5b",
                    "DICOM PS3.16 context groups (CIDs) as FHIR value sets"),
    "cds4cpm": Source("cqframework/cds4cpm", "e73c2d2953aaad08f09428a6e70d5a07c5c7db31",
                      "VSAC value set expansions used by the CDS for Chronic Pain Management IG (NLM VSAC; RxNorm)"),
}
ECQM_DIR = "input/vocabulary/valueset/external"
IPS_PROBLEMS = "input/fsh/valuesets/ProblemsSnomedCtIpsFreeSet.fsh"
IPS_PROCEDURES = "input/fsh/valuesets/ProceduresSnomedCtIpsFreeSet.fsh"


@dataclass(frozen=True)
class Pull:
    """One list of a concept: a file of a source (or every value set of it), optionally filtered by display."""

    concept: str
    source: str                 # key of SOURCES
    path: str | None            # one value set file; None = every value set expansion of the source
    include: str | None = None  # regex a display must match (case-insensitive); None = all SNOMED CT codes
    exclude: str | None = None  # regex a display must not match
    why: str = ""               # the filter in words, for a reviewer


def vsac(oid: str, source: str = "ecqm") -> str:
    """Path of a VSAC value set in the eCQM content repositories."""
    return f"{ECQM_DIR}/valueset-{oid}.json"


def dicom(cid: str) -> str:
    return f"input/fsh/ValueSet-dicom-cid-{cid}.fsh"


# Skin cancer the rules leave out (ICD-10-CM C44 and Z85.82): basal and squamous cell carcinoma of skin and
# any other skin malignancy that is not a melanoma, Merkel cell carcinoma, Kaposi sarcoma, lymphoma or sarcoma.
SKIN_NMSC = (
    r"basal cell|rodent ulcer|keratinocyt|bowen"
    r"|^(?!.*(melanoma|merkel|kaposi|lymphoma|sarcoma|leuk|metasta|secondary|bone, connective)).*(\bskin\b|cutaneous)"
    r"|squamous cell carcinoma of (the )?(right |left )?(ear|external ear|auricle|eyelid|upper limb|lower limb|upper arm"
    r"|forearm|hand|finger|thigh|lower leg|foot|trunk|back|chest wall|abdominal wall|scalp|face|cheek|external nose"
    r"|forehead|temple|neck)\b"
)
INFECTION_NOT = (
    r"non-?infective|interstitial|radiation|eosinophilic|chemical|libman|marantic|rheumatic|non-?bacterial|history of"
    r"|family|familial|screening|neonatal|newborn|puerperal|abortion|pregnan|maternal|obstetric|labou?r\b|deliver"
    r"|miscarriage|eyelid|orbit|pharyn|laryn|vocal|tonsil|parametri|pelvic cellulitis|epilepsy|vasculitis|hematuria"
)
TRAUMA_NOT = (
    r"sprain|strain|history of|risk|without current|pathologic|osteoporo|stress|insufficiency|cervical|family|sequela"
    r"|late effect|\bold\b|malunion|nonunion|non-union|delayed union|surgery|procedure|repair|femur|femoral|hip\b|knee"
    r"|tibia|fibula|ankle|foot|toe|patella|skull|head|brain|eye|face|neck|arm\b|hand|wrist|finger|shoulder|elbow|leg\b"
    r"|thigh|radiation|pressure|burn|postprocedural|surgical wound|diabetic|ulcer|neoplasm|deliver|labou?r\b|pregnan"
    r"|puerper|obstetric|abortion|miscarriage|termination|membranes|uter|aneurysm|non-?traumatic|rhabdomyolysis|insect"
    r"|bite|blister|arteriovenous|perine|vagin|vulv|urethra|cervix|infected"
)
POOLS: dict[str, tuple[str, str | None]] = {  # where "codes found in published expansions" are looked for
    "ecqm": ("ecqm", None), "ecqm-r4": ("ecqm-r4", None),
    "ips": ("ips", IPS_PROBLEMS), "ips-procedures": ("ips", IPS_PROCEDURES),
}
HISTORY_OF_CANCER = r"^(personal )?history of .*(malignan|cancer|carcinoma|lymphoma|leuk(a)?emia|melanoma|sarcoma|myeloma)"
MOTOR = r"foot drop|drop foot|monoplegia of (the )?(dominant |nondominant )?lower limb|\bparaplegia\b"
MOTOR_NOT = r"late effect|sequela|syndrome|hereditary|familial|autosomal|intellectual|gait|type \d"
SPINAL_INFECTION = (
    r"osteomyelitis of (vertebra|.*spine)|discitis|infection of intervertebral disc|(epidural|intraspinal|spinal cord) .*abscess"
    r"|abscess (in|of) .*(epidural|spinal)|intraspinal .*abscess|tuberculosis of (vertebral column|.*spine)"
    r"|brodie's abscess of .*spine|spondylodiscitis"
)
FEVER = r"^fever\b|pyrexia|hyperpyrexia|febrile neutropenia"
FEVER_NOT = (r"seizure|convuls|puerperal|maternal|labou?r|rheumatic|typhoid|yellow|scarlet|dengue|h(a)?emorrhagic|q fever"
             r"|spotted|relapsing|valley|periodic|enteric|familial")
IV_DRUGS = (r"intravenous (cocaine|nondependent|drug|opioid|heroin|amphetamine|substance)|injecting drug|injection drug"
            r"|drug use.*intravenous")
INFECTION = (r"sepsis|septic(a)?emia|bacter(a)?emia|infective endocarditis|bacterial endocarditis|acute endocarditis"
             r"|subacute endocarditis|urinary tract infection|pyelonephritis|acute cystitis|cellulitis|cutaneous abscess"
             r"|abscess of skin|furuncle|carbuncle")
WEIGHT_LOSS = r"(unintentional|unexplained|abnormal) weight loss"
LUMBAR_SURGERY = (
    r"(lumbar|lumbosacral|L[1-5]).*(laminectomy|laminotomy|hemilaminectomy|discectomy|diskectomy|fusion|arthrodesis"
    r"|decompression|excision of lamina|foraminotomy|facetectomy|disc prosthesis|intervertebral disc|fixation)"
    r"|(laminectomy|laminotomy|hemilaminectomy|discectomy|diskectomy|fusion|arthrodesis|decompression|excision of lamina"
    r"|foraminotomy|facetectomy|fixation).*(lumbar|lumbosacral)"
)
LUMBAR_SURGERY_NOT = r"injection|block|puncture|an(a)?esthe|drain|radiograph|imaging|biopsy|\(disorder\)|\(finding\)|cervical|thoracic vertebra\b"
LOW_BACK_PAIN = (r"low back pain|lumbago|backache|lumbar (spondylosis|strain|sprain)|lumbosacral (strain|sprain)"
                 r"|pain (of|in) (the )?lower back|degeneration of lumbar intervertebral disc|lumbar disc degeneration")
LOW_BACK_PAIN_NOT = r"sciatica|radicul|myelopathy|psychogenic|neoplasm|history of|family|radiating|cauda equina|pregnan"
RADICULOPATHY = (
    r"sciatica|(lumbar|lumbosacral) radiculopathy|radiculopathy.*(lumbar|lumbosacral)|spinal stenosis of lumbar"
    r"|lumbar (spinal )?stenosis|stenosis of lumbar|prolapsed lumbar|lumbar disc.*(displacement|herniation|prolapse)"
    r"|herniat.*lumbar|lumbar nerve root (compression|lesion)|compression of lumbar nerve root"
)
RADICULOPATHY_NOT = r"cervical|thoracic|history of|family|cauda equina|injury|avulsion|traction|contusion|diabet"


def found(concept: str, where: tuple[str, ...], include: str, exclude: str | None, why: str) -> tuple[Pull, ...]:
    """The same display filter over several sources: the descendants found in their published expansions."""
    return tuple(Pull(concept, *POOLS[w], include=include, exclude=exclude, why=why) for w in where)


PULLS: tuple[Pull, ...] = (
    # malignancy: ICD C00-C96 minus C44, Z85 minus Z85.82; SNOMED malignant neoplastic disease and descendants,
    # minus skin cancer as ICD-10-CM leaves it out, plus history of malignant neoplasm.
    Pull("malignancy", "ecqm", vsac("2.16.840.1.113762.1.4.1111.161"), exclude=SKIN_NMSC,
         why="whole value set minus skin cancer other than melanoma, Merkel cell, Kaposi, lymphoma and sarcoma (display; the ICD-10-CM C44 exclusion)"),
    *found("malignancy", ("ips", "ecqm"), HISTORY_OF_CANCER, SKIN_NMSC + r"|family history",
           "history of malignant neoplasm (display 'History of ... malignant/cancer/carcinoma/lymphoma/...'), minus skin cancer as above"),
    # severe or progressive motor deficit: foot drop, monoplegia of a lower limb, paraplegia
    *found("motor_deficit", ("ecqm", "ips"), MOTOR, MOTOR_NOT,
           "foot drop, monoplegia of lower limb, paraplegia (display); not stroke sequelae or hereditary syndromes"),
    # cauda equina signs
    Pull("cauda_equina", "ecqm", vsac("2.16.840.1.113883.3.464.1003.114.12.1012"),
         include=r"cauda equina|saddle", exclude=r"neoplasm",
         why="CMS166 'Neurologic impairment': its cauda equina syndrome, lesion and injury codes and saddle numbness (display), not neoplasms"),
    Pull("cauda_equina", "ecqm", vsac("2.16.840.1.113762.1.4.1164.52"), why="whole value set (retention of urine)"),
    *found("cauda_equina", ("ips",),
           r"retention of urine|urinary retention|incontinence of f(a)?eces|f(a)?ecal incontinence|saddle (anesthesia|anaesthesia|numbness)|cauda equina",
           r"neoplasm", "retention of urine, fecal incontinence, saddle anesthesia, cauda equina (display)"),
    # spinal infection
    *found("spinal_infection", ("ecqm", "ecqm-r4", "ips"), SPINAL_INFECTION, None,
           "vertebral osteomyelitis, discitis, spinal epidural/intraspinal abscess, spinal tuberculosis (display)"),
    # fever
    *found("fever", ("ips", "ecqm"), FEVER, FEVER_NOT,
           "fever, pyrexia, hyperpyrexia (display); not named infectious fevers or febrile seizures"),
    # injection drug use
    *found("iv_drug_use", ("ecqm", "ecqm-r4", "ips"), IV_DRUGS, r"thrombosis|catheter|route|therapy",
           "intravenous (injection) drug use or abuse findings (display)"),
    # recent infection (R78.81, A40-A41, I33, N10-N12, N30.0, N39.0, L02, L03)
    *found("recent_infection", ("ips", "ecqm"), INFECTION, INFECTION_NOT,
           "sepsis, bacteremia, infective endocarditis, urinary tract infection, pyelonephritis, acute cystitis, cellulitis, skin abscess (display); not obstetric or mucosal"),
    # immunosuppression
    Pull("immunosuppression", "ecqm", vsac("2.16.840.1.113883.3.464.1003.120.12.1003"), why="whole value set (HIV)"),
    Pull("immunosuppression", "ecqm", vsac("2.16.840.1.113883.3.666.5.1940"),
         include=r"immunodeficien|human immunodeficiency|immunosuppress",
         why="'Immunocompromised Conditions': immunodeficiency and HIV codes only (its lymphomas and leukemias are malignancy)"),
    *found("immunosuppression", ("ips",),
           r"immunodeficien|immunosuppress|^history of .*transplant|transplant recipient|transplanted organ",
           r"harvesting|donor|cornea|skin|exposure", "immunodeficiency, immunosuppression, history of organ transplant (display)"),
    # unintentional weight loss (448765001 and descendants)
    *found("weight_loss", ("ecqm", "ips"), WEIGHT_LOSS, None,
           "unintentional, unexplained or abnormal weight loss (display); not weight loss in general"),
    # ankylosing spondylitis (9631008 and descendants)
    Pull("ankylosing_spondylitis", "ecqm", vsac("2.16.840.1.113883.3.464.1003.113.12.1045"), why="whole value set"),
    # fracture risk
    Pull("osteoporosis", "ecqm", vsac("2.16.840.1.113883.3.464.1003.113.12.1038"), why="whole value set"),
    Pull("osteoporosis", "ecqm", vsac("2.16.840.1.113883.3.464.1003.113.12.1050"), why="whole value set"),
    Pull("vertebral_fracture", "ecqm", vsac("2.16.840.1.113883.3.464.1003.113.12.1050"),
         include=r"vertebra|vertebral|spine|spinal",
         exclude=r"cervical|sacr|coccy",
         why="'Osteoporosis With Current Fracture': its vertebral fractures (display), not cervical or sacral"),
    *found("vertebral_fracture", ("ecqm",),
           r"fracture of (the )?(thoracic|lumbar) (vertebra|spine)|fracture of vertebra|fracture of vertebral column|(thoracic|lumbar) vertebra.*fracture|collapse of .*vertebra|vertebral (compression )?fracture|compression fracture of .*vertebra",
           r"cervical|sacr|coccy|history of|risk|family|without current|stress",
           "fractures of thoracic or lumbar vertebrae, vertebral collapse (display)"),
    *found("trauma", ("ecqm",),
           r"(fracture|dislocation|subluxation|injury|contusion|laceration|crush|wound|rupture|trauma).*(thora|lumbar|abdom|pelvi|lower back|back|spine|spinal|vertebra|rib\b|ribs|sternum|sacrum|coccyx|pubi|ilium|iliac|ischium|acetabul|kidney|spleen|liver|bladder|cauda equina)",
           TRAUMA_NOT,
           "injuries and fractures of the thorax, abdomen, lower back, lumbar spine and pelvis (display); not sprains/strains, pathological or old fractures, obstetric injuries, nor injuries elsewhere"),
    # prior lumbar surgery (procedures)
    *found("prior_lumbar_surgery", ("ecqm", "ips-procedures"), LUMBAR_SURGERY, LUMBAR_SURGERY_NOT,
           "lumbar spine decompression, discectomy, fusion and fixation procedures (display)"),
    # conservative care
    Pull("physical_therapy", "ecqm", vsac("2.16.840.1.113883.3.526.3.1022"), why="whole value set (SNOMED CT part; CPT codes are curated)"),
    *found("physical_therapy", ("ips-procedures",), r"physiotherap|physical therap", r"referral|declined|refused|not indicated",
           "physiotherapy / physical therapy procedures (display)"),
    # pregnancy
    Pull("pregnancy", "ecqm", vsac("2.16.840.1.113883.3.526.3.378"), why="whole value set (SNOMED CT part)"),
    # the back pain episode
    *found("low_back_pain", ("ecqm", "ips"), LOW_BACK_PAIN, LOW_BACK_PAIN_NOT,
           "low back pain, lumbago, lumbar spondylosis, lumbar disc degeneration, lumbar strain (display)"),
    *found("radiculopathy_stenosis", ("ecqm", "ips"), RADICULOPATHY, RADICULOPATHY_NOT,
           "sciatica, lumbar radiculopathy, lumbar spinal stenosis, lumbar disc herniation (display)"),
    # bodySite: lumbar spine structures (DICOM anatomic regions, vertebrae, disc levels)
    Pull("lumbar_body_site", "dicom", dicom("4031-CommonAnatomicRegion"), include=r"lumb",
         why="DICOM CID 4031 Common Anatomic Region: lumbar, lumbo-sacral and thoraco-lumbar spine (display)"),
    Pull("lumbar_body_site", "dicom", dicom("4-AnatomicRegion"),
         include=r"lumb", exclude=r"^(left|right) lumbar region",
         why="DICOM CID 4 Anatomic Region: lumbar region (display); not the abdominal left/right lumbar regions"),
    Pull("lumbar_body_site", "dicom", dicom("7603-Vertebra"), include=r"^L[1-5] vertebra",
         why="DICOM CID 7603 Vertebra: L1-L5"),
    Pull("lumbar_body_site", "dicom", dicom("1003-AnatomicalReferenceBasisSpine"), include=r"L[1-5]/(L[1-5]|S1)",
         why="DICOM CID 1003: lumbar intervertebral disc levels"),
)


# --- reading the sources ------------------------------------------------------------------------------


class Checkouts:
    """git clones of the sources, read at their pinned commits."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths

    def _git(self, key: str, *args: str) -> str:
        source = SOURCES[key]
        if source.repo not in self.paths:
            raise SystemExit(f"give --checkout {source.repo}=PATH (a git clone of https://github.com/{source.repo})")
        out = subprocess.run(["git", "-C", str(self.paths[source.repo]), *args], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{source.repo}: git {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def read(self, key: str, path: str) -> str:
        return self._git(key, "show", f"{SOURCES[key].commit}:{path}")

    def value_set_paths(self, key: str) -> list[str]:
        listing = self._git(key, "ls-tree", "-r", "--name-only", SOURCES[key].commit, "--", ECQM_DIR)
        return sorted(p for p in listing.splitlines() if p.endswith(".json"))


@dataclass
class ValueSetFile:
    """SNOMED CT codes of one published list, with what names and dates it."""

    title: str
    reference: str
    release: str
    codes: dict[str, str]
    sct_versions: tuple[str, ...] = ()


def read_fhir_json(text: str, where: str) -> ValueSetFile | None:
    """A FHIR ValueSet with an expansion (None for other resources, or one without SNOMED CT codes)."""
    doc = json.loads(text)
    if doc.get("resourceType") != "ValueSet":
        return None
    contains = list(_contains(doc.get("expansion", {}).get("contains", [])))
    codes = {c["code"]: c.get("display", "") for c in contains if c.get("system") == SCT}
    if not codes:
        return None
    sct_versions = sorted({c.get("version", "") for c in contains if c.get("system") == SCT} - {""})
    expansion = doc["expansion"].get("timestamp", "")[:10]
    release = f"value set version {doc.get('version', '?')}, expansion {expansion or '?'}, SNOMED CT US Edition {_span(sct_versions)}"
    return ValueSetFile(str(doc.get("title") or doc.get("name")), f"{doc.get('url')} ({where})", release, codes,
                        tuple(_edition(v) for v in sct_versions))


def _edition(version: str) -> str:
    """'http://snomed.info/sct/731000124108/version/20230901' or '2023-09' -> '2023-09'."""
    m = re.search(r"(\d{4})-?(\d{2})(?:\d{2})?$", version)
    return f"{m.group(1)}-{m.group(2)}" if m else version


def _span(versions: set[str] | list[str]) -> str:
    """The editions named, as 'first to last' (or the one)."""
    eds = sorted({_edition(v) for v in versions})
    if not eds:
        return "(version not stated)"
    return eds[0] if len(eds) == 1 else f"{eds[0]} to {eds[-1]}"


def _contains(items: list[dict]) -> Iterator[dict]:
    for item in items:
        yield item
        yield from _contains(item.get("contains", []))


def read_fsh(text: str, where: str) -> ValueSetFile:
    """SNOMED CT codes of a FHIR Shorthand ValueSet: an IPS expansion or DICOM's inline concepts."""
    codes: dict[str, str] = {}
    pending: str | None = None
    for line in text.splitlines():
        m = re.search(r"expansion\.contains\[[^\]]*\]\.code = #(\d+)", line)
        if m:
            pending = m.group(1)
            continue
        m = re.search(r'expansion\.contains\[[^\]]*\]\.display = "(.*)"\s*$', line)
        if m and pending:
            codes[pending] = m.group(1)
            pending = None
            continue
        m = re.match(r'\*\s+http://snomed\.info/sct#(\d+)\s+(?://)?"([^"]*)"', line)
        if m:
            codes[m.group(1)] = m.group(2)
    title = _fsh_field(text, "title") or _fsh_field(text, "Title") or where
    version = _fsh_field(text, "version") or "?"
    sct = re.search(r'expansion\.parameter\.valueUri = "([^"]*)"', text)
    expansion = _fsh_field(text, "expansion.timestamp")
    release = f"version {version}" + (f", expansion {expansion[:10]}" if expansion else "") + (f", {sct.group(1)}" if sct else "")
    ident = _fsh_field(text, "identifier.value")
    return ValueSetFile(title, f"{ident + ' ' if ident else ''}({where})", release, codes)


def _fsh_field(text: str, name: str) -> str | None:
    m = re.search(rf'^\*?\s*\^?{re.escape(name)}\s*=\s*"([^"]*)"', text, re.M) or re.search(rf'^{name}:\s*"([^"]*)"', text, re.M)
    return m.group(1) if m else None


def load(checkouts: Checkouts, key: str, path: str) -> ValueSetFile | None:
    where = f"{SOURCES[key].repo}@{SOURCES[key].commit[:7]} {path}"
    text = checkouts.read(key, path)
    return read_fsh(text, where) if path.endswith(".fsh") else read_fhir_json(text, where)


def pool(checkouts: Checkouts, key: str, cache: dict[str, ValueSetFile]) -> ValueSetFile:
    """Every SNOMED CT code of every value set expansion of an eCQM source."""
    if key in cache:
        return cache[key]
    codes: dict[str, str] = {}
    versions: set[str] = set()
    for path in checkouts.value_set_paths(key):
        vs = load(checkouts, key, path)
        if vs is not None:
            for code, display in vs.codes.items():
                codes.setdefault(code, display)
            versions.update(vs.sct_versions)
    source = SOURCES[key]
    cache[key] = ValueSetFile(
        f"codes found in the {source.what}",
        f"https://github.com/{source.repo} ({source.repo}@{source.commit[:7]} {ECQM_DIR}/*.json)",
        f"SNOMED CT US Edition {_span(versions)} (the versions the VSAC expansions name)", codes)
    return cache[key]


# --- checks and output --------------------------------------------------------------------------------

def select(vs: ValueSetFile, pull: Pull) -> dict[str, str]:
    """The codes of a list that pass the pull's display filter."""
    inc = re.compile(pull.include, re.I) if pull.include else None
    exc = re.compile(pull.exclude, re.I) if pull.exclude else None
    return {
        code: display for code, display in vs.codes.items()
        if (inc is None or inc.search(display)) and not (exc and exc.search(display))
    }


def build(checkouts: Checkouts) -> list[dict]:
    """Every pull, in order, without codes an earlier list of the same concept already holds."""
    cache: dict[str, ValueSetFile] = {}
    seen: dict[str, set[str]] = {}
    lists: list[dict] = []
    for pull in PULLS:
        vs = pool(checkouts, pull.source, cache) if pull.path is None else load(checkouts, pull.source, pull.path)
        if vs is None:
            raise SystemExit(f"{pull.source} {pull.path}: no SNOMED CT expansion")
        have = seen.setdefault(pull.concept, set())
        codes = {c: _display(d) for c, d in sorted(select(vs, pull).items()) if c not in have}
        bad = [c for c in codes if not snomed_check_digit_ok(c)]
        if bad:
            raise SystemExit(f"{pull.concept}: codes failing the SNOMED CT check digit: {bad}")
        if not codes:
            print(f"  {pull.concept}: nothing new from {vs.title!r} ({pull.why})")
            continue
        have.update(codes)
        lists.append({
            "concept": pull.concept, "title": vs.title, "reference": vs.reference, "release": vs.release,
            "filter": pull.why or "whole value set", "include": pull.include, "exclude": pull.exclude, "codes": codes,
        })
        print(f"  {pull.concept}: {len(codes)} from {vs.title!r}")
    return lists


def _display(display: str) -> str:
    """The display without its semantic tag ('Fever (finding)' -> 'Fever'), as cards show it."""
    return re.sub(r"\s+\((disorder|finding|situation|procedure|body structure|regime/therapy|morphologic abnormality|event)\)$", "", display)


def main() -> None:
    """Parse --checkout arguments, build the lists, write snomed.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", default=[], metavar="OWNER/NAME=PATH",
                        help="a git clone of a source repository (repeat for each)")
    args = parser.parse_args()
    paths = {}
    for item in args.checkout:
        repo, _, path = item.partition("=")
        paths[repo] = Path(path)
    lists = build(Checkouts(paths))
    TERMINOLOGY.mkdir(exist_ok=True)
    write_json(TERMINOLOGY / SNOMED_FILE, {
        "version": 1,
        "built_by": "tools/valuesets/build_snomed.py",
        "sources": {k: {"repository": f"https://github.com/{s.repo}", "commit": s.commit, "what": s.what} for k, s in SOURCES.items()},
        "lists": lists,
    })
    total = len({(entry["concept"], c) for entry in lists for c in entry["codes"]})
    print(f"{len(lists)} lists, {total} (concept, SNOMED CT code) pairs, {len({c for e in lists for c in e['codes']})} distinct codes")


if __name__ == "__main__":
    main()
