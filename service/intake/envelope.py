"""The hook request envelope: parse untrusted JSON into a ``HookRequest`` or say what is wrong.

Unknown elements are ignored (CDS Hooks 2.0). Shapes the CDS Hooks sandbox really sends (a
draftOrders Bundle without `type`, DSTU2 MedicationOrder drafts) are accepted; the pipeline decides
later that they need no card.

An order-select call must carry ``context.selections`` and ``context.draftOrders`` (both required
for that hook): without them it is a 400 naming the missing field, because a silent empty answer
hides a client's serialization bug. The one client known to send such a call on purpose is the CDS
Hooks sandbox (one of its screens sends neither); the caller passes ``sandbox_quirks=True`` for it
(its tokens, development profile only), and that call is answered ``{"cards": []}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from service.config import LimitsSettings
from service.errors import InvalidRequest

_DEFAULT_LIMITS = LimitsSettings()


@dataclass(frozen=True, slots=True, kw_only=True)
class FhirAuthorization:
    access_token: str          # never logged, sent only to an allowed fhirServer
    token_type: str
    scope: str | None
    subject: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class HookRequest:
    hook: str
    hook_instance: str
    fhir_server: str | None
    fhir_authorization: FhirAuthorization | None
    patient_id: str
    user_id: str | None
    encounter_id: str | None
    selections: tuple[str, ...] | None    # None: not sent (order-sign, or the sandbox's odd path)
    draft_orders: tuple[Mapping[str, Any], ...]
    prefetch: Mapping[str, Any]


def parse_json(body: bytes, limits: LimitsSettings = _DEFAULT_LIMITS) -> Any:
    """Decode a JSON body; InvalidRequest when it is not JSON or exceeds the limits.

    The limits bound the work an untrusted request can cause: nesting depth, FHIR resources
    (every JSON object with a ``resourceType``, across prefetch and draftOrders, Bundles and
    contained resources included) and the length of any string, keys included.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc.msg} at position {exc.pos})") from None
    check_limits(data, len(body), limits)
    return data


def check_limits(data: Any, size: int, limits: LimitsSettings) -> None:
    """InvalidRequest when decoded JSON of ``size`` bytes exceeds the limits (see ``parse_json``)."""
    _check_shape(data, limits.max_json_depth, limits.max_resources)
    # A decoded string never has more characters than its encoded bytes: a body no longer than the
    # string limit (the usual hook call) needs no string check.
    if size > limits.max_string_length:
        _check_strings(data, limits.max_string_length)


def _check_shape(data: Any, max_depth: int, max_resources: int) -> None:
    """Depth and resource count in one breadth-first pass; InvalidRequest at the first limit passed.

    This runs on every hook call, so it is written for speed (about 0.15 ms for a 60 kB request):
    a level of containers at a time, ``type() is`` rather than ``isinstance``, no recursion.
    """
    level: list[Any] = [data] if type(data) is dict or type(data) is list else []
    depth = 0
    resources = 0
    while level:
        depth += 1
        if depth > max_depth:
            raise InvalidRequest(f"the JSON nests deeper than {max_depth} levels")
        below: list[Any] = []
        add = below.append
        for container in level:
            if type(container) is dict:
                if "resourceType" in container:
                    resources += 1
                container = container.values()
            for child in container:
                if type(child) is dict or type(child) is list:
                    add(child)
        level = below
    if resources > max_resources:
        raise InvalidRequest(f"the request carries more than {max_resources} FHIR resources")


def _check_strings(data: Any, limit: int) -> None:
    """InvalidRequest when any string, object keys included, is longer than ``limit`` characters."""
    if type(data) is str and len(data) > limit:
        raise InvalidRequest(f"a JSON string is longer than {limit} characters")
    stack = [data] if type(data) is dict or type(data) is list else []
    while stack:
        container = stack.pop()
        if type(container) is dict:
            if container and max(map(len, container)) > limit:
                raise InvalidRequest(f"a JSON object key is longer than {limit} characters")
            container = container.values()
        for child in container:
            if type(child) is str:
                if len(child) > limit:
                    raise InvalidRequest(f"a JSON string is longer than {limit} characters")
            elif type(child) is dict or type(child) is list:
                stack.append(child)


