"""A shaped link in user space, for kernels without ``sch_netem`` (this project's machines).

Two TUN devices, one in this network namespace and one in another, joined by this process: it
reads each IP packet the kernel sends into one device and writes it into the other after what a
store's Wi-Fi does to it. The kernels on both ends see a real link, with real TCP: a packet
lost here is retransmitted by the sender's TCP, a queue that fills here slows its congestion
window, as over ``tc netem`` and ``tbf``.

Upload direction (the host's device to the namespace's), in this order: a random loss
(``--loss-pct``, seeded); a bottleneck of ``--rate-mbit`` (each packet leaves when the one
before it has been sent at that rate, as a ``tbf`` does), whose queue drops a packet that would
wait more than ``--queue-ms``; then the one-way delay (half of ``--rtt-ms``). The other direction
(the sink's answers, TCP's acknowledgements): the one-way delay only. This is the shaping the
kernel path applies (netem with delay and loss, then tbf, on the host's side; netem with the
delay on the namespace's side).

Run by ``benchmarks.bench_wifi`` as ``python -m benchmarks.tunwire``; it prints ``ready`` once
both devices exist (the caller then gives them addresses and brings them up), and on SIGTERM
writes its counts (JSON) to ``--stats`` and exits. The devices exist while it runs: they go
with it, however it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
CLONE_NEWNET = 0x40000000
#: The most bytes one read from a TUN device returns (its MTU is 1500; room for a larger one).
MAX_PACKET = 65536


def open_tun(name: str) -> int:
    """A TUN device ``name`` (IP packets, no extra header) in this thread's network namespace,
    non-blocking; it exists while the descriptor is open."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def open_tun_in(namespace: str, name: str) -> int:
    """A TUN device made inside the named network namespace (``ip netns``); this process stays
    where it was."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
        try:
            return open_tun(name)
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(home)
        os.close(there)


class Wire:
    """The two directions' shaping and the packets in flight, by when each is due."""

    def __init__(
        self,
        host_fd: int,
        ns_fd: int,
        rate_mbit: float,
        rtt_ms: float,
        loss_pct: float,
        queue_ms: float,
        seed: int,
    ) -> None:
        self.host_fd, self.ns_fd = host_fd, ns_fd
        self.byte_s = 8 / (rate_mbit * 1e6)  # seconds to send one byte at the bottleneck
        self.delay_s = rtt_ms / 2000
        self.loss = loss_pct / 100
        self.queue_s = queue_ms / 1000
        self.rng = random.Random(seed)
        self.free_at = 0.0  # when the bottleneck has sent what it holds
        self.due: list[tuple[float, int, int, bytes]] = []  # (when, order, to fd, packet)
        self.order = 0
        self.counts = {
            "up_packets": 0,
            "up_bytes": 0,
            "up_lost": 0,
            "up_queue_drops": 0,
            "down_packets": 0,
            "undeliverable": 0,
        }

    def arrive(self, up: bool, packet: bytes, now: float) -> None:
        """A packet read from the host's device (``up``: towards the sink) or the other."""
        c = self.counts
        if up:  # loss, bottleneck, delay
            c["up_packets"] += 1
            c["up_bytes"] += len(packet)
            if self.rng.random() < self.loss:
                c["up_lost"] += 1
                return
            start = max(now, self.free_at)
            if start - now > self.queue_s:
                c["up_queue_drops"] += 1
                return
            self.free_at = start + len(packet) * self.byte_s
            when, to = self.free_at + self.delay_s, self.ns_fd
        else:
            c["down_packets"] += 1
            when, to = now + self.delay_s, self.host_fd
        self.order += 1
        heapq.heappush(self.due, (when, self.order, to, packet))

    def deliver(self, now: float) -> float | None:
        """Write what is due; returns the seconds until the next packet is (None: none held)."""
        while self.due and self.due[0][0] <= now:
            _, _, to, packet = heapq.heappop(self.due)
            try:
                os.write(to, packet)
            except OSError:  # that side's link is down (an outage): the packet is gone
                self.counts["undeliverable"] += 1
        return max(0.0, self.due[0][0] - now) if self.due else None


class Stop(Exception):
    """SIGTERM: the caller is done with the link."""


def run(wire: Wire) -> None:
    """Until SIGTERM (:class:`Stop`, raised by the handler :func:`main` installs)."""
    poll = select.epoll()
    poll.register(wire.host_fd, select.EPOLLIN)
    poll.register(wire.ns_fd, select.EPOLLIN)
    try:
        while True:
            wait = wire.deliver(time.monotonic())
            events = poll.poll(-1 if wait is None else wait)
            for fd, _ in events:
                while True:
                    try:
                        packet = os.read(fd, MAX_PACKET)
                    except BlockingIOError:
                        break
                    except OSError:  # the device is down
                        break
                    wire.arrive(fd == wire.host_fd, packet, time.monotonic())
    finally:
        poll.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tunwire")
    parser.add_argument("--host-if", required=True, help="the device in this namespace")
    parser.add_argument("--ns", required=True, help="the other namespace (ip netns)")
    parser.add_argument("--ns-if", required=True, help="the device in the other namespace")
    parser.add_argument("--rate-mbit", type=float, required=True)
    parser.add_argument("--rtt-ms", type=float, required=True)
    parser.add_argument("--loss-pct", type=float, required=True)
    parser.add_argument("--queue-ms", type=float, default=400.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stats", required=True, help="where the counts go at the end")
    parser.add_argument("--parent", type=int, help="exit when this process dies")
    args = parser.parse_args(argv)
    if args.parent:
        from capsight_edge.hygiene import die_with_parent

        die_with_parent(args.parent)

    def on_term(*_: object) -> None:
        raise Stop

    signal.signal(signal.SIGTERM, on_term)
    host_fd = open_tun(args.host_if)
    ns_fd = open_tun_in(args.ns, args.ns_if)
    wire = Wire(
        host_fd, ns_fd, args.rate_mbit, args.rtt_ms, args.loss_pct, args.queue_ms, args.seed
    )
    print("ready", flush=True)
    with contextlib.suppress(Stop):
        run(wire)
    Path(args.stats).write_text(json.dumps(wire.counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
