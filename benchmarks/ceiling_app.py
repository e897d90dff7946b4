"""A baseline for the sink's throughput: an ASGI app on the same server stack (uvicorn) that reads
and discards bodies. Not an upper bound: the raw socket receiver in bench_sink is."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})
