"""The body-size limit for bodies sent without ``Content-Length`` (chunked transfer encoding).

Flask's ``MAX_CONTENT_LENGTH`` (set from ``limits.max_body_bytes``) answers 413 at once when the
``Content-Length`` header is too large. A chunked body has no such header: Werkzeug then reads it
only when the WSGI server says it ends the stream (gunicorn does) and stops reading at the limit
silently, so a large body would reach the JSON parser cut short and get a misleading 400. Here such a
body is read once, before any view, and answered 413 when more follows the limit; views then get the
cached bytes. Bodies with ``Content-Length`` pass through untouched (no cost on the usual path).
"""

from __future__ import annotations

from flask import Flask
from flask import request
from werkzeug.exceptions import RequestEntityTooLarge


def register(app: Flask) -> None:
    """Check streamed bodies against the app's MAX_CONTENT_LENGTH before the views run."""
    app.before_request(_check_streamed_body)


def _check_streamed_body() -> None:
    limit = request.max_content_length
    if limit is None or request.content_length is not None or "wsgi.input_terminated" not in request.environ:
        return
    body = request.get_data(cache=True)  # stops at the limit; cached for the view
    # Exactly `limit` bytes may be the whole body: only a further byte from the server's own stream
    # proves it too large.
    if len(body) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge(f"the body is larger than {limit} bytes")
