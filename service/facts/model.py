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
    IV_DRUG_USE = "iv_drug_use"                    # v2: a red flag on its own (F1x: "may involve injection")
    RECENT_INFECTION = "recent_infection"          # v2: bacteremia, endocarditis, UTI, skin infection, 90 days
    IMMUNOSUPPRESSION = "immunosuppression"
    WEIGHT_LOSS = "weight_loss"                    # v2: unexplained weight loss, 90 days
    ANKYLOSING_SPONDYLITIS = "ankylosing_spondylitis"  # v2: history counts
    OSTEOPOROSIS = "osteoporosis"
    LONG_TERM_STEROIDS = "long_term_steroids"
    VERTEBRAL_FRACTURE = "vertebral_fracture"
    RECENT_TRAUMA = "recent_trauma"
    HIGH_ENERGY_TRAUMA = "high_energy_trauma"      # v2: transport accident or fall from a height coded
    OLDER_AGE = "older_age"                        # > 65 men, > 75 women (ACP-2011); only with trauma
    AGE_OVER_70 = "age_over_70"                    # v2: fracture risk by age (ACR V6 "elderly individual")
    AGE_OVER_50 = "age_over_50"                    # v2: a weaker risk factor for cancer (ACP-2011)
    PAIN_OVER_ONE_MONTH = "pain_over_one_month"    # v2: episode of 28 days or more (ACP-2011 "failure to improve")
    PRIOR_LUMBAR_SURGERY = "prior_lumbar_surgery"
    FUSION_NOT_LOCATED = "fusion_not_located"      # v2: Z98.1 / M96.0 the record does not place in the lumbar spine
    CONSERVATIVE_CARE = "conservative_care"
    PREGNANCY = "pregnancy"
    PRIOR_LUMBAR_IMAGING = "prior_lumbar_imaging"  # v2: a lumbar study of the ordered modality, 365 days


class Modality(StrEnum):
    """The kind of lumbar spine study (decision-rules.md "What is reviewed"; CT and XR: issue 13)."""

    MRI = "mri"
    CT = "ct"
    XR = "xr"


class Contrast(StrEnum):
    """Which contrast option a lumbar study asks for (valuesets.json `contrast` of its code)."""

    WITHOUT = "without"            # MRI 72148, CT 72131
    WITH = "with"                  # MRI 72149, CT 72132
    WITHOUT_WITH = "without-with"  # MRI 72158, CT 72133
    UNKNOWN = "unknown"            # e.g. LOINC 24968-0 "MR Lumbar spine"


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    reference: str             # "Condition/123": a resource id, never a name
    on: date | None            # onset / effective / performed / authored date the fact rests on
    text: str                  # what the resource says, e.g. "M54.50 Low back pain" (shown on the card only)


@dataclass(frozen=True, slots=True, kw_only=True)
class Study:
    """The study a draft order asks for, read once from its code (decision-rules.md "What is reviewed").

    Everything past ``facts/`` asks this value which study was ordered (its modality, contrast and body
    region), never a code: the rating table in cards/ratings.toml is keyed by ``column``.
    """

    modality: Modality
    contrast: Contrast
    region: str                # the value set's body region, e.g. "lumbar"
    system: str                # the coding that made it a reviewed study
    code: str
    display: str | None

    @property
    def column(self) -> str:
        """The study's column of the rating table: ``mri-without`` .. ``ct-without-with``, ``xr``.

        Radiography has one column whatever the views; a code that does not say its contrast (LOINC
        "MR Lumbar spine") is read as the modality's study without contrast (README "Choices made").
        """
        if self.modality is Modality.XR:
            return Modality.XR.value
        contrast = Contrast.WITHOUT if self.contrast is Contrast.UNKNOWN else self.contrast
        return f"{self.modality.value}-{contrast.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Order:
    reference: str             # "ServiceRequest/abc"
    resource: Mapping          # the draft ServiceRequest as sent (JSON), for update/delete suggestions
    study: Study               # what it orders
    priority: str | None       # routine | urgent | asap | stat
    has_reason: bool           # any reasonCode coding or reasonReference

    @property
    def system(self) -> str:
        """The code system of the ordered study's coding."""
        return self.study.system

    @property
    def code(self) -> str:
        """The ordered study's code."""
        return self.study.code

    @property
    def display(self) -> str | None:
        """The display the order gives its code, if any."""
        return self.study.display

    @property
    def contrast(self) -> Contrast:
        """The ordered study's contrast option."""
        return self.study.contrast


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
