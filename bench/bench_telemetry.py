"""Telemetry cost: in-loop cost per tick, loop timing with telemetry on/off, 5 kHz sustain.

Run for real::

    python -m pytest bench/bench_telemetry.py --benchmark-enable -p no:cacheprovider -s

* in-loop cost -- Guard.step with a no-op policy, telemetry off / on without subscriber /
  on with a draining subscriber / on with a stalled subscriber (never reads, tiny queues);
  the difference of the on and off medians is what telemetry costs the loop;
* paced loop -- a 1 kHz Pacer loop, telemetry off (no publisher thread at all) and on, in
  back-to-back pairs of blocks: dt tails, the pooled p99 ratio and the spread of the per-pair
  ratios;
* 5 kHz -- a paced 5 kHz loop with a draining subscriber: the ring must never overflow.
"""

from __future__ import annotations

import gc
import socket
import threading
import time
from typing import Any

import numpy as np
import pytest
import zmq
from tg_timing import interleaved, is_smoke, summary_us

from tailguard import Guard, Pacer
from tailguard.envelope.model import Envelope, PolicyBinding, Thresholds, Timing
from tailguard.runtime.policy import _CheckedPolicy
from tailguard.sinks.telemetry import TelemetryPublisher
from tailguard.stats.histogram import LogLinearHistogram


class _NullPolicy(_CheckedPolicy):
    sha256 = None
    name = "null"

    def __init__(self, obs_size: int, action_size: int) -> None:
        self._init_buffers(obs_size, action_size)
        self._set_run(int, (0, 1))


def _envelope(period_ns: int = 10**9) -> Envelope:
    s = 10**9
    return Envelope(
        policy=PolicyBinding(
            sha256=None, obs_size=17, action_size=6, action_low=(-1e6,) * 6, action_high=(1e6,) * 6
        ),
        timing=Timing(
            period_ns=period_ns,
            dt=Thresholds(p50_ns=s, p95_ns=s, p99_ns=s, max_ns=10 * s),
            latency=Thresholds(p50_ns=s, p95_ns=s, p99_ns=s, max_ns=s),
            max_consecutive_overruns=3,
        ),
    )


def _stepper(guard: Guard, obs: np.ndarray) -> Any:
    return lambda: guard.step(obs)


