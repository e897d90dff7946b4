"""Who is asking: the one place a request's bearer token becomes a device (or an admin)."""

from __future__ import annotations

from dataclasses import dataclass

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
