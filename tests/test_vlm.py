"""The optional vision-language-model source against a local stand-in server that speaks the
OpenAI chat-completions API: what is sent, what is accepted, what is refused."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from cloud_sink.blobs import LocalBlobStore
from cloud_sink.catalogue import Catalogue
from cloud_sink.labels import LabelStore
from cloud_sink.prelabel import Prelabeler
from cloud_sink.vlm import VlmClient
from tests.labelling_helpers import Fleet, private_sink
from tests.sink_helpers import sink_index

pytestmark = pytest.mark.usefixtures("sink_backend")  # SQLite, then PostgreSQL


class StandIn:
    def __init__(self) -> None:
        self.replies: list[tuple[int, str]] = []
        self.requests: list[dict] = []  # type: ignore[type-arg]
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"path": self.path, "body": json.loads(body)})
                status, content = outer.replies.pop(0) if outer.replies else (200, "none")
                answer = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    s = StandIn()
    yield s
    s.server.shutdown()


@pytest.mark.one_database  # the client alone: no sink
def test_the_client_sends_the_frame_and_checks_every_answer(stand_in: StandIn) -> None:
    client = VlmClient(stand_in.url, "stand-in", {"sku-0001": "Oat drink", "sku-0002": "Tea"})
    ok, jpg = cv2.imencode(".jpg", np.full((40, 60, 3), 90, np.uint8))
    assert ok
    stand_in.replies = [
        (200, 'Sure: {"sku": "sku-0002", "confidence": 0.8}'),
        (200, '{"sku": "none", "confidence": 0.9}'),
        (200, '{"sku": "sku-9999", "confidence": 0.9}'),  # not in the catalogue
        (200, "I think it is tea"),  # no JSON
        (200, '{"sku": "sku-0001", "confidence": 7}'),  # not a confidence
        (500, "overloaded"),
    ]
    answers = [client.ask(jpg.tobytes()) for _ in range(6)]
    assert answers[0] is not None and (answers[0].sku, answers[0].score) == ("sku-0002", 0.8)
    assert answers[1] is not None and answers[1].sku == ""
    assert answers[2:] == [None, None, None, None] and client.refused == 4
    sent = stand_in.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["body"]["model"] == "stand-in"
    parts = sent["body"]["messages"][0]["content"]
    assert "sku-0001: Oat drink" in parts[0]["text"]
    url = parts[1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == jpg.tobytes()


def test_prelabel_records_the_vlm_as_a_source(
    fleet: Fleet, stand_in: StandIn, tmp_path: Path
) -> None:
    data = private_sink(fleet, tmp_path / "sink")
    cat = Catalogue.load(fleet.catalogue)
    stand_in.replies = [(200, json.dumps({"sku": cat.skus[0], "confidence": 0.6}))] * 1000
    client = VlmClient(stand_in.url, "stand-in", {p.sku: p.name for p in cat.products})
    index = sink_index(data)
    Prelabeler(index, LocalBlobStore(data / "blobs" / "store"), cat, vlm=client).run()
    items = LabelStore(index).items()
    assert items and client.asked == len(items)
    for item in items:
        vlm = [c for c in item["candidates"] if c["source"] == "vlm"]
        assert vlm == [
            {
                "source": "vlm",
                "sku": cat.skus[0],
                "score": 0.6,
                "box": None,
                "model_version": "vlm:stand-in",
                "detail": "",
            }
        ]
