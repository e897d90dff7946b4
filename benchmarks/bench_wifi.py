"""A store's network, not loopback: the sink in its own network namespace, the uploader (ours,
then tuspy, on the same files) in this one, joined by a veth pair shaped with ``tc``: a rate
(``tbf``), and where the kernel has ``sch_netem`` a round-trip delay and a loss rate; the link
goes down for a few seconds on a fixed schedule (an access point dropping out).

Reported: goodput as a share of the shaped rate over the seconds the link was up, the time to
drain the queue, and the bytes that crossed the wire per byte of the files (headers, protocol,
retransmissions and anything sent again), for both uploaders. Needs root, ``ip`` and ``tc``;
without them it is skipped with the reason. Without ``sch_netem`` (this project's machines) the
link is two TUN devices joined by a user-space wire (``benchmarks/tunwire.py``) that applies the
same loss, rate and delay; without TUN devices either, it runs with the rate and the outages
only and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.bench_sink import _sink
from benchmarks.bench_upload import payload_bundles
from benchmarks.registry import BenchContext, BenchResult, Metric, benchmark
from capsight_edge.bundle.manifest import CLIP, MANIFEST, SENSORS
from capsight_edge.journal.journal import Journal
from capsight_edge.uploader.uploader import Uploader

HOST_IP, SINK_IP = "10.77.0.1", "10.77.0.2"


@dataclass
class Link:
    rate_mbit: float = 10.0
    rtt_ms: float = 40.0
    loss_pct: float = 1.0
    outage_s: float = 5.0
    outage_every_s: float = 60.0
    first_outage_s: float = 20.0


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)


def why_not() -> str:
    """Why this machine cannot run the benchmark ('' when it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs {tool} (iproute2)"
    return ""


class ShapedNet:
    """A namespace for the sink and a shaped veth pair to it; removed on close."""

    def __init__(self, link: Link) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns, self.host_if, self.ns_if = f"capsight-wifi-{tag}", f"csw{tag}a", f"csw{tag}b"
        self.link = link
        self.netem = False
        self.tx0 = 0

    def __enter__(self) -> ShapedNet:
        steps = [
            ("ip", "netns", "add", self.ns),
            ("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if),
            ("ip", "link", "set", self.ns_if, "netns", self.ns),
            ("ip", "addr", "add", f"{HOST_IP}/24", "dev", self.host_if),
            ("ip", "link", "set", self.host_if, "up"),
            *self._in_ns(("ip", "addr", "add", f"{SINK_IP}/24", "dev", self.ns_if)),
            *self._in_ns(("ip", "link", "set", self.ns_if, "up")),
            *self._in_ns(("ip", "link", "set", "lo", "up")),
        ]
        try:
            for step in steps:
                res = _run(*step)
                if res.returncode != 0:
                    raise RuntimeError(f"{' '.join(step)}: {res.stderr.strip()}")
            self._shape()
        except BaseException:
            self.close()
            raise
        return self

    def _in_ns(self, cmd: tuple[str, ...]) -> list[tuple[str, ...]]:
        return [("ip", "netns", "exec", self.ns, *cmd)]

    def _shape(self) -> None:
        """Upload direction (host -> sink): delay and loss (netem, where the kernel has it),
        then the rate (tbf). The other direction (the sink's answers, TCP's ACKs): the delay."""
        ln = self.link
        rate = f"{ln.rate_mbit}mbit"
        half = f"{ln.rtt_ms / 2:g}ms"
        netem = _run(
            "tc", "qdisc", "add", "dev", self.host_if, "root", "handle", "1:", "netem",
            "delay", half, "loss", f"{ln.loss_pct:g}%",
        )  # fmt: skip
        self.netem = netem.returncode == 0
        parent = ("parent", "1:1", "handle", "2:") if self.netem else ("root", "handle", "1:")
        res = _run(
            "tc", "qdisc", "add", "dev", self.host_if, *parent, "tbf", "rate", rate,
            "burst", "32kbit", "latency", "400ms",
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"tc tbf: {res.stderr.strip()}")
        if self.netem:
            for step in self._in_ns(
                ("tc", "qdisc", "add", "dev", self.ns_if, "root", "netem", "delay", half)
            ):
                _run(*step)

    def tx_bytes(self) -> int:
        return int(Path(f"/sys/class/net/{self.host_if}/statistics/tx_bytes").read_text())

    def set_up(self, up: bool) -> None:
        _run("ip", "link", "set", self.host_if, "up" if up else "down")

    def close(self) -> None:
        _run("ip", "link", "del", self.host_if)
        _run("ip", "netns", "del", self.ns)

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def shaper(self) -> str:
        return "a veth pair shaped with tc (netem, tbf)" if self.netem else "a veth pair (tbf)"


class TunNet(ShapedNet):
    """The same link where the kernel has no ``sch_netem``: a namespace for the sink and two
    TUN devices, one on each side, joined by a process (``benchmarks.tunwire``) that applies the
    loss, the rate and the delay to the packets in user space. Removed on close (the devices
    go with the process)."""

    def __init__(self, link: Link) -> None:
        super().__init__(link)
        tag = f"{os.getpid() % 100000}"
        self.host_if, self.ns_if = f"cst{tag}a", f"cst{tag}b"
        self.netem = True  # the delay and the loss are applied
        self.wire: subprocess.Popen[str] | None = None
        self.stats_path = Path(tempfile.mkdtemp(prefix="capsight-wire-")) / "stats.json"
        self.counts: dict[str, int] = {}

    def __enter__(self) -> TunNet:
        try:
            res = _run("ip", "netns", "add", self.ns)
            if res.returncode != 0:
                raise RuntimeError(f"ip netns add: {res.stderr.strip()}")
            ln = self.link
            self.wire = subprocess.Popen(
                [
                    sys.executable, "-m", "benchmarks.tunwire", "--host-if", self.host_if,
                    "--ns", self.ns, "--ns-if", self.ns_if, "--rate-mbit", f"{ln.rate_mbit}",
                    "--rtt-ms", f"{ln.rtt_ms}", "--loss-pct", f"{ln.loss_pct}",
                    "--stats", str(self.stats_path), "--parent", str(os.getpid()),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            assert self.wire.stdout is not None
            if self.wire.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the user-space wire did not start (rc {self.wire.wait()})")
            steps = [
                ("ip", "addr", "add", f"{HOST_IP}/24", "dev", self.host_if),
                ("ip", "link", "set", self.host_if, "up"),
                ("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{SINK_IP}/24", "dev",
                 self.ns_if),
                ("ip", "netns", "exec", self.ns, "ip", "link", "set", self.ns_if, "up"),
                ("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up"),
            ]  # fmt: skip
            for step in steps:
                res = _run(*step)
                if res.returncode != 0:
                    raise RuntimeError(f"{' '.join(step)}: {res.stderr.strip()}")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self.wire is not None and self.wire.poll() is None:
            self.wire.terminate()
            try:
                self.wire.wait(10)
            except subprocess.TimeoutExpired:
                self.wire.kill()
                self.wire.wait()
            if self.stats_path.is_file():
                self.counts = json.loads(self.stats_path.read_text())
        shutil.rmtree(self.stats_path.parent, ignore_errors=True)
        _run("ip", "netns", "del", self.ns)

    @property
    def shaper(self) -> str:
        return (
            "two TUN devices joined by a user-space wire (benchmarks/tunwire.py: this kernel "
            "has no sch_netem) that drops, rate-limits and delays the packets"
        )


@contextlib.contextmanager
def shaped_link(link: Link) -> Iterator[ShapedNet]:
    """The kernel's netem where it has one, else the user-space wire where TUN devices can be
    made, else the kernel's rate alone (the description then says: no delay, no loss)."""
    kernel = ShapedNet(link).__enter__()
    if kernel.netem or not os.path.exists("/dev/net/tun"):
        with kernel:
            yield kernel
        return
    kernel.close()
    with TunNet(link) as net:
        yield net


#: How often the link's transmit counter is read, and the bytes in one such interval that
#: mean data is flowing again after an outage (3 KB in 50 ms: 0.5 Mbit/s).
SAMPLE_S, FLOWING_BYTES = 0.05, 3000


class Outages:
    """Takes the link down for ``outage_s`` at ``first_outage_s`` and every ``outage_every_s``
    after the start; counts the seconds it was down, and reads the link's transmit counter
    every ``SAMPLE_S`` to tell how long after each return data flowed again."""

    def __init__(self, net: ShapedNet) -> None:
        self.net, self.down_s = net, 0.0
        self.returns: list[float] = []  # when the link came back up (monotonic)
        self.samples: list[tuple[float, int]] = []  # (monotonic, transmit counter)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Outages:
        self.t0 = time.monotonic()
        self._thread.start()
        self._sampler.start()
        return self

    def _run(self) -> None:
        ln = self.net.link
        at = ln.first_outage_s
        while not self._stop.wait(max(0.0, self.t0 + at - time.monotonic())):
            self.net.set_up(False)
            began = time.monotonic()
            self._stop.wait(ln.outage_s)
            self.net.set_up(True)
            self.returns.append(time.monotonic())
            self.down_s += time.monotonic() - began
            at += ln.outage_every_s

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.samples.append((time.monotonic(), self.net.tx_bytes()))

    def idle_after_returns(self) -> list[float]:
        """For each return of the link while the uploader still had data to send: the seconds
        until an interval of ``SAMPLE_S`` carried ``FLOWING_BYTES`` or more."""
        idle = []
        for back in self.returns:
            pairs = zip(self.samples, self.samples[1:], strict=False)
            for (_t0, b0), (t1, b1) in pairs:
                if t1 > back and b1 - b0 >= FLOWING_BYTES:
                    idle.append(t1 - back)
                    break
        return idle

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._sampler.join(30)
        self.net.set_up(True)


def _ours(url: str, token: str, work: Path) -> dict[str, float]:
    journal = Journal(work / "journal.db")
    up = Uploader(  # one upload at a time, as tuspy here
        journal, work, sink_url=url, token=token, uncapped=True, concurrency=1, heartbeat_s=0
    )
    try:
        stats = asyncio.run(up.run(until_idle=True, max_attempts=100))
    finally:
        journal.close()
    return {"restarts": stats.restarts, "retries": stats.retries, "ok": stats.bundles_uploaded}


def _tuspy(url: str, token: str, work: Path) -> dict[str, float]:
    """tuspy one file after another, each whole (its default), retrying a failed file from
    where the server says it stands (tuspy resumes by fingerprint within a client)."""
    from tusclient import client as tus

    c = tus.TusClient(url + "/files/", headers={"Authorization": f"Bearer {token}"})
    ok = 0
    for folder in sorted(p for p in (work / "bundles").iterdir() if p.name != ".partial"):
        for name in (CLIP, SENSORS, MANIFEST):
            uploader = c.uploader(
                file_path=str(folder / name),
                metadata={"bundle_id": folder.name, "filename": name},
                retries=100,
                retry_delay=1,
            )
            uploader.upload()
        ok += 1
    return {"ok": ok}


@benchmark("upload_wifi")
def bench_upload_wifi(ctx: BenchContext) -> BenchResult:
    link = Link(outage_s=1.5, first_outage_s=1.0, outage_every_s=60.0) if ctx.quick else Link()
    bundles, size = (2, 1 * 2**20) if ctx.quick else (6, 12 * 2**20)

    def described(netem: bool, shaper: str = "a shaped link") -> str:
        shaped = (
            f"{link.rate_mbit:g} Mbit/s, {link.rtt_ms:g} ms RTT and {link.loss_pct:g}% loss"
            if netem
            else f"{link.rate_mbit:g} Mbit/s (no delay, no loss)"
        )
        return (
            f"our uploader and tuspy between two network namespaces over {shaper}, "
            f"{shaped}, the link down {link.outage_s:g} s at {link.first_outage_s:g} s and "
            f"every {link.outage_every_s:g} s; {bundles} bundles of {size >> 20} MiB, one "
            "upload at a time"
        )

    res = BenchResult("upload_wifi", described(True))
    reason = why_not()
    if reason:
        res.notes.append(f"skipped: {reason}")
        return res
    root = Path(tempfile.mkdtemp(prefix="capsight-wifi-"))
    figures: dict[str, dict[str, float]] = {}
    try:
        with shaped_link(link) as net:
            sink, token = _sink(root / "sink", host=SINK_IP, wrap=("ip", "netns", "exec", net.ns))
            url = sink.url
            try:
                for who, send in (("ours", _ours), ("tuspy", _tuspy)):
                    work = root / who
                    journal = Journal(work / "journal.db")
                    total = payload_bundles(journal, work, f"wifi-{who}", bundles, size)
                    journal.close()
                    tx0, t0 = net.tx_bytes(), time.monotonic()
                    with Outages(net) as outages:
                        extra = send(url, token, work)
                    spent = time.monotonic() - t0
                    up_s = max(1e-6, spent - outages.down_s)
                    idle = outages.idle_after_returns()
                    figures[who] = {
                        "bytes": total,
                        "spent": spent,
                        "down": outages.down_s,
                        "idle_after": sum(idle) / len(idle) if idle else -1.0,
                        "outages": len(idle),
                        "goodput_mbit": total * 8 / up_s / 1e6,
                        "wire_per_byte": (net.tx_bytes() - tx0) / total,
                        **extra,
                    }
            finally:
                sink.stop()
            res.description = described(net.netem, net.shaper)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ours, theirs = figures["ours"], figures["tuspy"]
    share = ours["goodput_mbit"] / link.rate_mbit
    res.metrics += [
        Metric(
            "goodput while the link is up, as a share of the shaped rate",
            share,
            "x link",
            theirs["goodput_mbit"] / link.rate_mbit,
            "tuspy on the same link",
            ">= 0.9 and > tuspy",
            share >= 0.9 and ours["goodput_mbit"] > theirs["goodput_mbit"],
        ),
        Metric("time to drain the queue", ours["spent"], "s", theirs["spent"], "tuspy"),
        Metric(
            "bytes on the wire per byte of the files",
            ours["wire_per_byte"],
            "bytes",
            theirs["wire_per_byte"],
            "tuspy",
        ),
    ]
    if ours["outages"] and theirs["outages"]:  # each had data to send when the link came back
        res.metrics.append(
            Metric(
                "link idle after it came back (mean over the outages)",
                ours["idle_after"],
                "s",
                theirs["idle_after"],
                "tuspy",
            )
        )
    res.metrics += [
        Metric(
            "bundles delivered",
            ours["ok"],
            "bundles",
            bundles,
            "queued",
            "all",
            ours["ok"] == bundles,
        ),
    ]
    res.notes.append(
        f"link down {ours['down']:.1f} s during ours, {theirs['down']:.1f} s during tuspy's "
        f"({ours['outages']:.0f} and {theirs['outages']:.0f} outages with data still to send; "
        f"idle after one: until a {SAMPLE_S * 1000:.0f} ms reading of the transmit counter "
        f"shows {FLOWING_BYTES} bytes or more); "
        f"ours: {ours['restarts']:.0f} whole-file restarts, {ours['retries']:.0f} retries; "
        "wire bytes are the host side's interface transmit counter (IP and TCP headers, "
        "retransmissions and anything sent again)"
    )
    if isinstance(net, TunNet) and net.counts:
        c = net.counts
        res.notes.append(
            f"the user-space wire, both uploads: {c['up_packets']} packets towards the sink, "
            f"{c['up_lost']} dropped at random ({100 * c['up_lost'] / max(1, c['up_packets']):.2f}"
            f" %), {c['up_queue_drops']} by its full queue; {c['down_packets']} answers; "
            f"{c['undeliverable']} undeliverable while the link was down"
        )
    cc = Path("/proc/sys/net/ipv4/tcp_congestion_control")
    if cc.is_file():
        res.notes.append(f"TCP congestion control, both uploaders: {cc.read_text().strip()}")
    from capsight_edge.uploader.uploader import RTO_MAX_MS, socket_options

    res.notes.append(
        f"ours caps TCP's wait between retransmissions at {RTO_MAX_MS} ms (TCP_RTO_MAX_MS), "
        "so it goes on within a second of the link's return"
        if socket_options()
        else "this kernel has no TCP_RTO_MAX_MS (Linux 6.15+): ours waits out TCP's own "
        "backoff after an outage, as tuspy does"
    )
    return res
