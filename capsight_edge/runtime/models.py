"""The cart's model runtime: pulls models from the sink's registry, verifies them through TUF,
loads, self-tests and swaps them under load, and rolls back by itself.

``pull()`` asks the registry (python-tuf's ``ngclient`` over an httpx fetcher that sends the
cart's token) for its channel's file (``channels/stable.json``: which model, for what share of
the fleet), and when the cart is in the rollout and the model is new, downloads the model, its
card and its golden self-test, each verified by ngclient against the signed metadata (signatures
by the keys the cart's trusted root names, versions never older, nothing expired, length and
hashes). The candidate is then loaded (onnxruntime with the profile's providers; the providers it
really got are reported), checked against its card (input name and shape, outputs), warmed up,
and must answer its golden inputs as the trainer recorded (no NaN). Only then does it replace the
running model, in one reference swap under a lock: inferences in flight finish on the old one.

Health: every inference is watched (errors, NaN, latency, scores that are not probabilities, and
the output distribution: the same answer to most of ``window`` different frames means a dead
model); ``bad_limit`` bad answers in the last ``window`` make the runtime go back to the last good
model by itself, and remember the bad one so that a pull does not install it again. A model becomes
"last good" after ``good_after`` healthy inferences and a whole window. The state (current, last
good, rejected) lives in ``DATA/models/state.json``: the last good model is loaded at start, with
no network, after its sha256 is checked again.

Anything refused raises :class:`~capsight_edge.errors.ModelRejected` with the reason; the model
that was running keeps running.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capsight_edge.durable import fsync_dir, make_dirs
from capsight_edge.errors import ModelRejected
from capsight_edge.runtime.card import ModelCard, card_path, check_io, read_card, to_input
from capsight_edge.runtime.trust import bucket, channel_path

log = logging.getLogger("capsight.model")

MAX_MODEL_BYTES = 512 * 1024 * 1024
FILES = ("model.onnx", "model.card.json", "golden.npz")


@dataclass
class Loaded:
    name: str
    version: str
    folder: Path
    sha256: str
    card: ModelCard
    session: Any
    providers: list[str]


@dataclass
class PullResult:
    status: str  # updated | current | not_in_rollout | no_channel
    version: str | None = None
    detail: str = ""


@dataclass
class Health:
    window: int = 50
    bad_limit: int = 5
    good_after: int = 20
    max_latency_ms: float = 1000.0
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=50))
    served: int = 0
    #: (frame fingerprint, answer) of the last ``window`` inferences: a model that gives the
    #: same answer to many different frames has collapsed (its output distribution is dead).
    answers: deque[tuple[float, bytes]] = field(default_factory=lambda: deque(maxlen=50))

    def collapsed(self, frame: float, answer: bytes) -> bool:
        self.answers.append((frame, answer))
        if len(self.answers) < min(self.window, self.answers.maxlen or 0):
            return False
        frames = {f for f, _ in self.answers}
        return len({a for _, a in self.answers}) == 1 and len(frames) > len(self.answers) // 2


class HttpxFetcher:
    """ngclient's fetcher over httpx, with the cart's bearer token and timeouts.

    Resumable: a download whose expected sha256 the runtime named (:meth:`expect`) is kept in
    ``partial/<sha256>`` as it arrives; after a cut, the next try sends the bytes already here to
    ngclient again and asks the registry only for the rest (``Range``). ngclient still checks the
    length while the bytes flow and the hash of the whole, so a wrong prefix is caught and
    dropped. ``requests`` counts the HTTP requests made (the cost of a poll)."""

    def __init__(self, token: str | None, partial: Path, timeout_s: float = 15.0) -> None:
        import httpx
        from tuf.ngclient import FetcherInterface

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers, follow_redirects=True)
        self.partial = partial
        self.requests = 0
        self.resumed_bytes = 0  # bytes not fetched again thanks to a partial download
        self._expected: dict[str, str] = {}  # url -> sha256
        outer = self

        class _Fetcher(FetcherInterface):
            def _fetch(self, url: str) -> Iterator[bytes]:
                return outer._stream(url)

        self.fetcher = _Fetcher()

    def expect(self, url: str, sha256: str) -> Path:
        """Keep what arrives from ``url`` (whose bytes hash to ``sha256``) across cuts."""
        self._expected[url] = sha256
        return self.partial / sha256

    def _stream(self, url: str) -> Iterator[bytes]:
        from tuf.api.exceptions import DownloadHTTPError

        sha = self._expected.get(url)
        part = self.partial / sha if sha else None
        have = part.stat().st_size if part is not None and part.is_file() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        self.requests += 1
        with self.client.stream("GET", url, headers=headers) as resp:
            if resp.status_code == 416 and part is not None:  # the partial is not a prefix
                part.unlink(missing_ok=True)
                raise DownloadHTTPError(f"{url}: the partial download is dropped", 416)
            if resp.status_code not in (200, 206):
                raise DownloadHTTPError(f"{url}: HTTP {resp.status_code}", resp.status_code)
            if part is None:
                yield from resp.iter_bytes(65536)
                return
            part.parent.mkdir(parents=True, exist_ok=True)
            resumed = resp.status_code == 206 and have > 0
            if resumed:  # what is here first, then the rest
                self.resumed_bytes += have
                with part.open("rb") as f:
                    while chunk := f.read(65536):
                        yield chunk
            with part.open("ab" if resumed else "wb") as out:
                for chunk in resp.iter_bytes(65536):
                    out.write(chunk)
                    yield chunk

    def poll(self, url: str, etag: str | None) -> str | None:
        """The metadata's ETag now, or None when it is still ``etag`` (HTTP 304)."""
        self.requests += 1
        resp = self.client.get(url, headers={"If-None-Match": etag} if etag else {})
        if resp.status_code == 304:
            return None
        resp.raise_for_status()
        return resp.headers.get("etag", "")


