"""Print what the app answers over HTTP for every fixture and a few error cases, UUIDs and timings blanked.

For checking that a restructuring changes no behaviour: run it before and after and diff the output.

    python -m tests.http_answers > answers.txt   # from the repository root

It builds a production-profile app on a temporary SQLite file with a test issuer (real ES384 tokens,
as the tests do), posts each ``fixtures/requests/*.json`` moved to today, gives feedback on the first
card, and prints status, headers, body, the request log line and the /metrics counts of each call.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from datetime import date
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from service import config
from service.app import create_app
from service.app import services_of
from service.web import observability
from tests import fhir
from tests.conftest import BASE_URL
from tests.conftest import ISSUER
from tests.conftest import KID
from tests.conftest import Signer

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")
_VOLATILE = re.compile(r'"(latency_ms|time)": ?[^,}]+|_created(\{[^}]*\})? [0-9.e+]+|_sum\{[^}]*\} [0-9.e+-]+|_bucket\{[^}]*\} [0-9.e+]+')


class Lines(logging.Handler):
    """Keeps the request log lines, as the JSON formatter writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == observability.REQUEST_LOGGER:
            self.lines.append(observability.JsonFormatter().format(record))


def blank(text: str) -> str:
    return _VOLATILE.sub(lambda m: m.group(0).split(" ")[0].split(":")[0] + " ~", _UUID.sub("UUID", text))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        key = ec.generate_private_key(ec.SECP384R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk.update({"kid": KID, "alg": "ES384", "use": "sig"})
        jwks = Path(tmp) / "jwks.json"
        jwks.write_text(json.dumps({"keys": [jwk]}))
        settings = config.Settings(
            profile=config.Profile.PRODUCTION, public_base_url=BASE_URL, database_url=f"sqlite:///{tmp}/t.db",
            patient_hash_salt="salt",
            issuers=(config.IssuerSettings(iss=ISSUER, jwks_file=jwks, fhir_servers=("http://127.0.0.1:9/fhir",)),),
            cors=config.CorsSettings(allow_origins=("https://sandbox.cds-hooks.org",)),
        )
        app = create_app(settings)
        lines = Lines()
        logging.getLogger(observability.REQUEST_LOGGER).addHandler(lines)
        logging.getLogger(observability.REQUEST_LOGGER).setLevel(logging.INFO)
        client, signer = app.test_client(), Signer(key=key)

        def show(method: str, path: str, body: bytes | None = None, *, token: bool = True, **headers: str) -> dict:
            if token:
                headers.update(signer.headers(path))
            answer = client.open(path, method=method, data=body, headers=headers,
                                 content_type="application/json" if body is not None else None)
            kept = sorted((k, v) for k, v in answer.headers.items() if k not in ("Date", "X-Request-Id"))
            print(f"== {method} {path} -> {answer.status_code}")
            print(blank(json.dumps(kept)))
            print(blank(answer.get_data(as_text=True)))
            services_of(app).recorder.flush()
            print(blank("\n".join(lines.lines)))
            lines.lines.clear()
            return answer.get_json(silent=True, force=True) or {}

        show("GET", "/cds-services", token=False)
        first_card = None
        for path in sorted((fhir.FIXTURES / "requests").glob("*.json")):
            request = fhir.load_request(path.stem, shift_to=date.today())
            service = "order-sign" if request["hook"] == "order-sign" else "order-select"
            print(f"# fixture {path.stem}")
            answer = show("POST", f"/cds-services/{service}", json.dumps(request).encode())
            if first_card is None and answer.get("cards"):
                first_card = (service, answer["cards"][0]["uuid"])
        service, card = first_card
        item = {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-26T10:00:00Z",
                "overrideReason": {"userComment": "x"}}
        show("POST", f"/cds-services/{service}/feedback", json.dumps({"feedback": [item]}).encode())
        show("POST", f"/cds-services/{service}/feedback", b"{not json")
        show("POST", f"/cds-services/{service}/feedback", json.dumps({"feedback": [{"card": card}]}).encode())
        show("POST", "/cds-services/nope/feedback", b"{}")
        show("POST", "/cds-services/nope", b"{}")
        show("POST", "/cds-services/order-select", b"{not json")
        show("POST", "/cds-services/order-select", b"{}", token=False)
        show("GET", "/cds-services/order-select")
        show("OPTIONS", "/cds-services/order-select", token=False, Origin="https://sandbox.cds-hooks.org")
        show("GET", "/healthz", token=False)
        show("GET", "/readyz", token=False)
        show("GET", "/openapi.json", token=False)
        show("GET", "/nowhere", token=False)
        print("\n".join(sorted(line for line in blank(client.get("/metrics").get_data(as_text=True)).splitlines()
                               if not line.startswith("#"))))
        services_of(app).close()


if __name__ == "__main__":
    main()
