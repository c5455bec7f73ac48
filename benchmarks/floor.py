"""The floor: the least any CDS Hooks service must do per call, served exactly as `serve` serves.

    python benchmarks/floor.py --config CONFIG.toml [--host H] [--port P] [--workers N]

A minimal Flask app under the same gunicorn settings (``service.server.gunicorn_options``) that does
only what no implementation can skip: verify the bearer token with the same library (PyJWT, the
issuer's key from the same JWKS file, the same audience, issuer, required claims and leeway), parse
the same JSON body with the same parser (orjson), and answer ``{"cards": []}``. The service's
throughput divided by this one's is the figure ``benchmarks/load.py`` reports as service/floor.

It reads the service's own configuration file, so both check tokens against the same issuer, key and
audience (``public_base_url`` + path) and a token signed for one is valid for the other.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jwt
import orjson
from flask import Flask
from flask import Response
from flask import request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `service` from this checkout

from service import config  # noqa: E402
from service import server  # noqa: E402
from service.security.jwt import LEEWAY_SECONDS  # noqa: E402  (the service's own claim rules)
from service.security.jwt import REQUIRED_CLAIMS  # noqa: E402

EMPTY = orjson.dumps({"cards": []})


def create_app(settings: config.Settings) -> Flask:
    """The floor app for the first issuer of these settings."""
    issuer = settings.issuers[0]
    if issuer.jwks_file is None:
        raise SystemExit("the floor needs an issuer with a jwks_file")
    keys = {
        jwk["kid"]: jwt.PyJWK(jwk, algorithm=jwk.get("alg"))
        for jwk in json.loads(Path(issuer.jwks_file).read_text())["keys"]
    }
    base = settings.public_base_url or ""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_body_bytes

    @app.post("/cds-services/<service_id>")
    def hook(service_id: str) -> Response:
        token = (request.headers.get("Authorization") or "").partition(" ")[2]
        try:
            key = keys[jwt.get_unverified_header(token)["kid"]]
            jwt.decode(
                token, key, algorithms=[key.algorithm_name], audience=base + request.path, issuer=issuer.iss,
                leeway=LEEWAY_SECONDS, options={"require": REQUIRED_CLAIMS},
            )
        except (jwt.PyJWTError, KeyError):
            return Response(status=401)
        try:
            orjson.loads(request.get_data(cache=False))
        except orjson.JSONDecodeError:
            return Response(status=400)
        return Response(EMPTY, mimetype="application/json")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(b'{"status":"ok"}', mimetype="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the service's configuration file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    settings = config.load_settings(args.config, {})
    options = server.gunicorn_options(settings, host=args.host, port=args.port, workers=args.workers)
    options["proc_name"] = "lumbar-mri-cds-floor"
    server.GunicornApp(lambda: create_app(settings), options, max_request_bytes=server.max_request_bytes(settings),
                       arrival_seconds=server.arrival_seconds(settings)).run()


if __name__ == "__main__":
    main()