def _ep() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class _Subscriber:
    """A SUB socket; draining in a thread, or stalled (connected, never reads)."""

    def __init__(self, ep: str, drain: bool) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        if not drain:
            self.sock.setsockopt(zmq.RCVHWM, 1)
            self.sock.setsockopt(zmq.RCVBUF, 4096)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(ep)
        self.stop = threading.Event()
        self.received = 0
        self.thread = threading.Thread(target=self._run, daemon=True) if drain else None
        if self.thread:
            self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(50):
                while True:
                    try:
                        self.sock.recv(zmq.NOBLOCK)
                        self.received += 1
                    except zmq.Again:
                        break

    def close(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


def _wait_subscribed(pub: TelemetryPublisher) -> None:
    end = time.monotonic() + 10
    while pub.subscribers == 0 and time.monotonic() < end:
        time.sleep(0.01)


@pytest.mark.benchmark(group="telemetry")
def bench_telemetry_in_loop_cost(benchmark: Any, request: pytest.FixtureRequest) -> None:
    """Guard.step cost with telemetry off / on (no, draining, stalled subscriber)."""
    blocks, per_block = (10, 200) if is_smoke(request.config) else (40, 5000)
    obs = np.zeros(17, np.float32)
    off = Guard(_NullPolicy(17, 6), _envelope())
    pubs = {
        name: TelemetryPublisher(_ep(), send_hwm=8 if name == "stalled" else 1000)
        for name in ("nosub", "sub", "stalled")
    }
    subs = [_Subscriber(pubs["sub"].endpoint, True), _Subscriber(pubs["stalled"].endpoint, False)]
    guards = {n: Guard(_NullPolicy(17, 6), _envelope(), telemetry=p) for n, p in pubs.items()}
    try:
        for p in pubs.values():
            if p is not pubs["nosub"]:
                _wait_subscribed(p)
        for g in (off, *guards.values()):
            for _ in range(200):
                g.step(obs)
        variants = {"off": lambda: off.step(obs)}
        for n, g in guards.items():
            variants[f"on_{n}"] = _stepper(g, obs)

        def run() -> dict[str, Any]:
            hists, gcs = interleaved(variants, blocks, per_block)
            s = {k: summary_us(h) for k, h in hists.items()}
            cost = {f"cost_p50_{k}_us": s[k]["p50"] - s["off"]["p50"] for k in s if k != "off"}
            return {"gc_collections": gcs, **s, **cost}

        info = benchmark.pedantic(run, rounds=1, iterations=1)
        time.sleep(0.3)
        info["stalled_send_dropped"] = pubs["stalled"].send_dropped
        info["ring_overflow"] = {n: p.ring.overflowed for n, p in pubs.items()}
        benchmark.extra_info.update(info)
    finally:
        for g in guards.values():
            g.close()
        for s in subs:
            s.close()


def _paced(guard: Guard, pacer: Pacer, ticks: int, hist: LogLinearHistogram) -> None:
    obs = np.zeros(17, np.float32)
    clock = time.perf_counter_ns
    last = 0
    for _ in range(ticks):
        pacer.wait()
        t = clock()
        if last:
            hist.record(t - last)
        last = t
        guard.step(obs)


_DRAIN_SCRIPT = """
import sys, zmq
ctx = zmq.Context(); sock = ctx.socket(zmq.SUB); sock.setsockopt(zmq.LINGER, 0)
sock.setsockopt(zmq.SUBSCRIBE, b""); sock.connect(sys.argv[1])
while True:
    if sock.poll(1000):
        sock.recv()
"""


class _SubscriberProcess:
    """A draining subscriber in its own process, as a monitor runs (no shared GIL)."""

    def __init__(self, ep: str) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-c", _DRAIN_SCRIPT, ep],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def _paced_block(guard: Guard, ticks: int, hist: LogLinearHistogram) -> None:
    gc.collect()  # not inside the timed block
    pacer = Pacer(1000.0, spin_ns=200_000)
    pacer.start()
    _paced(guard, pacer, ticks, hist)


@pytest.mark.benchmark(group="telemetry")
def bench_telemetry_paced_loop_dt(benchmark: Any, request: pytest.FixtureRequest) -> None:
    """A 1 kHz paced loop: dt tails with telemetry off vs on (subscriber in another process).

    Off means no publisher thread at all: every on block gets a fresh publisher and guard,
    warmed up with the subscriber connected, and closes them afterwards. Blocks run in pairs,
    off then on or on then off (alternating), so both halves of a pair share the VM's noise of
    that moment. Reported: the pooled dt p99 ratio on/off over all ticks, and the median and
    quartiles of the per-pair p99 ratios (a noise burst moves the pooled ratio whenever it
    lands in one variant's block; the median pair is robust to that).
    """
    pairs, per_block = (2, 200) if is_smoke(request.config) else (24, 1000)
    ep = _ep()
    sub = _SubscriberProcess(ep)
    off = Guard(_NullPolicy(17, 6), _envelope(10**6))
    counters = {"ring_overflow": 0, "send_dropped": 0}

    def on_block(hist: LogLinearHistogram) -> None:
        pub = TelemetryPublisher(ep)
        guard = Guard(_NullPolicy(17, 6), _envelope(10**6), telemetry=pub)
        try:
            _wait_subscribed(pub)
            _paced_block(guard, 200, LogLinearHistogram(2, 10**11))  # hello, first drains
            _paced_block(guard, per_block, hist)
        finally:
            guard.close()
        counters["ring_overflow"] += pub.ring.overflowed
        counters["send_dropped"] += pub.send_dropped

    def run() -> dict[str, Any]:
        pooled = {"off": LogLinearHistogram(2, 10**11), "on": LogLinearHistogram(2, 10**11)}
        ratios = []
        for i in range(pairs):
            block = {"off": LogLinearHistogram(2, 10**11), "on": LogLinearHistogram(2, 10**11)}
            for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                if name == "off":
                    _paced_block(off, per_block, block["off"])
                else:
                    on_block(block["on"])
            ratios.append(
                block["on"].value_at_percentile(99) / block["off"].value_at_percentile(99)
            )
            for name, h in block.items():
                pooled[name].merge(h)
        s = {k: summary_us(h) for k, h in pooled.items()}
        q1, median, q3 = np.percentile(ratios, [25, 50, 75])
        return {
            **s,
            "dt_p99_ratio_on_off": s["on"]["p99"] / s["off"]["p99"],
            "dt_p99_ratio_median_of_pairs": float(median),
            "dt_p99_ratio_q1": float(q1),
            "dt_p99_ratio_q3": float(q3),
            "pairs": pairs,
            "pair_ratios": [round(r, 3) for r in ratios],
        }

    try:
        info = benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        sub.close()
    info.update(counters)
    benchmark.extra_info.update(info)
    print(
        f"\npaced 1 kHz, {pairs} pairs x {per_block} ticks: dt p99 off "
        f"{info['off']['p99']:.0f} us, on {info['on']['p99']:.0f} us; "
        f"ratio pooled {info['dt_p99_ratio_on_off']:.3f}, "
        f"median of pairs {info['dt_p99_ratio_median_of_pairs']:.3f} "
        f"(quartiles {info['dt_p99_ratio_q1']:.3f}-{info['dt_p99_ratio_q3']:.3f})"
    )


@pytest.mark.benchmark(group="telemetry")
def bench_telemetry_5khz_sustained(benchmark: Any, request: pytest.FixtureRequest) -> None:
    """A paced 5 kHz loop with a draining subscriber: no ring overflow, nothing lost."""
    ticks = 2000 if is_smoke(request.config) else 25_000
    pub = TelemetryPublisher(_ep())
    sub = _Subscriber(pub.endpoint, True)
    guard = Guard(_NullPolicy(17, 6), _envelope(200_000), telemetry=pub)
    try:
        _wait_subscribed(pub)
        hist = LogLinearHistogram(2, 10**11)

        def run() -> dict[str, Any]:
            pacer = Pacer(5000.0, spin_ns=100_000)
            pacer.start()
            _paced(guard, pacer, ticks, hist)
            time.sleep(0.2)
            return {"dt": summary_us(hist), "missed_cycles": pacer.missed_cycles}

        info = benchmark.pedantic(run, rounds=1, iterations=1)
        info.update(
            ring_overflow=pub.ring.overflowed, send_dropped=pub.send_dropped, ticks=guard.tick
        )
        benchmark.extra_info.update(info)
        assert pub.ring.overflowed == 0
    finally:
        guard.close()
        sub.close()
