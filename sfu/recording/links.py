"""Signed, short-lived links to recording files.

A `<video src>` or `<track src>` cannot send an Authorization header, so the listing (which
does check the caller's token) hands out links that carry their own proof:
`/recordings/<room dir>/<file>?exp=<unix s>&sig=<hex>` where `sig` is HMAC-SHA256, keyed
with the node's API secret, of `<room dir>/<file>\\n<exp>`. A link works until `exp` for
that one file; anyone holding it may fetch the file meanwhile, like any pre-signed URL.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote


def sign(secret: str, name: str, exp: int) -> str:
    message = f"{name}\n{exp}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_query(secret: str, name: str, ttl_s: int, now: float | None = None) -> str:
    exp = int((time.time() if now is None else now) + ttl_s)
    return f"exp={exp}&sig={sign(secret, name, exp)}"


def signed_path(secret: str, prefix: str, name: str, ttl_s: int) -> str:
    return f"{prefix}/recordings/{quote(name)}?{signed_query(secret, name, ttl_s)}"


def check(secret: str, name: str, exp: str | None, sig: str | None, max_ttl_s: int) -> bool:
    """True if `sig` signs `name` until `exp`, and `exp` is in the future (but not further
    than `max_ttl_s`: a link cannot outlive the setting it was made under)."""
    if not exp or not sig or not exp.isdigit() or len(exp) > 12 or len(sig) != 64:
        return False
    expires = int(exp)
    now = time.time()
    if not now <= expires <= now + max_ttl_s + 60:
        return False
    return hmac.compare_digest(sign(secret, name, expires), sig.lower())
