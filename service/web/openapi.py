"""The OpenAPI 3 document of the HTTP interface, served at ``GET /openapi.json`` (web/operations.py).

The document is kept in the repository beside this module (``service/web/openapi.json``, installed as
package data) and checked by tests/web/test_fuzz.py, which fuzzes the app against it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson

DOCUMENT = "openapi.json"


def load_document() -> dict[str, Any]:
    """The OpenAPI document as shipped."""
    return orjson.loads(resources.files("service.web").joinpath(DOCUMENT).read_bytes())


def document_body(public_base_url: str | None = None) -> bytes:
    """The document as served: naming this deployment's public base URL as its server when known."""
    document = load_document()
    if public_base_url:
        document["servers"] = [{"url": public_base_url}]
    return orjson.dumps(document)
