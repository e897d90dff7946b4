"""``capsight demo``: the simulated flywheel on the embedded defaults, orchestrated through the
commands and HTTP APIs a user would run (the demo is an orchestrator, not a shortcut).

1. The doctor on the simulated cart.
2. A cloud sink (``capsight-sink serve``) on 127.0.0.1, one device token per cart.
3. ``carts`` simulated carts in several stores (:data:`STORES`: one catalogue, different
   conditions), each its own ``capsight run`` process with its own simulators (MCU on a pty, IMU
   on a simulated I2C bus, synthetic camera, shopper scenario seeded per cart), journal, recorder
   and uploader, for ``minutes``. Sealed bundles and upload progress print as they happen.
4. What the carts' uploaders had not sent when they stopped goes with ``capsight upload now``
   (what a technician runs).
5. A summary per cart: captures by trigger rule, bytes captured and uploaded, upload rate,
   retries, bundles verified at the sink; the same as ``demo-report.md`` and
   ``demo-summary.json`` in ``--out``.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from capsight_edge.doctor import doctor_ok, format_table, run_doctor
from capsight_edge.localsink import LocalSink
from capsight_edge.profile import load_profile
from capsight_edge.profile.schema import Profile

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

    def __init__(self, n: int, root: Path, base_profile: Path, sink: DemoSink, token: str) -> None:
        self.name = f"demo-cart-{n}"
        self.store, store_toml = STORES[(n - 1) % len(STORES)]
        self.dir = root / self.name
        self.data = self.dir / "data"
        self.dir.mkdir(parents=True)
        (self.dir / "token").write_text(token + "\n")
        self.profile = self.dir / "profile.toml"
        self.profile.write_text(
            f'extends = "{base_profile.resolve()}"\n\n[device]\nid = "{self.name}"\n'
            f'store_id = "{self.store}"\n\n'
            f'[upload]\nsink_url = "{sink.url}"\ntoken_file = "{(self.dir / "token").resolve()}"\n'
            f"\n{store_toml}"
        )
        self.proc: subprocess.Popen[str] | None = None
        self.sealed: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.flush: dict[str, Any] = {}
        self.journal: Any = None

    def start(
        self, seconds: float, seed: int, events: queue.Queue[tuple[str, dict[str, Any]]]
    ) -> None:
        with open(self.dir / "run.log", "w") as log:  # the child keeps its own copy
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


def run_demo(
    profile_path: str | None, *, out: Path, minutes: float = 1.0, carts: int = 3, seed: int = 7
) -> int:
    """The whole demo (see the module docstring); returns the exit code (0: every bundle sealed
    on a cart was verified at the sink)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in ("sink", "carts", "data"):
        shutil.rmtree(out / old, ignore_errors=True)
    profile: Profile = load_profile(profile_path, data_dir=out / "data")
    base = Path(profile.source_path)
    n_carts = max(1, carts)
    seconds = max(10.0, minutes * 60)
    print(f"== capsight demo: {n_carts} carts on profile {profile.name}, output in {out}/")
    print("-- step 1: doctor on the simulated cart")
    checks = run_doctor(profile)
    print(format_table(checks))
    if not doctor_ok(checks):
        print("demo stopped: a required device failed")
        return EXIT_FAIL

    (out / "sink").mkdir(parents=True)
    sink = DemoSink(out / "sink", log=out / "sink" / "sink.log")
    names = [f"demo-cart-{i + 1}" for i in range(n_carts)]
    tokens = sink.start_with(names)
    print(
        f"\n-- step 2: cloud sink on {sink.url} (data in {out / 'sink'}), {n_carts} device tokens"
    )
    events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    fleet = [
        DemoCart(i + 1, out / "carts", base, sink, tokens[name]) for i, name in enumerate(names)
    ]
    print(
        f"\n-- step 3: {n_carts} simulated carts in {min(n_carts, len(STORES))} stores (one "
        f"catalogue, different conditions) for {seconds:.0f} s, each its own process with its "
        f"own simulators, journal and uploader (cap {profile.upload.max_upload_bps / 1e6:g} "
        "Mbit/s per cart)"
    )
    start = time.monotonic()
    try:
        for i, cart in enumerate(fleet):
            cart.start(seconds, seed + i, events)
        status = _run_carts(fleet, events, start)
        print("\n-- step 4: `capsight upload now` on each cart sends what is left")
        _flush(fleet)
        print("\n-- step 5: what the sink verified")
        summary = _summarise(fleet, sink, seconds, profile)
    finally:
        for cart in fleet:
            if cart.proc is not None and cart.proc.poll() is None:
                cart.proc.kill()
            cart.close()
        sink.stop()
    report = _report(summary, sink.url)
    print(report)
    (out / "demo-report.md").write_text(report + "\n")
    (out / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwritten: {out / 'demo-report.md'}, {out / 'demo-summary.json'}")
    print(
        f"look closer: `capsight queue --data {fleet[0].data}`, `capsight status --data "
        f"{fleet[0].data}`; the sink's index is {out / 'sink' / 'index.db'}"
    )
    print("not yet in the demo: pre-labelling, training, model push")
    ok = status == 0 and all(c["verified"] == c["sealed"] for c in summary["carts"])
    return EXIT_OK if ok else EXIT_FAIL


def _run_carts(
    carts: list[DemoCart], events: queue.Queue[tuple[str, dict[str, Any]]], start: float
) -> int:
    """Print what the carts say until every one has exited; returns the worst exit code."""
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
            cart.sealed.append(obj)
            print(
                f"  {elapsed:6.1f} s  {name}: sealed {obj['bundle_id']} ({obj['rule']}, "
                f"{obj['duration_s']} s, {obj['bytes'] // 1024} KiB)",
                flush=True,
            )
        elif cart is not None and kind == "run_summary":
            cart.summary = obj
        if time.monotonic() >= next_progress:
            next_progress += 10
            for c in carts:
                print(f"  {elapsed:6.1f} s  [{c.name}] {c.progress()}", flush=True)
        if all(c.proc is not None and c.proc.poll() is not None for c in carts) and events.empty():
            break
    return max(c.proc.returncode for c in carts if c.proc is not None)


def _flush(carts: list[DemoCart]) -> None:
    procs = {
        c.name: subprocess.Popen(
            [
                *CAPSIGHT,
                "upload",
                "now",
                "--json",
                "--profile",
                str(c.profile),
                "--data",
                str(c.data),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in carts
    }
    for c in carts:
        out, err = procs[c.name].communicate(timeout=600)
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        c.flush = next((x for x in reversed(lines) if "uploaded" in x), {"error": err.strip()})
        print(
            f"  {c.name}: {c.flush.get('uploaded', 0)} more uploaded, "
            f"{c.flush.get('left', '?')} left ({c.flush.get('state', err.strip()[-200:])})"
        )


def _summarise(
    carts: list[DemoCart], sink: DemoSink, seconds: float, profile: Any
) -> dict[str, Any]:
    sink.wait_ingested()
    fleet = sink.fleet()
    rows = []
    for c in carts:
        run_up = (c.summary.get("upload") or {}).get("stats", {})
        flush = c.flush
        at_sink = sink.bundles(c.name)
        rules: dict[str, int] = {}
        for s in c.sealed:
            rules[s["rule"]] = rules.get(s["rule"], 0) + 1
        busy = run_up.get("busy_s", 0.0)
        sent = run_up.get("bytes_sent", 0)
        rows.append(
            {
                "cart": c.name,
                "store": c.store,
                "sealed": len(c.sealed),
                "by_rule": rules,
                "bytes_captured": sum(s["bytes"] for s in c.sealed),
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


def _report(summary: dict[str, Any], sink_url: str) -> str:
    lines = [
        f"# capsight demo: {len(summary['carts'])} simulated carts, {summary['seconds']:.0f} s",
        "",
        f"Profile `{summary['profile']}`, sink {sink_url}, upload cap "
        f"{summary['cap_bps_per_cart'] / 1e6:g} Mbit/s per cart.",
        "",
        "| cart | store | captures by rule | captured | uploaded | upload rate | retries "
        "| verified at sink | left on cart |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["carts"]:
        rules = ", ".join(f"{k} {v}" for k, v in sorted(r["by_rule"].items())) or "-"
        lines.append(
            f"| {r['cart']} | {r['store']} | {rules} | {r['bytes_captured'] / 2**20:.1f} MiB "
            f"({r['sealed']}) | {r['bytes_uploaded'] / 2**20:.1f} MiB "
            f"({r['uploaded_while_running']} + {r['uploaded_by_flush']} by flush) | "
            f"{r['upload_rate_bps'] / 1e6:.2f} Mbit/s | {r['retries']} | "
            f"{r['verified']}/{r['sealed']}"
            + (f" ({r['corrupt']} corrupt)" if r["corrupt"] else "")
            + f" | {r['left_on_cart']} |"
        )
    lines += [
        "",
        "Captured: bytes of clip and sensor log sealed on the cart (bundles). Uploaded: bytes the "
        "sink confirmed (manifests and sensor logs go zstd-compressed where that saves bytes). "
        "Upload rate: mean on the wire while an upload was in flight. Verified: bundles the sink "
        "checked against their manifest (sha256 of every file, clip probed) and indexed.",
    ]
    return "\n".join(lines)
