"""Values sealed with AES-GCM for the service's own later reading: unreadable and unchangeable by whoever holds
them (a URL's `_cursor`, a citizen's session cookie). Each use keys it from the service's secret under a label
of its own (`key`), and seals it for one purpose (`sealed_for`), so a sealed value moved to another does not open.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def key(secret: str, label: str) -> bytes:
    """A 256-bit key from the service's secret under `label`, never the key of anything else."""
    return hmac.digest(secret.encode(), label.encode(), "sha256")


def seal(key: bytes, sealed_for: str, value: Any) -> str:
    """`value` (JSON) sealed for `sealed_for`, as URL-safe base64 without padding."""
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(key).encrypt(nonce, json.dumps(value).encode(), sealed_for.encode())
    return base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def unseal(key: bytes, sealed_for: str, token: str) -> Any:
    """The value `seal` sealed for `sealed_for` with this key; ValueError for anything else (changed, moved,
    another key's, not base64)."""
    try:
        sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return json.loads(AESGCM(key).decrypt(sealed[:12], sealed[12:], sealed_for.encode()))
    except (binascii.Error, InvalidTag) as exc:
        raise ValueError("not a value this service sealed for this use") from exc
