"""The vocabulary of the rule table: named, pure predicates over ``Facts``.

``cards/rules.toml`` combines these by name (as business-rules declares variables in code and
combines them in data). Each threshold names its decision-rules.md row. ``READS`` says which facts
each predicate reads: the card leads with the facts that decided it, ``lumbar-mri-cds rules`` prints
them, and the property test adds them.
"""

from __future__ import annotations

from collections.abc import Callable

from service.facts.extract import AGE_CANCER_RISK
from service.facts.extract import Days
from service.facts.model import Contrast
from service.facts.model import Facts
from service.facts.model import Finding as F
from service.facts.model import Modality

Predicate = Callable[[Facts], bool]

# v2 rule 7: weaker risk factors that do not change the rating but are shown as found (ACP-2011
# Table 2 "defer imaging after a trial of therapy"), and every red flag that a rule reads only in
# combination (fever alone, recent infection without fever, immunosuppression without back pain).
WEAKER_RISK_FACTORS: tuple[F, ...] = (
    F.FEVER, F.RECENT_INFECTION, F.IMMUNOSUPPRESSION, F.WEIGHT_LOSS, F.AGE_OVER_50, F.ANKYLOSING_SPONDYLITIS,
    F.PAIN_OVER_ONE_MONTH, F.RECENT_TRAUMA,
    # A high-energy mechanism coded without an injury code: ACR-TRAUMA's question, shown, not deciding.
    F.HIGH_ENERGY_TRAUMA,
    # Not an ACP-2011 factor: a fusion status (Z98.1) the record does not place in the lumbar spine. If
    # it is lumbar, MRI is usually appropriate (ACR V5), so it is shown and the cancel not pre-selected.
    F.FUSION_NOT_LOCATED,
)


def _has(finding: F) -> tuple[Predicate, tuple[F, ...]]:
    """The predicate "this finding is present", and what it reads."""
    return (lambda facts: finding in facts.findings), (finding,)


def _both(a: F, b: F) -> tuple[Predicate, tuple[F, ...]]:
    """The predicate "both findings are present", and what it reads."""
    return (lambda facts: a in facts.findings and b in facts.findings), (a, b)


def _episode_6_weeks_or_more(facts: Facts) -> bool:
    return facts.episode_days is not None and facts.episode_days >= Days.SIX_WEEKS


def _episode_under_6_weeks_or_unknown(facts: Facts) -> bool:
    return facts.episode_days is None or facts.episode_days < Days.SIX_WEEKS


def _persistent_after_care(facts: Facts) -> bool:
    """Rule 6's condition, for rule 5's exception (README "Choices made")."""
    return _episode_6_weeks_or_more(facts) and F.CONSERVATIVE_CARE in facts.findings and F.BACK_PAIN in facts.findings


def _weight_loss_at_50_or_older(facts: Facts) -> bool:
    return F.WEIGHT_LOSS in facts.findings and facts.age is not None and facts.age >= AGE_CANCER_RISK


def _weaker_risk_factor(facts: Facts) -> bool:
    found = facts.findings
    return any(f in found for f in WEAKER_RISK_FACTORS)


# name -> (the predicate, the facts it reads: the card leads with them, `rules` prints them, the
# property test adds them). The episode predicates read the back pain episode.
_TABLE: dict[str, tuple[Predicate, tuple[F, ...]]] = {
    # the episode
    "back_pain_episode": _has(F.BACK_PAIN),
    "episode_6_weeks_or_more": (_episode_6_weeks_or_more, (F.BACK_PAIN,)),
    "episode_under_6_weeks_or_unknown": (_episode_under_6_weeks_or_unknown, (F.BACK_PAIN,)),
    "conservative_care": _has(F.CONSERVATIVE_CARE),
    "persistent_after_conservative_care": (_persistent_after_care, (F.BACK_PAIN, F.CONSERVATIVE_CARE)),
    "order_has_reason": (lambda facts: facts.order.has_reason, ()),
    # rule 1
    "cauda_equina_signs": _has(F.CAUDA_EQUINA),
    "severe_motor_deficit": _has(F.MOTOR_DEFICIT),
    # rule 2
    "malignancy": _has(F.MALIGNANCY),
    "spinal_infection": _has(F.SPINAL_INFECTION),
    "iv_drug_use": _has(F.IV_DRUG_USE),
    "fever_with_recent_infection": _both(F.FEVER, F.RECENT_INFECTION),
    "fever_with_immunosuppression": _both(F.FEVER, F.IMMUNOSUPPRESSION),
    "immunosuppressed_with_back_pain": _both(F.IMMUNOSUPPRESSION, F.BACK_PAIN),
    "weight_loss_at_50_or_older": (_weight_loss_at_50_or_older, (F.WEIGHT_LOSS, F.AGE_OVER_50)),
    # rule 3
    "prior_lumbar_surgery": _has(F.PRIOR_LUMBAR_SURGERY),
    # rule 4
    "osteoporosis": _has(F.OSTEOPOROSIS),
    "long_term_steroids": _has(F.LONG_TERM_STEROIDS),
    "vertebral_fracture": _has(F.VERTEBRAL_FRACTURE),
    "age_over_70": _has(F.AGE_OVER_70),
    "trauma_in_older_patient": _both(F.RECENT_TRAUMA, F.OLDER_AGE),
    "trauma_with_ankylosing_spondylitis": _both(F.RECENT_TRAUMA, F.ANKYLOSING_SPONDYLITIS),
    # rule 5
    "recent_trauma": _has(F.RECENT_TRAUMA),
    "high_energy_trauma": _both(F.RECENT_TRAUMA, F.HIGH_ENERGY_TRAUMA),
    "low_energy_trauma": (lambda facts: F.RECENT_TRAUMA in facts.findings and F.HIGH_ENERGY_TRAUMA not in facts.findings, (F.RECENT_TRAUMA,)),
    "no_high_energy_trauma": (lambda facts: not (F.RECENT_TRAUMA in facts.findings and F.HIGH_ENERGY_TRAUMA in facts.findings), ()),
    # rule 5b
    "prior_imaging_same_modality": _has(F.PRIOR_LUMBAR_IMAGING),
    # rule 7: shown, not deciding
    "weaker_risk_factor": (_weaker_risk_factor, WEAKER_RISK_FACTORS),
    # the ordered study (v2 change 6): which modality it is
    "mri_order": (lambda facts: facts.order.study.modality is Modality.MRI, ()),
    "ct_order": (lambda facts: facts.order.study.modality is Modality.CT, ()),
    "radiography_order": (lambda facts: facts.order.study.modality is Modality.XR, ()),
    "ionizing_order": (lambda facts: facts.order.study.modality is not Modality.MRI, ()),
    # modifiers
    "pregnant": _has(F.PREGNANCY),
    "contrast_study": (lambda facts: facts.order.contrast in (Contrast.WITH, Contrast.WITHOUT_WITH), ()),
    "contrast_only_study": (lambda facts: facts.order.contrast is Contrast.WITH, ()),
    "without_then_with_study": (lambda facts: facts.order.contrast is Contrast.WITHOUT_WITH, ()),
    "without_contrast_study": (lambda facts: facts.order.contrast in (Contrast.WITHOUT, Contrast.UNKNOWN), ()),
}

PREDICATES: dict[str, Predicate] = {name: entry[0] for name, entry in _TABLE.items()}
READS: dict[str, tuple[F, ...]] = {name: entry[1] for name, entry in _TABLE.items()}
