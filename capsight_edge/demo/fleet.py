"""The fleet half of ``capsight demo`` (:mod:`capsight_edge.demo.flywheel` runs the whole loop):
a sink (``capsight-sink serve``) on 127.0.0.1 with a token per cart, and simulated carts in
several stores (:data:`STORES`: one catalogue, different conditions), each its own ``capsight
run`` process with its own simulators (MCU on a pty, IMU on a simulated I2C bus, synthetic
camera, shopper scenario seeded per cart), journal, recorder and uploader. Per cart: captures by
trigger rule, bytes captured and uploaded, upload rate, retries, frames the encoder dropped,
bundles verified at the sink, and the model version its heartbeat reports.
"""

from __future__ import annotations

import contextlib
import copy
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from capsight_edge.localsink import LocalSink

CAPSIGHT = (sys.executable, "-m", "capsight_edge.cli.main", "--log-level", "ERROR")
EXIT_OK, EXIT_FAIL = 0, 1

#: The demo's stores: the fleet's one catalogue, seen in different conditions (profile TOML that
#: each cart in the store adds to its own).
STORES: tuple[tuple[str, str], ...] = (
    ("store-north", ""),
    (
        "store-south",
        "[sim.store_conditions]\nlight_level = 0.7\nlight_changes_per_hour = 30.0\n"
        "glare_rate = 0.3\nblur_rate = 0.55\n",
    ),
    (
        "store-east",
        "[sim.store_conditions]\nlight_level = 1.15\nocclusion_rate = 0.25\ncrumpled_rate = 0.45\n",
    ),
)


#: The demo's carts film at 640x360, 15 fps: several carts, their sink and their training share
#: two cores here, and at 1280x720 the encoders skipped about a quarter of the frames (a clip with
#: frames missing is not what a cart uploads). Every stage after works on such frames.
CAMERA = "[camera]\nwidth_px = 640\nheight_px = 360\nfps = 15.0\n"

#: The demo's stores carry 12 products (the profile's catalogue seed): a few minutes of a few
#: carts then see each product several times, which is what a model can learn from.
CATALOGUE_SIZE = 12

#: The demo's shoppers reach into the basket and put nothing in one turn in three (the
#: simulator's default: about one in seven). The stores' test set shows a hand holding nothing
#: in a third of its "no product" frames; at the default the three carts' round 1 had about six
#: such hands, the fleet model learned that a hand means a product, and the gate refused it for
#: "no product" in some default runs.
EMPTY_HAND_RATE = 0.3


class DemoSink(LocalSink):
    """The local sink with a token per cart and one for the admin, and the admin's queries."""

    def start_with(self, devices: list[str]) -> dict[str, str]:
        tokens = {d: self.add_device(d) for d in devices}
        self.admin = self.add_device("demo-admin", admin=True)
        self.start()
        return tokens

    def bundles(self, device: str) -> list[dict[str, Any]]:
        import httpx

        r = httpx.get(
            self.url + "/api/bundles",
            params={"device": device, "limit": "1000"},
            headers={"Authorization": f"Bearer {self.admin}"},
            timeout=30,
        )
        return list(r.json()["bundles"]) if r.status_code == 200 else []

    def fleet(self) -> dict[str, dict[str, Any]]:
        import httpx

        r = httpx.get(
            self.url + "/api/fleet", headers={"Authorization": f"Bearer {self.admin}"}, timeout=30
        )
        return {d["device_id"]: d for d in r.json()["devices"]} if r.status_code == 200 else {}


class DemoCart:
    """One simulated cart: a ``capsight run`` process with its own profile, data and token."""

    def __init__(
        self,
        n: int,
        root: Path,
        base_profile: Path,
        sink: DemoSink,
        token: str,
        stores: list[tuple[str, str]] | tuple[tuple[str, str], ...] = STORES,
    ) -> None:
        self.name = f"demo-cart-{n}"
        self.store, store_toml = stores[(n - 1) % len(stores)]
        self.dir = root / self.name
        self.data = self.dir / "data"
        self.dir.mkdir(parents=True)
        (self.dir / "token").write_text(token + "\n")
        self.profile = self.dir / "profile.toml"
        self.profile.write_text(
            f'extends = "{base_profile.resolve()}"\n\n[device]\nid = "{self.name}"\n'
            f'store_id = "{self.store}"\n\n'
            f'[upload]\nsink_url = "{sink.url}"\ntoken_file = "{(self.dir / "token").resolve()}"\n'
            f"\n{CAMERA}\n[sim]\ncatalogue_size = {CATALOGUE_SIZE}\n"
            f"empty_hand_rate = {EMPTY_HAND_RATE}\n\n{store_toml}"
        )
        self.proc: subprocess.Popen[str] | None = None
        self.sealed: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.flush: dict[str, Any] = {}
        self.journal: Any = None
        self.round = 1

    def add_model(self, registry_url: str, trust_root: Path, rules: str = "") -> None:
        """From now on the cart follows the registry's stable channel (and ``rules``, TOML of
        more ``[[triggers]]``)."""
        with self.profile.open("a") as f:
            f.write(
                f'\n[model]\nregistry_url = "{registry_url}"\n'
                f'trust_root = "{trust_root.resolve()}"\npoll_s = 5\n{rules}'
            )

    def again(self) -> DemoCart:
        """The same cart (its data, journal, profile and models) for another run."""
        other = copy.copy(self)
        other.proc, other.sealed, other.summary, other.flush = None, [], {}, {}
        other.journal = None
        other.round = self.round + 1
        return other

    def start(
        self, seconds: float, seed: int, events: queue.Queue[tuple[str, dict[str, Any]]]
    ) -> None:
        with open(self.dir / f"run-{self.round}.log", "w") as log:  # the child keeps a copy
            self.proc = self._spawn(seconds, seed, log)

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                try:
                    events.put((self.name, json.loads(line)))
                except ValueError:
                    continue

        threading.Thread(target=read, daemon=True).start()

    def _spawn(self, seconds: float, seed: int, log: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                *CAPSIGHT,
                "run",
                "--json",
                "--profile",
                str(self.profile),
                "--data",
                str(self.data),
                "--duration",
                f"{seconds:.1f}",
                "--seed",
                str(seed),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )

    def progress(self) -> str:
        from capsight_edge.journal.journal import Journal
        from capsight_edge.uploader.status import queue_progress

        if self.journal is None:
            if not (self.data / "journal.db").exists():
                return "starting"
            self.journal = Journal(self.data / "journal.db")
        p = queue_progress(self.journal)
        counts = self.journal.counts()
        up = p["uploader"]
        flying = [b for b in p["bundles"] if b["rate_bps"]]
        now = ", ".join(
            f"{b['bundle_id'][-12:]} {100 * b['bytes_sent'] / max(1, b['bytes']):.0f}%"
            f" at {b['rate_bps'] / 1e6:.1f} Mbit/s"
            + (f" ETA {b['eta_s']:.0f} s" if b["eta_s"] else "")
            for b in flying
        )
        return (
            f"{sum(c['count'] for c in counts.values())} captured, "
            f"{counts.get('uploaded', {}).get('count', 0)} uploaded, {len(p['bundles'])} queued"
            f" ({p['bytes_left'] / 2**20:.1f} MiB); uploader {up['state']}"
            + (f": {now}" if now else "")
        )

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()


