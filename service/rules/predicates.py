"""The vocabulary of the rule table: named, pure predicates over ``Facts``.

``cards/rules.toml`` combines these by name (as business-rules declares variables in code and
combines them in data). Each threshold names its decision-rules.md row.
"""

from __future__ import annotations

from collections.abc import Callable

from service.facts.model import Contrast
from service.facts.model import Facts
from service.facts.model import Finding as F

Predicate = Callable[[Facts], bool]

# decision-rules.md rules 6-8: six weeks (42 days) separates acute from persistent pain.
SIX_WEEKS_DAYS = 42


def _has(finding: F) -> Predicate:
    return lambda facts: facts.has(finding)


def _both(a: F, b: F) -> Predicate:
    return lambda facts: facts.has(a) and facts.has(b)


def _episode_6_weeks_or_more(facts: Facts) -> bool:
    return facts.episode_days is not None and facts.episode_days >= SIX_WEEKS_DAYS


def _episode_under_6_weeks_or_unknown(facts: Facts) -> bool:
    return facts.episode_days is None or facts.episode_days < SIX_WEEKS_DAYS


PREDICATES: dict[str, Predicate] = {
    # the episode
    "back_pain_episode": _has(F.BACK_PAIN),
    "episode_6_weeks_or_more": _episode_6_weeks_or_more,
    "episode_under_6_weeks_or_unknown": _episode_under_6_weeks_or_unknown,
    "conservative_care": _has(F.CONSERVATIVE_CARE),
    "order_has_reason": lambda facts: facts.order.has_reason,
    # rule 1
    "cauda_equina_signs": _has(F.CAUDA_EQUINA),
    "severe_motor_deficit": _has(F.MOTOR_DEFICIT),
    # rule 2
    "malignancy": _has(F.MALIGNANCY),
    "spinal_infection": _has(F.SPINAL_INFECTION),
    "fever_with_infection_risk": _both(F.FEVER, F.INFECTION_RISK),
    "fever_with_immunosuppression": _both(F.FEVER, F.IMMUNOSUPPRESSION),
    "immunosuppressed_with_back_pain": _both(F.IMMUNOSUPPRESSION, F.BACK_PAIN),
    # rule 3
    "prior_lumbar_surgery": _has(F.PRIOR_LUMBAR_SURGERY),
    # rule 4
    "osteoporosis": _has(F.OSTEOPOROSIS),
    "long_term_steroids": _has(F.LONG_TERM_STEROIDS),
    "vertebral_fracture": _has(F.VERTEBRAL_FRACTURE),
    "trauma_in_older_patient": _both(F.RECENT_TRAUMA, F.OLDER_AGE),
    # rule 5
    "recent_trauma": _has(F.RECENT_TRAUMA),
    # modifiers
    "pregnant": _has(F.PREGNANCY),
    "prior_lumbar_mri": _has(F.PRIOR_LUMBAR_MRI),
    "contrast_study": lambda facts: facts.order.contrast in (Contrast.WITH, Contrast.WITHOUT_WITH),
    "contrast_only_study": lambda facts: facts.order.contrast is Contrast.WITH,
    "without_then_with_study": lambda facts: facts.order.contrast is Contrast.WITHOUT_WITH,
}
