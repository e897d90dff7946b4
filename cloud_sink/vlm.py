"""An optional pre-label source: a vision-language model behind an OpenAI-compatible chat
endpoint (``POST {url}/chat/completions``), off unless configured (``capsight-sink prelabel
--vlm-url URL --vlm-model NAME``; a key, if the server wants one, from ``$CAPSIGHT_VLM_KEY``).

The frame goes as a JPEG data URL with the catalogue's SKUs and names; the model is asked for
``{"sku": "...", "confidence": 0..1}`` (``"none"`` when no product is in view). Everything it
says is checked: an answer that is not that JSON, or names a SKU the catalogue does not have, is
no pre-label (counted in ``VlmClient.refused``); a request has a timeout and the answer a size
limit. It never sees ``/sim/truth``.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from typing import Any

MAX_ANSWER_BYTES = 64 * 1024


@dataclass
class VlmAnswer:
    sku: str  # "" = no product
    score: float


class VlmClient:
    def __init__(
        self, url: str, model: str, skus: dict[str, str], *, timeout_s: float = 30.0
    ) -> None:
        import httpx

        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.skus = skus  # sku -> name
        key = os.environ.get("CAPSIGHT_VLM_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)
        self.version = f"vlm:{model}"
        self.asked = 0
        self.refused = 0

    def _prompt(self) -> str:
        products = "\n".join(f"- {sku}: {name}" for sku, name in sorted(self.skus.items()))
        return (
            "A shopping-cart camera frame. Which product of this list is held up or entering the "
            'basket? Answer with JSON only: {"sku": "<sku or none>", "confidence": <0..1>}.'
            f"\n{products}"
        )

    def ask(self, jpeg: bytes) -> VlmAnswer | None:
        self.asked += 1
        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self._prompt()},
                        {
                            "type": "image_url",
                            "image_url": {
                                "url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
                            },
                        },
                    ],
                }
            ],
        }
        try:
            r = self.client.post(self.url, json=body)
            if r.status_code != 200 or len(r.content) > MAX_ANSWER_BYTES:
                raise ValueError(f"HTTP {r.status_code}, {len(r.content)} bytes")
            text = r.json()["choices"][0]["message"]["content"]
            return self._parse(text)
        except Exception:
            self.refused += 1
            return None

    def _parse(self, text: Any) -> VlmAnswer:
        if not isinstance(text, str):
            raise ValueError("no text")
        match = re.search(r"\{.*\}", text, flags=re.S)
        if not match:
            raise ValueError("no JSON in the answer")
        data = json.loads(match.group(0))
        sku = str(data.get("sku", "")).strip()
        score = float(data.get("confidence", 0.0))
        if not 0.0 <= score <= 1.0:
            raise ValueError("confidence outside 0..1")
        if sku.lower() == "none":
            sku = ""
        if sku and sku not in self.skus:
            raise ValueError(f"{sku!r} is not in the catalogue")
        return VlmAnswer(sku, score)

    def close(self) -> None:
        self.client.close()
