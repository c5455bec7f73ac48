"""The decision model: typed facts about one patient and one order, built from FHIR.

Everything past ``intake/`` reads these dataclasses, never raw JSON. Each finding carries the
resources that support it (``Evidence``), so a card can say *why*. See
shared/clinical/decision-rules.md, "The facts the rules read".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum


class Finding(StrEnum):
    """A fact of the decision model; the value is the key used in cards/findings.toml."""

    BACK_PAIN = "back_pain"                        # LBP, radiculopathy, sciatica or stenosis: the episode
    RADICULOPATHY = "radiculopathy"                # not a red flag by itself (ACP-2007 rec 4)
    CAUDA_EQUINA = "cauda_equina"
    MOTOR_DEFICIT = "motor_deficit"
    MALIGNANCY = "malignancy"
    SPINAL_INFECTION = "spinal_infection"
    FEVER = "fever"
    INFECTION_RISK = "infection_risk"
    IMMUNOSUPPRESSION = "immunosuppression"
    OSTEOPOROSIS = "osteoporosis"
    LONG_TERM_STEROIDS = "long_term_steroids"
    VERTEBRAL_FRACTURE = "vertebral_fracture"
    RECENT_TRAUMA = "recent_trauma"
    OLDER_AGE = "older_age"                        # > 65 men, > 75 women (ACP-2011); only with trauma
    PRIOR_LUMBAR_SURGERY = "prior_lumbar_surgery"
    CONSERVATIVE_CARE = "conservative_care"
    PREGNANCY = "pregnancy"
    PRIOR_LUMBAR_MRI = "prior_lumbar_mri"


class Contrast(StrEnum):
    """Which lumbar MRI study an order asks for (codes.json `order_mri_lumbar`)."""

    WITHOUT = "without"            # CPT 72148
    WITH = "with"                  # CPT 72149
    WITHOUT_WITH = "without-with"  # CPT 72158
    UNKNOWN = "unknown"            # e.g. LOINC 24968-0 "MR Lumbar spine"


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    reference: str             # "Condition/123": a resource id, never a name
    on: date | None            # onset / effective / performed / authored date the fact rests on
    text: str                  # what the resource says, e.g. "M54.50 Low back pain" (shown on the card only)


@dataclass(frozen=True, slots=True, kw_only=True)
class Order:
    reference: str             # "ServiceRequest/abc"
    resource: Mapping          # the draft ServiceRequest as sent (JSON), for update/delete suggestions
    system: str                # the coding that made it a lumbar MRI
    code: str
    display: str | None
    contrast: Contrast
    priority: str | None       # routine | urgent | asap | stat
    has_reason: bool           # any reasonCode coding or reasonReference


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    today: date
    age: int | None                                   # whole years on the day of the call
    sex: str | None                                   # Patient.gender
    order: Order
    findings: Mapping[Finding, tuple[Evidence, ...]]  # only findings that are present
    episode_start: date | None                        # earliest onset of the current episode
    episode_days: int | None                          # None = duration unknown (decision-rules.md)
    unavailable: tuple[str, ...] = ()                 # prefetch keys the service could not read

    def has(self, finding: Finding) -> bool:
        """Whether the finding is present."""
        return finding in self.findings
