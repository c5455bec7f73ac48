# lumbar-mri-cds: the CDS Hooks service under gunicorn (`lumbar-mri-cds serve`).
#   docker build -t lumbar-mri-cds .
#   docker run -p 8000:8000 -v "$PWD/deploy/config.toml:/etc/lumbar-mri-cds/config.toml:ro" \
#     -e LUMBAR_MRI_CDS_PATIENT_HASH_SALT=... -e LUMBAR_MRI_CDS_DATABASE_URL=postgresql://... lumbar-mri-cds
# docker-compose.yml runs it with PostgreSQL and a HAPI FHIR server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The dependencies at the exact versions of deploy/requirements.txt (deploy/pin_requirements.py), in
# a layer of their own; then the package alone, and pip check (a pin missing or wrong fails the build).
COPY deploy/requirements.txt ./requirements.txt
RUN pip install -r requirements.txt
# Only what the package needs: the code, the card content (installed as package data) and metadata.
COPY pyproject.toml README.md ./
COPY service ./service
COPY cards ./cards
RUN pip install --no-deps . \
 && pip check \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin cds \
 && install -d -o cds -g cds /var/lib/lumbar-mri-cds \
 && rm -rf /src

WORKDIR /
USER cds

# The configuration file (mount it here) and the directory where gunicorn workers keep their
# Prometheus counts, so that /metrics adds up all workers (emptied by `serve` at start).
# XDG_DATA_HOME: the data directory (the development profile's SQLite file and local issuer key,
# and the card outbox with PostgreSQL: /var/lib/lumbar-mri-cds/outbox).
ENV LUMBAR_MRI_CDS_CONFIG=/etc/lumbar-mri-cds/config.toml \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    XDG_DATA_HOME=/var/lib

EXPOSE 8000

# Ready = the store answers (GET /readyz); the slim image has no curl, Python does the request.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]

# gunicorn stops gracefully on SIGTERM (docker stop); logs are JSON lines on stderr.
CMD ["lumbar-mri-cds", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