def run_carts(
    carts: list[DemoCart],
    events: queue.Queue[tuple[str, dict[str, Any]]],
    start: float,
    *,
    say: Any = print,
    tick: Any = None,
) -> int:
    """Say what the carts report until every one has exited; returns the worst exit code."""
    next_progress = start + 10
    by_name = {c.name: c for c in carts}
    while True:
        try:
            name, obj = events.get(timeout=0.5)
        except queue.Empty:
            name, obj = "", {}
        elapsed = time.monotonic() - start
        cart = by_name.get(name)
        kind = obj.get("type")
        if cart is not None and kind == "bundle_sealed":
            with contextlib.suppress(OSError, ValueError):  # the bundle as sealed, on the cart
                manifest = json.loads((Path(obj["path"]) / "manifest.json").read_text())
                obj["dropped"] = int(manifest.get("dropped_frames") or 0)
                obj["frames"] = int(manifest.get("frames") or 0)
            cart.sealed.append(obj)
            say(
                f"  {elapsed:6.1f} s  {name}: sealed {obj['bundle_id']} ({obj['rule']}, "
                f"{obj['duration_s']} s, {obj['bytes'] // 1024} KiB)"
            )
        elif cart is not None and kind == "run_summary":
            cart.summary = obj
        if tick is not None:
            tick()
        if time.monotonic() >= next_progress:
            next_progress += 10
            for c in carts:
                say(f"  {elapsed:6.1f} s  [{c.name}] {c.progress()}")
        if all(c.proc is not None and c.proc.poll() is not None for c in carts) and events.empty():
            break
    return max(c.proc.returncode for c in carts if c.proc is not None)


def summarise_fleet(
    carts: list[DemoCart], sink: DemoSink, seconds: float, profile: Any
) -> dict[str, Any]:
    sink.wait_ingested()
    fleet = sink.fleet()
    rows = []
    for c in carts:
        run_up = (c.summary.get("upload") or {}).get("stats", {})
        flush = c.flush
        mine = {x["bundle_id"] for x in c.sealed}  # this run's, not an earlier run's
        at_sink = [b for b in sink.bundles(c.name) if b.get("bundle_id") in mine]
        rules: dict[str, int] = {}
        for s in c.sealed:
            rules[s["rule"]] = rules.get(s["rule"], 0) + 1
        frames = sum(x.get("frames", 0) + x.get("dropped", 0) for x in c.sealed)
        dropped = sum(x.get("dropped", 0) for x in c.sealed)
        busy = run_up.get("busy_s", 0.0)
        sent = run_up.get("bytes_sent", 0)
        rows.append(
            {
                "cart": c.name,
                "store": c.store,
                "sealed": len(c.sealed),
                "by_rule": rules,
                "bytes_captured": sum(s["bytes"] for s in c.sealed),
                "frames_dropped": dropped,
                "dropped_pct": round(100 * dropped / frames, 2) if frames else 0.0,
                "bytes_uploaded": run_up.get("bytes_confirmed", 0)
                + flush.get("bytes_confirmed", 0),
                "uploaded_while_running": run_up.get("bundles_uploaded", 0),
                "uploaded_by_flush": flush.get("uploaded", 0),
                "upload_rate_bps": round(sent * 8 / busy) if busy else 0,
                "retries": run_up.get("retries", 0)
                + flush.get("retries", 0)
                + run_up.get("interruptions", 0)
                + flush.get("interruptions", 0),
                "wire_saved_bytes": run_up.get("wire_saved_bytes", 0),
                "verified": sum(1 for b in at_sink if b.get("status") == "ok"),
                "corrupt": sum(1 for b in at_sink if b.get("status") != "ok"),
                "left_on_cart": flush.get("left", None),
                "heartbeat": fleet.get(c.name, {}),
                "exit_code": c.proc.returncode if c.proc else None,
            }
        )
    return {
        "seconds": round(seconds, 1),
        "profile": profile.name,
        "cap_bps_per_cart": profile.upload.max_upload_bps,
        "carts": rows,
    }