class ModelRuntime:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        device_id: str,
        registry_url: str = "",
        trust_root: str | os.PathLike[str] | None = None,
        channel: str = "stable",
        token: str | None = None,
        providers: list[str] | None = None,
        threads: int = 1,
        health: Health | None = None,
    ) -> None:
        self.folder = make_dirs(Path(data_dir) / "models")
        self.device_id = device_id
        self.registry_url = registry_url.rstrip("/")
        self.trust_root = Path(trust_root) if trust_root else None
        channel_path(channel)  # a known channel
        self.channel = channel
        self.token = token
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self.health = health or Health()
        self._lock = threading.Lock()
        self._current: Loaded | None = None
        self._http: HttpxFetcher | None = None
        self.events: list[str] = []  # what happened, newest last (also logged)
        self._state = self._read_state()
        good = self._state.get("last_good") or self._state.get("current")
        if good:
            try:
                self._current = self._load(Path(good["folder"]), expect_sha=good["sha256"])
                self._say(f"loaded {good['name']} {good['version']} from disk")
            except ModelRejected as exc:
                self._say(f"the stored model {good['version']} is refused: {exc}")

    # -- state -----------------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any]:
        path = self.folder / "state.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            return {}

    def _save_state(self) -> None:
        path = self.folder / "state.json"
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(self._state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.folder)  # else a power cut brings the previous model back

    def _say(self, text: str) -> None:
        self.events.append(text)
        log.info("%s", text)

    @property
    def current(self) -> dict[str, Any] | None:
        m = self._current
        if m is None:
            return None
        return {"name": m.name, "version": m.version, "sha256": m.sha256, "providers": m.providers}

    @property
    def version(self) -> str:
        m = self._current
        return f"{m.name}:{m.version}" if m else ""

    # -- loading -----------------------------------------------------------------------------
    def _load(self, folder: Path, *, expect_sha: str | None = None) -> Loaded:
        """Load, check against the card, warm up and self-test the model in ``folder``."""
        import numpy as np
        import onnxruntime as ort

        model = folder / "model.onnx"
        try:
            data = model.read_bytes()
        except OSError as exc:
            raise ModelRejected(f"{model}: {exc}") from None
        sha = hashlib.sha256(data).hexdigest()
        if expect_sha and sha != expect_sha:
            raise ModelRejected(f"{model} changed on disk (sha256 {sha[:12]}...)")
        try:
            card = ModelCard.model_validate_json(card_path(model).read_bytes())
        except Exception as exc:
            raise ModelRejected(f"{model}: no valid model card: {exc}"[:300]) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(data, opts, providers=self.providers)
        except Exception as exc:
            raise ModelRejected(f"{card.name} {card.version} does not load: {exc}"[:300]) from None
        problem = check_io(session, card)
        if problem:
            raise ModelRejected(f"{card.name} {card.version}: {problem}")
        spec = card.input
        names = [card.outputs.scores, card.outputs.boxes]
        try:
            session.run(names, {spec.name: np.zeros((1, 3, spec.height, spec.width), np.float32)})
            with np.load(folder / "golden.npz", allow_pickle=False) as golden:
                inputs, scores, boxes = golden["inputs"], golden["scores"], golden["boxes"]
            got_scores, got_boxes = session.run(names, {spec.name: inputs})
        except Exception as exc:
            raise ModelRejected(
                f"{card.name} {card.version} fails its self-test: {exc}"[:300]
            ) from None
        if not (np.isfinite(got_scores).all() and np.isfinite(got_boxes).all()):
            raise ModelRejected(f"{card.name} {card.version} answers NaN in its self-test")
        if not (
            np.allclose(got_scores, scores, atol=1e-3) and np.allclose(got_boxes, boxes, atol=1e-3)
        ):
            raise ModelRejected(
                f"{card.name} {card.version} answers its golden inputs otherwise than recorded"
            )
        return Loaded(
            card.name, card.version, folder, sha, card, session, list(session.get_providers())
        )

    def _swap(self, new: Loaded, *, why: str) -> None:
        with self._lock:  # the last good model stays what it was until this one proves itself
            self._current = new
        self.health.recent.clear()
        self.health.answers.clear()
        self.health.served = 0
        entry = {
            "name": new.name,
            "version": new.version,
            "folder": str(new.folder),
            "sha256": new.sha256,
        }
        self._state["current"] = entry
        if "last_good" not in self._state:
            self._state["last_good"] = entry
        self._save_state()
        self._say(f"running {new.name} {new.version} ({why}) on {', '.join(new.providers)}")

    # -- pulling -----------------------------------------------------------------------------
    def _updater(self, staging: Path) -> Any:
        from tuf.ngclient import Updater

        meta = self.folder / "tuf"
        meta.mkdir(exist_ok=True)
        bootstrap = None
        if not (meta / "root.json").is_file():
            if self.trust_root is None or not self.trust_root.is_file():
                raise ModelRejected(
                    "no trusted root: set [model] trust_root to the registry's root"
                )
            bootstrap = self.trust_root.read_bytes()
        return Updater(
            metadata_dir=str(meta),
            metadata_base_url=f"{self.registry_url}/registry/metadata/",
            target_dir=str(staging),
            target_base_url=f"{self.registry_url}/registry/targets/",
            fetcher=self._fetcher().fetcher,
            bootstrap=bootstrap,
        )

    def _fetcher(self) -> HttpxFetcher:
        """One HTTP client for every poll (its connections are reused, never leaked)."""
        if self._http is None:
            self._http = HttpxFetcher(self.token, self.folder / "partial")
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.client.close()
            self._http = None

    def pull(self) -> PullResult:
        """One poll of the registry. Raises :class:`ModelRejected` with the reason when the
        registry cannot be reached or anything fails verification, load or self-test; the
        running model keeps running."""
        from tuf.api import exceptions as tuf_errors

        if not self.registry_url:
            raise ModelRejected("no registry configured ([model] registry_url)")
        staging = self.folder / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        polled = self._state.get("poll") or {}
        try:
            http = self._fetcher()
            etag = http.poll(
                f"{self.registry_url}/registry/metadata/timestamp.json", polled.get("etag")
            )
            if etag is None and self._current is not None:  # nothing signed has changed
                return PullResult(polled["status"], polled.get("version"), "registry unchanged")
            result = self._pull(staging, http)
        except ModelRejected:
            raise
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise ModelRejected(
                f"the registry's answer is refused: {type(exc).__name__}: {exc}"[:400]
            ) from None
        except Exception as exc:  # unreachable, garbage: the current model keeps serving
            raise ModelRejected(
                f"the registry cannot be used now: {type(exc).__name__}: {exc}"[:400]
            ) from None
        if isinstance(result, PullResult):
            outcome = result
        else:
            try:
                candidate = self._load(result)
            except ModelRejected:  # its card, load or self-test: the same next time
                refused = self._state.setdefault("rejected", [])
                refused.append(hashlib.sha256((result / "model.onnx").read_bytes()).hexdigest())
                del refused[:-50]
                self._save_state()
                raise
            final = self.folder / "store" / candidate.name / candidate.version
            shutil.rmtree(final, ignore_errors=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(result, final)
            candidate.folder = final
            self._swap(candidate, why=f"pulled from {self.channel}")
            outcome = PullResult("updated", candidate.version)
        if etag:  # the next poll of an unchanged registry costs one request and no body
            self._state["poll"] = {
                "etag": etag,
                "status": "current" if outcome.status == "updated" else outcome.status,
                "version": outcome.version,
            }
            self._save_state()
        return outcome

    def _pull(self, staging: Path, http: HttpxFetcher) -> PullResult | Path:
        """Refresh the metadata and download the channel's model into ``staging``: the folder,
        or a :class:`PullResult` when there is nothing to install."""
        import httpx
        from tuf.api import exceptions as tuf_errors

        updater = self._updater(staging)
        updater.refresh()
        info = updater.get_targetinfo(channel_path(self.channel))
        if info is None:
            return PullResult("no_channel", detail=f"the registry offers no {self.channel}")
        entry = json.loads(Path(updater.download_target(info)).read_text())
        version = str(entry.get("version", ""))
        if bucket(self.device_id) >= int(entry.get("rollout_pct", 0)):
            return PullResult("not_in_rollout", version, f"{entry.get('rollout_pct')}% rollout")
        rel = str(entry["model"]).rsplit("/", 1)[0]
        targets = {}
        for name in FILES:
            t = updater.get_targetinfo(f"{rel}/{name}")
            if t is None:
                raise ModelRejected(f"{rel}/{name} is not in the signed targets")
            if t.length > MAX_MODEL_BYTES:
                raise ModelRejected(f"{rel}/{name} is {t.length} bytes: above the limit")
            targets[name] = t
        sha = targets["model.onnx"].hashes.get("sha256", "")
        if sha in self._state.get("rejected", []):
            return PullResult("current", version, "this model was refused or rolled back here")
        if self._current is not None and self._current.sha256 == sha:
            return PullResult("current", version)
        dest = staging / "model"
        dest.mkdir()
        downloads = []
        for name, t in targets.items():
            url = f"{self.registry_url}/registry/targets/{t.path}"
            downloads.append((name, t, http.expect(url, t.hashes.get("sha256", ""))))
        keep = {part for _, _, part in downloads}
        for old in http.partial.glob("*") if http.partial.is_dir() else []:
            if old not in keep:  # a download nobody wants any more
                old.unlink(missing_ok=True)
        for name, t, part in downloads:
            try:
                updater.download_target(t, filepath=str(dest / name))
            except Exception as exc:
                # A cut keeps what arrived; wrong bytes or too many are thrown away.
                cut = isinstance(exc, httpx.TransportError) or (
                    isinstance(exc, tuf_errors.DownloadError)
                    and not isinstance(exc, tuf_errors.DownloadLengthMismatchError)
                )
                if not cut:
                    part.unlink(missing_ok=True)
                raise
            part.unlink(missing_ok=True)
        return dest

    # -- serving -----------------------------------------------------------------------------
    def predict(self, images: list[Any]) -> list[tuple[str, float, list[float]]]:
        """(label, score, box as fractions) per BGR frame, from the running model. A bad answer
        counts against the model's health; too many make the runtime roll back."""
        import numpy as np

        model = self._current
        if model is None:
            raise ModelRejected("no model is running")
        start = time.perf_counter()
        ok = True
        try:
            batch = to_input(images, model.card.input)
            scores, boxes = model.session.run(
                [model.card.outputs.scores, model.card.outputs.boxes],
                {model.card.input.name: batch},
            )
            # Errors, NaN, answers outside what the card promises (probabilities, fractions).
            ok = bool(
                np.isfinite(scores).all()
                and np.isfinite(boxes).all()
                and scores.min() >= -1e-3
                and scores.max() <= 1 + 1e-3
                and abs(float(scores[0].sum()) - 1) < 1e-2
            )
            frame = round(float(batch[0].mean()), 4)
            if ok and self.health.collapsed(frame, np.round(scores[0], 4).tobytes()):
                ok = False
                self._say(f"{model.name} {model.version} answers alike to different frames")
        except Exception:
            ok = False
            scores = boxes = None
        ok = ok and (time.perf_counter() - start) * 1000 <= self.health.max_latency_ms
        self._watch(model, ok)
        if scores is None or not ok:
            raise ModelRejected(f"{model.name} {model.version} gave no usable answer")
        out = []
        for s, b in zip(scores, boxes, strict=True):
            k = int(np.argmax(s))
            out.append((model.card.labels[k], float(s[k]), [float(v) for v in b]))
        return out

    def gtin_of(self, label: str) -> str:
        """The GTIN-14 the running model's card gives ``label`` ("" when unknown)."""
        model = self._current
        if model is None or not label or not model.card.gtins:
            return ""
        try:
            return model.card.gtins[model.card.labels.index(label)]
        except (ValueError, IndexError):
            return ""

    def _watch(self, model: Loaded, ok: bool) -> None:
        h = self.health
        h.recent.append(ok)
        h.served += 1
        # "Last good" only after a whole healthy window has been judged, not before.
        if ok and h.served == max(h.good_after, h.window) and model is self._current:
            self._state["last_good"] = self._state.get("current")
            self._save_state()
        if sum(1 for x in h.recent if not x) >= h.bad_limit and model is self._current:
            self.rollback(f"{h.bad_limit} bad answers in the last {len(h.recent)}")

    def rollback(self, reason: str) -> bool:
        """Go back to the last good model (not the one running); True when it did."""
        good = self._state.get("last_good")
        running = self._current
        if not good or (running is not None and good["sha256"] == running.sha256):
            self._say(f"cannot roll back ({reason}): no other good model")
            return False
        try:
            back = self._load(Path(good["folder"]), expect_sha=good["sha256"])
        except ModelRejected as exc:
            self._say(f"cannot roll back ({reason}): {exc}")
            return False
        if running is not None:
            rejected = self._state.setdefault("rejected", [])
            rejected.append(running.sha256)
        self._swap(back, why=f"rolled back: {reason}")
        return True

    def installed(self) -> list[dict[str, Any]]:
        store = self.folder / "store"
        out = []
        for card_file in sorted(store.glob("*/*/model.card.json")):
            card = read_card(card_file.parent / "model.onnx")
            out.append(
                {"name": card.name, "version": card.version, "folder": str(card_file.parent)}
            )
        return out


def runtime_from_profile(profile: Any, data_dir: str | os.PathLike[str]) -> ModelRuntime:
    """The runtime a profile describes: ``[model]`` (registry, trust root, channel, providers,
    threads), the device's name, and the upload token (the registry asks for it)."""
    token = None
    if profile.upload.token_file:
        path = Path(os.path.expanduser(profile.upload.token_file))
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ModelRejected(f"the token file {path} cannot be read: {exc}") from None
    root = profile.model.trust_root
    return ModelRuntime(
        data_dir,
        device_id=profile.device.id,
        registry_url=profile.model.registry_url,
        trust_root=os.path.expanduser(root) if root else None,
        channel=profile.model.channel,
        token=token,
        providers=list(profile.model.providers),
        threads=profile.model.intra_op_threads,
    )
