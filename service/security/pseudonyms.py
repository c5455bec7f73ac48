"""Patient ids as the store and the logs keep them: a salted hash, never the id itself."""

from __future__ import annotations

import hashlib
import hmac


def patient_hash(salt: str, patient_id: str) -> str:
    """The salted SHA-256 (HMAC-SHA256 keyed by the salt) of a patient id, as hex."""
    return hmac.new(salt.encode(), patient_id.encode(), hashlib.sha256).hexdigest()