# Context fields a hook requires beyond patientId (CDS Hooks order-select: selections and draftOrders).
REQUIRED_CONTEXT = {"order-select": ("selections", "draftOrders")}


def parse_request(data: Any, *, hook: str, sandbox_quirks: bool = False) -> HookRequest:
    """Check the envelope of a call to a service of this hook and return it typed (``sandbox_quirks``:
    tolerate the CDS Hooks sandbox's order-select call without selections and draftOrders)."""
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object (a CDS Hooks request)")
    got = _string(data, "hook", required=True)
    if got != hook:
        raise InvalidRequest(f"this service answers the '{hook}' hook, not '{got}'", expression="hook")
    context = data.get("context")
    if not isinstance(context, dict):
        raise InvalidRequest("context must be a JSON object", expression="context")
    prefetch = data.get("prefetch", {})
    if prefetch is None:
        prefetch = {}
    if not isinstance(prefetch, dict):
        raise InvalidRequest("prefetch must be a JSON object", expression="prefetch")
    hook_instance = _string(data, "hookInstance", required=True)
    patient_id = _string(context, "patientId", required=True, at="context.")
    missing = [key for key in REQUIRED_CONTEXT.get(hook, ()) if context.get(key) is None]
    if missing and not sandbox_quirks:
        raise InvalidRequest(
            f"context.{missing[0]} is required for the {hook} hook "
            f"(missing: {', '.join('context.' + m for m in missing)})",
            expression=f"context.{missing[0]}",
        )
    return HookRequest(
        hook=got,
        hook_instance=hook_instance,
        fhir_server=_fhir_server(data),
        fhir_authorization=_fhir_authorization(data.get("fhirAuthorization")),
        patient_id=patient_id,
        user_id=_string(context, "userId", at="context."),
        encounter_id=_string(context, "encounterId", at="context."),
        selections=_selections(context.get("selections")),
        draft_orders=_draft_orders(context.get("draftOrders")),
        prefetch=prefetch,
    )


def _string(obj: Mapping[str, Any], key: str, *, required: bool = False, at: str = "") -> Any:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        what = "is required and must be a non-empty string" if value is None else "must be a non-empty string"
        raise InvalidRequest(f"{at}{key} {what}", expression=at + key)
    return value


def _fhir_server(data: Mapping[str, Any]) -> str | None:
    server = _string(data, "fhirServer")
    if server is not None and not server.startswith(("https://", "http://")):
        raise InvalidRequest("fhirServer must be an absolute http(s) URL", expression="fhirServer")
    return server.rstrip("/") if server else None


def _fhir_authorization(value: Any) -> FhirAuthorization | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("fhirAuthorization must be a JSON object", expression="fhirAuthorization")
    token = _string(value, "access_token", required=True, at="fhirAuthorization.")
    token_type = _string(value, "token_type", at="fhirAuthorization.") or "Bearer"
    if token_type.lower() != "bearer":
        raise InvalidRequest("fhirAuthorization.token_type must be 'Bearer'", expression="fhirAuthorization.token_type")
    return FhirAuthorization(
        access_token=token,
        token_type=token_type,
        scope=_string(value, "scope", at="fhirAuthorization."),
        subject=_string(value, "subject", at="fhirAuthorization."),
    )


def _selections(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest("context.selections must be an array of strings", expression="context.selections")
    return tuple(value)


def _draft_orders(value: Any) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidRequest("context.draftOrders must be a FHIR Bundle object", expression="context.draftOrders")
    entries = value.get("entry", [])
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise InvalidRequest("context.draftOrders.entry must be an array", expression="context.draftOrders.entry")
    resources = []
    for n, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise InvalidRequest(
                f"context.draftOrders.entry[{n}] must be an object with a resource",
                expression=f"context.draftOrders.entry[{n}]",
            )
        resources.append(resource)
    return tuple(resources)
