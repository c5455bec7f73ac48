"""``GET /openapi.json``: the OpenAPI 3 document of the HTTP interface.

The document is kept in the repository beside this module (``service/web/openapi.json``, installed as
package data) and checked by tests/web/test_fuzz.py, which fuzzes the app against it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson
from flask import Flask
from flask import Response

DOCUMENT = "openapi.json"


def load_document() -> dict[str, Any]:
    """The OpenAPI document as shipped."""
    return orjson.loads(resources.files("service.web").joinpath(DOCUMENT).read_bytes())


def register(app: Flask, public_base_url: str | None = None) -> None:
    """Serve the document, naming this deployment's public base URL as its server when known."""
    document = load_document()
    if public_base_url:
        document["servers"] = [{"url": public_base_url}]
    body = orjson.dumps(document)

    def openapi() -> Response:
        """GET /openapi.json (no token: it describes the interface, not patients)."""
        return Response(body, mimetype="application/json")

    app.add_url_rule("/openapi.json", "openapi", openapi, methods=["GET"])
