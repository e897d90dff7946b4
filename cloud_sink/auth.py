"""Who is asking: the one place a request's bearer token becomes a device (or an admin)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from cloud_sink.db import SinkDB


@dataclass(frozen=True)
class Identity:
    device: str
    admin: bool


def bearer_identity(request: Request, db: SinkDB) -> Identity | None:
    """The device whose active token the request carries (``Authorization: Bearer <token>``),
    or None: no token, a malformed header, an unknown or revoked token."""
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    who = db.authenticate(token.strip())
    return Identity(*who) if who else None


SESSION_COOKIE = "capsight_session"
SESSION_S = 12 * 3600


class Sessions:
    """The review UI's sign-in: the admin token is given once on the login page, and the
    browser then holds an HttpOnly, SameSite=Strict cookie ``name|expiry|hmac`` signed with a
    key kept in the sink's data folder (``ui.key``, 0600). The token never appears in a URL or
    in page script. Each request still checks that the device is an active admin: a revoked
    token's sessions end at once."""

    def __init__(self, key_path: str | os.PathLike[str]) -> None:
        path = Path(key_path)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
        self._key = path.read_bytes()

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def issue(self, device: str, now: float | None = None) -> str:
        expiry = int((now or time.time()) + SESSION_S)
        text = f"{device}|{expiry}"
        return f"{text}|{self._sign(text)}"

    def check(self, value: str, db: SinkDB, now: float | None = None) -> Identity | None:
        parts = value.split("|")
        if len(parts) != 3 or len(value) > 300:
            return None
        device, expiry, mac = parts
        if not hmac.compare_digest(mac, self._sign(f"{device}|{expiry}")):
            return None
        if not expiry.isdigit() or int(expiry) < (now or time.time()):
            return None
        if not db.is_active_admin(device):
            return None
        return Identity(device, True)


def request_identity(request: Request, db: SinkDB, sessions: Sessions | None) -> Identity | None:
    """The bearer token's device, else (for the review UI) the signed session cookie's admin."""
    who = bearer_identity(request, db)
    if who is None and sessions is not None:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        who = sessions.check(cookie, db) if cookie else None
    return who
