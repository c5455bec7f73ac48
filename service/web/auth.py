"""The first line of every view that receives patient data: who is calling, and may they?

``authenticate(services)`` verifies the request's bearer token for the URL being called. Discovery
(``GET /cds-services``) does not call it: it holds no patient data, and EHRs and the sandbox read it
without a token.
"""

from __future__ import annotations

import logging

from flask import request

from service import errors
from service.config import Profile
from service.security.jwt import Claims
from service.services import Services

log = logging.getLogger(__name__)


def authenticate(services: Services) -> Claims:
    """The verified claims of this request's token; raises NotAuthenticated (a bare 401)."""
    try:
        return services.verifier.verify(request.headers.get("Authorization"), audience_url(services))
    except errors.NotAuthenticated as exc:
        # The reason goes to the log only; the token itself never does.
        log.info("401 %s %s: %s", request.method, request.path, exc.message)
        raise


def audience_url(services: Services) -> str:
    """The URL the token's `aud` must name: the public base plus the path called."""
    settings = services.settings
    if settings.public_base_url is not None:
        return settings.public_base_url + request.path
    if settings.profile is not Profile.DEVELOPMENT:  # load_settings refuses this; never trust Host
        raise errors.NotAuthenticated("no public_base_url configured outside the development profile")
    # Development only: the URL as this request reached us (Host header included).
    return request.base_url
