"""The runtime guard. ``Guard.step`` is THE hot path of tailguard (measured by bench/).

One tick, when everything is in order (the common case), costs: two clock reads, copying
the observation into the policy's bound input buffer, the inference (with the action check
folded into the ONNX graph, see ``runtime/policy.py``), one byte-level test over the check
vector (it covers the observation too when the policy reports ``checks_observation``;
otherwise the observation gets its own byte test first), a handful of integer compares
and two stores into the tick ring. Nothing is allocated that the GC tracks,
nothing is logged, nothing blocks. The ring is folded into the histograms every 1024
ticks.

There is exactly one copy of that plain path: the inlined lines of :meth:`Guard.step` and
their continuation :meth:`Guard._resolve` (a clean tick that crossed a percentile threshold
or a periodic duty). Anything else -- a violation, a non-nominal state, deadline mode, the
first tick, a pending command -- goes through the general path (:meth:`Guard._judge`),
which re-checks with the plain numpy reference, asks :func:`~tailguard.runtime.state.decide`
what the tick does, applies the one transition table and picks the action. Both paths give
the same actions, states, records and counters (``tests/guard/test_step_differential.py``).
What every check and response means is stated once, in ``tailguard.runtime.state``.
Percentile checks over the sliding window are exact and O(1) per tick: the guard keeps the
tick numbers of samples above each threshold and compares their count with what the
percentile allows (p_q <= T over n samples <=> at most n - ceil(q*n) samples > T).
"""

from __future__ import annotations

import gc
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from tailguard.envelope.model import Envelope, load_envelope
from tailguard.errors import ConfigError, EnvelopeError, HashMismatchError
from tailguard.runtime.action_rules import NO_TICK, ActionWindowRules
from tailguard.runtime.deadline import (
    InlineDeadlineRunner,
    ThreadDeadlineRunner,
    make_deadline_runner,
)
from tailguard.runtime.events import FaultRecord, NoteRecord, StateChangeRecord, ViolationRecord
from tailguard.runtime.policy import (
    OBS_FLAGS,
    SLACK_FLAGS,
    TOP_BYTES,
    CallablePolicy,
    OnnxPolicy,
    _CheckedPolicy,
    all_pass,
)
from tailguard.runtime.state import ActionSource as _Source
from tailguard.runtime.state import Event as _Event
from tailguard.runtime.state import (
    GuardState,
    Hysteresis,
    Response,
    Violation,
    decide,
    event_for,
    next_state,
)
from tailguard.runtime.tick_ring import STATE_CODES, VIOLATION_BITS, TelemetryRing
from tailguard.stats import NEVER_NS
from tailguard.stats.histogram import LogLinearHistogram

__all__ = ["Guard", "Fallback"]

# The runtime does no I/O itself: a path given as ``recorder=`` or an endpoint given as
# ``telemetry=`` is turned into a sink by a factory that the package root registers
# (``tailguard/__init__.py`` wires in ``tailguard.sinks``), so this layer never imports them.
_SINK_FACTORIES: dict[str, Callable[..., Any]] = {}


def register_sink_factory(kind: str, factory: Callable[..., Any]) -> None:
    """Make ``Guard(recorder=PATH)`` / ``Guard(telemetry=ENDPOINT)`` build sinks with ``factory``.

    Args:
        kind: ``"recorder"`` (called with the path and ``clock=``, the guard's time base) or
            ``"telemetry"`` (called with the endpoint, ``hello=`` and ``allow_non_loopback=``).
        factory: returns an object with ``append(record)`` (and ``ring`` for telemetry).
    """
    if kind not in ("recorder", "telemetry"):
        raise ConfigError(
            f"unknown sink kind {kind!r}; valid choices are ['recorder', 'telemetry']"
        )
    _SINK_FACTORIES[kind] = factory


def _sink_factory(kind: str) -> Callable[..., Any]:
    try:
        return _SINK_FACTORIES[kind]
    except KeyError:
        raise ConfigError(
            f"no {kind} sink is registered: import tailguard (the package root wires them in) "
            f"or pass a sink object instead of a path/endpoint"
        ) from None


Fallback: TypeAlias = str | Callable[[np.ndarray], Any] | _CheckedPolicy

_NEVER = NEVER_NS  # disables a check; also the histograms' top, so passing values fit
_HIST_MAX = NEVER_NS
_NO_SAMPLE = -(1 << 62)  # ring value for "nothing measured" (a first tick's dt)
_RING = 8192  # tick ring slots (also what a telemetry reader may lag behind)
_FLUSH_EVERY = 1024  # fold the ring into the histograms every 1024 ticks (~20 us)
_INTERVAL = 8 * 1024  # ticks per histogram interval ("window" in stats(); rolls on a flush)

# Fast-path outcome codes (0 = clean).
_OBS_SHAPE, _OBS_NONFINITE, _POLICY_ERROR, _DEADLINE, _ACTION = 1, 2, 3, 4, 5
_QUANTILES = (0.5, 0.95, 0.99)
_LAT_WINDOW = (Violation.LATENCY_P50, Violation.LATENCY_P95, Violation.LATENCY_P99)
_DT_WINDOW = (Violation.DT_P50, Violation.DT_P95, Violation.DT_P99)
_ACTION_WINDOW = (Violation.ACTION_SATURATION, Violation.ACTION_FROZEN, Violation.ACTION_CHATTER)
_WINDOW_KINDS = frozenset(_LAT_WINDOW + _DT_WINDOW + _ACTION_WINDOW)
_REPORT_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def _ns(value: int | None) -> int:
    return _NEVER if value is None else int(value)


class Guard:
    """Wraps a policy in the control loop and enforces an envelope on every tick.

    What each check, response and state does -- including the first tick, the rate limit,
    the fallback, hold and overrun streaks, recovery, windows and timestamps -- is stated
    once, in the docstring of ``tailguard.runtime.state``.

    Args:
        policy: an :class:`OnnxPolicy` (or :class:`CallablePolicy`).
        envelope: the :class:`Envelope` to enforce (see ``load_envelope``).
        fallback: who acts in FALLBACK: ``"hold"`` (repeat the last applied action),
            ``"zero"`` (zeros clipped to bounds, reached at ``max_delta`` per tick), a
            callable ``f(obs) -> action``, or a second policy (e.g. a timing-robust
            OnnxPolicy with the same interface); its output is limited like the policy's.
        clock: integer-nanosecond monotonic clock. Inject a simulated clock to run the
            same guard in simulated time.
        deadline_ns: if set, inference must finish within this many ns of tick start, or
            the tick is answered with the hold/fallback action and the late result is
            discarded (``Violation.DEADLINE_MISS``).
        deadline_mode: ``"thread"`` (worker thread, answers at the deadline; wall clock) or
            ``"inline"`` (judged after the call; for simulated clocks).
        recorder: a ``FlightRecorder`` (or a path to create one) that receives every
            violation and state change; written off the hot path by its own thread. A
            recorder the guard creates stamps its own records on the guard's time base
            (one file, one clock); pass ``clock=`` yourself to a recorder you create.
        telemetry: a ZMQ endpoint (``"tcp://127.0.0.1:5555"``, ``"ipc://..."``) to publish
            per-tick records, events and histograms on (off by default), or a publisher
            object with ``ring``/``append``/``close``. The hot path only writes the ring.
        allow_non_loopback: permit a telemetry endpoint that is not on loopback.
        allow_hash_mismatch: run a policy whose sha256 differs from the envelope's.

    Raises:
        EnvelopeError: the envelope does not fit the policy (sizes, bounds).
        HashMismatchError: the policy file is not the one the envelope was written for.
        ConfigError: an unknown fallback or deadline mode, a non-positive ``deadline_ns``.
        PolicyLoadError: the envelope's observation range needs the ONNX policy's check
            graph rebuilt, and its file changed since it was loaded.
        TypeError: ``clock()`` does not return a Python int.
    """

    def __init__(
        self,
        policy: _CheckedPolicy,
        envelope: Envelope,
        fallback: Fallback = "hold",
        *,
        clock: Callable[[], int] = time.perf_counter_ns,
        deadline_ns: int | None = None,
        deadline_mode: str = "thread",
        recorder: Any = None,
        telemetry: Any = None,
        allow_non_loopback: bool = False,
        allow_hash_mismatch: bool = False,
    ) -> None:
        self._check_binding(policy, envelope, allow_hash_mismatch)
        probe = clock()
        if type(probe) is not int:
            raise TypeError(
                f"clock() must return a Python int of nanoseconds, got {type(probe).__name__}; "
                "wrap it, e.g. lambda: int(sim.now_ns)"
            )
        self.policy = policy
        self.envelope = env = envelope
        self._clock = clock
        pb, timing = env.policy, env.timing
        # The observation range is tested inside the policy's check vector (no work of
        # the guard's own on a nominal tick); set before the buffers are bound below.
        self._range_on = env.observations is not None
        obs_limits = env.observations.limits() if env.observations is not None else (None, None)
        policy.set_observation_range(*obs_limits)
        policy.set_limits(pb.action_low, pb.action_high, env.actions.max_delta)
        self._low, self._high, self._rate = policy.limits

        # -- buffers of the hot path (allocated once) --
        self._obs_flat = policy._obs
        self._obs_bytes = policy._obs_bytes
        self._obs_size = policy.obs_size
        # A policy whose check vector also tests the observation (checks_observation) makes
        # one byte test per tick enough; _judge then tells a bad observation from a bad
        # action (the policy's output on it is never applied, its state never advanced).
        self._obs_test = not getattr(policy, "checks_observation", False)
        self._run = policy._run_fn
        self._run_args = policy._run_args
        self._slack_bytes = policy._slack_bytes
        views = []
        for slot in (0, 1):
            v = policy._act[slot].view()
            v.flags.writeable = False
            views.append(v)
        self._views = tuple(views)
        self._cur = 0
        self._deadline_ns = deadline_ns or 0
        self._deadline: InlineDeadlineRunner | ThreadDeadlineRunner | None = None
        if deadline_ns is not None:
            if deadline_ns <= 0:
                raise ConfigError(f"deadline_ns must be a positive int of ns, got {deadline_ns}")
            self._deadline = make_deadline_runner(deadline_mode, policy._run_fn, clock)

        # -- thresholds (disabled checks become _NEVER) --
        self._period_ns = timing.period_ns
        self._lat_max = _ns(timing.latency.max_ns)
        self._dt_max = _ns(timing.dt.max_ns)
        self._ok_lat = min(self._lat_max, self._period_ns)  # above: a violation or overrun
        self._age_max = _ns(timing.obs_age_max_ns)
        self._age_on = timing.obs_age_max_ns is not None
        self._max_overruns = timing.max_consecutive_overruns
        lat_t = [_ns(getattr(timing.latency, f"p{q}_ns")) for q in (50, 95, 99)]
        dt_t = [_ns(getattr(timing.dt, f"p{q}_ns")) for q in (50, 95, 99)]
        self._lat_thr, self._dt_thr = lat_t, dt_t
        self._lat_p50, self._dt_p50 = min(lat_t), min(dt_t)  # cheapest "anything to note"
        # step()'s plain path takes ticks at or below these (nothing to check or note);
        # the rest go through _resolve, which may still find them clean.
        self._fast_lat = min(self._ok_lat, self._lat_p50)
        self._fast_dt = min(self._dt_max, self._dt_p50)
        w = env.window
        self._window_ticks, self._check_every = w.ticks, w.check_every_ticks
        self._allowed = [w.ticks - math.ceil(q * w.ticks) for q in _QUANTILES]
        cap = w.ticks + w.check_every_ticks
        self._lat_exceed: list[deque[int]] = [deque(maxlen=cap) for _ in _QUANTILES]
        self._dt_exceed: list[deque[int]] = [deque(maxlen=cap) for _ in _QUANTILES]
        self._window_active: set[Violation] = set()
        self._action_rules = self._make_action_rules(env)
        self._next_probe = NO_TICK  # the next tick the action rules sample (chatter)
        self._intervened = -2  # the latest tick whose applied action was not the policy's
        self._counted_window: set[Violation] = set()
        self._responses = dict(env.responses)
        rec = env.recovery
        self._rule = Hysteresis(rec.recovery_ticks, rec.dwell_ns, rec.max_hold_ticks)
        # First tick with a latency / a period sample since the start or the last reset():
        # a window is judged once it holds window.ticks samples (_window_due).
        self._lat_from, self._dt_from = 1, 2

        # -- histograms: interval (hot path) + lifetime (merged every window) --
        self._h_dt = LogLinearHistogram(2, _HIST_MAX)
        self._h_lat = LogLinearHistogram(2, _HIST_MAX)
        self._h_dt_life = LogLinearHistogram(2, _HIST_MAX)
        self._h_lat_life = LogLinearHistogram(2, _HIST_MAX)
        self._h_dt_last = LogLinearHistogram(2, _HIST_MAX)
        self._h_lat_last = LogLinearHistogram(2, _HIST_MAX)
        # Every tick stores raw dt/latency in the tick ring (two array stores); every 1024
        # ticks _flush_ring() folds them into the interval histograms in one numpy pass.
        # A telemetry publisher reads the same ring, so telemetry costs a tick nothing.
        self._ring = ring = TelemetryRing(_RING)
        ring.head_source = self._completed_ticks
        self._ring_lat, self._ring_dt, self._ring_mask = ring.latency_ns, ring.dt_ns, ring.mask
        self._flushed = 0  # last tick folded into the histograms

        # -- fallback and safe action --
        self._fallback_kind, self._fallback = self._resolve_fallback(fallback, policy)
        self._safe_kind = env.safe_action
        self._zero_action = policy.clip(np.zeros(policy.action_size, dtype=np.float32))

        # -- recorder --
        self._last_t0 = probe  # the guard's time before its first tick (recorder clock)
        self._recorder = self._make_recorder(recorder)
        self._telemetry = self._make_telemetry(telemetry, allow_non_loopback)
        self._sinks = tuple(x for x in (self._recorder, self._telemetry) if x is not None)
        # trip/reset requests from other threads, applied in order at the next tick
        self._pending: deque[tuple[str, str]] = deque(maxlen=64)
        self._posted_events: deque[tuple[Any, ...]] = deque(maxlen=256)  # request_event
        if hasattr(self._telemetry, "attach"):  # reads tick_ring; may request trip/reset
            self._telemetry.attach(self)
        self._tick_bits = 0

        # -- state and counters --
        self._state = GuardState.NOMINAL
        self._plain_path = True  # False: every tick takes the general path (tests compare)
        self._set_fast(False)  # the first tick has no dt: it goes through _judge
        self._skip_dt = True
        self._has_prev = False  # no action applied yet: the first one is not rate-limited
        self._policy_on = True  # False while LATCHED: the policy is not run
        self._tick = 0
        self._next_check = self._check_every  # window percentiles due (_window_due)
        self._next_flush = _FLUSH_EVERY  # ring -> histograms due (_flush_ring)
        if self._action_rules is not None:
            self._next_probe = self._action_rules.next_probe(0, self._next_check)
        self._reschedule()  # _next_due: whichever of them comes first
        self._next_roll = _INTERVAL
        # The latest run of overruns: its length and the tick it ended on. Consecutive
        # means on consecutive ticks, so no path needs to reset it on a clean tick.
        self._overruns = 0
        self._last_overrun_tick = -2
        self._hold_streak = 0
        self._clean_streak = 0
        self._state_since_ns: int | None = None
        self._latch_action: np.ndarray | None = None
        self._fb_cur = 0
        self._counts = dict.fromkeys(Violation, 0)
        self._state_ns = dict.fromkeys(GuardState, 0)
        self._state_ticks = dict.fromkeys(GuardState, 0)  # non-nominal only; nominal derived
        self._interventions = 0
        self._transitions = 0
        self._overrun_total = 0
        self._faults: dict[str, int] = {"clock_backwards": 0}

    # ------------------------------------------------------------------ construction --
    @classmethod
    def from_files(cls, policy_path: str | Path, envelope_path: str | Path, **kwargs: Any) -> Guard:
        """Load ``OnnxPolicy(policy_path)`` and ``load_envelope(envelope_path)``, then guard."""
        return cls(OnnxPolicy(policy_path), load_envelope(envelope_path), **kwargs)

    @staticmethod
    def _check_binding(policy: _CheckedPolicy, env: Envelope, allow_mismatch: bool) -> None:
        pb = env.policy
        where = getattr(policy, "path", None)
        if (pb.obs_size, pb.action_size) != (policy.obs_size, policy.action_size):
            raise EnvelopeError(
                f"the envelope is for obs_size {pb.obs_size} / action_size {pb.action_size}, "
                f"the policy has {policy.obs_size} / {policy.action_size}; use the envelope "
                "written for this policy (tailguard envelope init --policy ...)",
                where,
            )
        have, want = policy.sha256, pb.sha256
        if have is not None and want is not None and have != want and not allow_mismatch:
            raise HashMismatchError(
                f"policy sha256 {have[:12]}... differs from the envelope's "
                f"{want[:12]}...: the envelope was audited for another file. Re-audit, "
                "or pass allow_hash_mismatch=True to run it anyway",
                where,
            )

    def _make_action_rules(self, env: Envelope) -> ActionWindowRules | None:
        rules = env.action_rules
        if not rules.any:
            return None
        sat, frozen, chatter = rules.saturation, rules.frozen, rules.chatter
        return ActionWindowRules(
            saturation=None if sat is None else (sat.fraction, sat.margin),
            frozen=None if frozen is None else (frozen.ticks, frozen.epsilon, frozen.obs_delta),
            chatter=None if chatter is None else (chatter.fraction, chatter.min_delta),
            low=self._low,
            high=self._high,
            window_ticks=env.window.ticks,
        )

    def _resolve_fallback(self, fallback: Fallback, policy: _CheckedPolicy) -> tuple[str, Any]:
        if isinstance(fallback, str):
            if fallback not in ("hold", "zero"):
                raise ConfigError(
                    f"unknown fallback '{fallback}'; valid choices are ['hold', 'zero'], a "
                    "callable, or a policy"
                )
            return fallback, None
        if isinstance(fallback, _CheckedPolicy):
            if (fallback.obs_size, fallback.action_size) != (policy.obs_size, policy.action_size):
                raise ConfigError(
                    f"fallback policy sizes {fallback.obs_size}/{fallback.action_size} differ "
                    f"from the policy's {policy.obs_size}/{policy.action_size}"
                )
            fallback.set_limits(self._low, self._high, None)
            return "policy", fallback
        if callable(fallback):
            return "policy", CallablePolicy(
                fallback, policy.obs_size, policy.action_size, name="fallback"
            )
        raise ConfigError(
            f"fallback must be 'hold', 'zero', a callable or a policy; got {fallback!r}"
        )

    def _make_telemetry(self, telemetry: Any, allow_non_loopback: bool) -> Any:
        if telemetry is None or hasattr(telemetry, "ring"):
            return telemetry
        env = self.envelope
        return _sink_factory("telemetry")(
            str(telemetry),
            hello={
                "policy_sha256": self.policy.sha256,
                "policy": getattr(self.policy, "name", ""),
                "envelope_sha256": env.digest() if hasattr(env, "digest") else None,
                "period_ns": env.timing.period_ns,
                # what `tailguard monitor` compares the live tail with (latency_p99_envelope)
                "envelope_latency_p99_ns": env.timing.latency.p99_ns,
            },
            allow_non_loopback=allow_non_loopback,
        )

    def _emit(self, record: tuple[Any, ...]) -> None:
        """Hand an event to every sink (flight recorder, telemetry); never blocks."""
        for sink in self._sinks:
            sink.append(record)

    def request_trip(self, reason: str = "requested") -> None:
        """Latch the guard at its next tick (safe to call from another thread)."""
        self._post(self._pending, ("trip", reason), "commands_dropped")

    def request_reset(self, reason: str = "requested") -> None:
        """Reset the guard at its next tick (safe to call from another thread)."""
        self._post(self._pending, ("reset", reason), "commands_dropped")

    def request_event(self, record: tuple[Any, ...]) -> None:
        """Emit ``record`` through the guard's event path (flight recorder, telemetry) at
        its next tick, from the loop's thread: the sinks have one producer. Safe to call
        from another thread (e.g. the telemetry thread reporting a refused command)."""
        self._post(self._posted_events, record, "events_dropped")

    def _post(self, queue: deque[Any], item: tuple[Any, ...], drop_counter: str) -> None:
        if len(queue) == queue.maxlen:  # full: the oldest entry goes, and is counted
            self._faults[drop_counter] = self._faults.get(drop_counter, 0) + 1
        queue.append(item)
        self._set_fast(False)  # after the append: see the end of _resolve_inner

    def _make_recorder(self, recorder: Any) -> Any:
        if recorder is None or hasattr(recorder, "append"):
            return recorder
        # The recorder stamps the records it adds itself (faults about its own queue or
        # file) from its writer thread. It gets the guard's time base, read without calling
        # the guard's clock from that thread: a simulated clock may not be thread-safe,
        # and reading it must not disturb the loop's time.
        return _sink_factory("recorder")(recorder, clock=self._time_of_last_tick)

    def _time_of_last_tick(self) -> int:
        """The start of the latest tick on the guard's clock, ns (any thread may call)."""
        return self._last_t0

    # ------------------------------------------------------------------ the hot path --
    def step(self, obs: Any, obs_timestamp_ns: int | None = None) -> np.ndarray:
        """Run one guarded tick: observation in, safe action out. Never raises.

        What each check and response does is stated once, in ``tailguard.runtime.state``.

        Args:
            obs: float observation, shape [obs_size] or [1, obs_size]: a numpy array of any
                real dtype, or any array-like (list, tuple, ...); all are timed alike.
            obs_timestamp_ns: when the observation was taken, on the guard's clock; used by
                the obs-age check when the envelope sets ``timing.obs_age_max_ns``.

        Returns:
            float32 [action_size], finite, and within the envelope's bounds and rate limit
            unless its response for that action check is ``log``. Read-only; it stays
            valid until the next call (copy it to keep it).
        """
        t0 = self._clock()
        if self._general:  # not nominal, deadline mode, a command or window check pending
            return self._step_general(t0, obs, obs_timestamp_ns)
        tick = self._tick + 1
        self._tick = tick
        dt = t0 - self._last_t0
        self._last_t0 = t0
        cur = self._cur
        bad = 0
        try:  # _take_obs, inlined
            if obs.size == self._obs_size:
                self._obs_flat[...] = obs
            else:
                bad = self._convert_obs(obs)
        except Exception:  # a list, a tuple, ...: converted here, so it is timed like any
            bad = self._convert_obs(obs)
        if not bad:
            if (
                self._obs_test
                and not self._obs_bytes.tobytes()[TOP_BYTES].translate(OBS_FLAGS).isascii()
            ):
                bad = _OBS_NONFINITE  # NaN, inf or |x| >= 2**127 somewhere
            else:
                try:
                    self._run(self._run_args[cur])
                except Exception:
                    bad = _POLICY_ERROR
                else:
                    if (
                        not self._slack_bytes[cur]
                        .tobytes()[TOP_BYTES]
                        .translate(SLACK_FLAGS)
                        .isascii()
                    ):
                        bad = _ACTION  # some check failed: _resolve finds which
        lat = self._clock() - t0
        try:  # a timestamp that is not a number raises here: _resolve judges it
            if (
                not bad
                and lat <= self._fast_lat
                and dt <= self._fast_dt
                and tick < self._next_due
                and (obs_timestamp_ns is None or 0 <= t0 - obs_timestamp_ns <= self._age_max)
            ):
                j = tick & self._ring_mask
                self._ring_lat[j] = lat
                self._ring_dt[j] = dt
                self._cur = cur ^ 1
                return self._views[cur]
        except Exception:
            pass
        return self._resolve(t0, dt, lat, bad, obs_timestamp_ns)

    # ------------------------------------------------------------ off the hot path --
    def _step_general(self, t0: int, obs: Any, obs_timestamp_ns: Any) -> np.ndarray:
        """The general path: every tick that may not take step()'s plain path (not nominal,
        deadline mode, a command pending, a window violation active). The policy may be off
        (LATCHED) or run against a deadline; :meth:`_judge` decides everything else."""
        try:
            tick = self._tick + 1
            self._tick = tick
            dt = t0 - self._last_t0
            self._last_t0 = t0
            cur = self._cur
            bad = 0
            if self._policy_on:
                bad = self._take_obs(obs)
                if not bad:
                    bad = self._run_checked(cur, t0)
                    if not bad and not all_pass(self._slack_bytes[cur], SLACK_FLAGS):
                        bad = _ACTION
            lat = self._clock() - t0
            if bad == _DEADLINE and lat > self._deadline_ns:
                lat = self._deadline_ns  # the guard answered at the deadline (inline: modeled)
            return self._judge(t0, dt, lat, bad, obs_timestamp_ns)
        except Exception as exc:  # a bug of ours must not crash the robot's loop
            return self._emergency_latch(t0, exc)

    def _take_obs(self, obs: Any) -> int:
        """Copy ``obs`` into the policy's input and test it: 0 or an outcome code.

        ``step`` inlines the same lines (a method call costs ~0.1 us there)."""
        try:
            if obs.size == self._obs_size:
                self._obs_flat[...] = obs
                bad = 0
            else:
                bad = self._convert_obs(obs)
        except Exception:
            bad = self._convert_obs(obs)
        if bad or not self._obs_test:  # else the policy's check vector tests it
            return bad
        return 0 if all_pass(self._obs_bytes, OBS_FLAGS) else _OBS_NONFINITE

    def _convert_obs(self, obs: Any) -> int:
        """Any array-like of shape [O] or [1, O] into the input buffer: 0 or _OBS_SHAPE."""
        try:
            arr = np.asarray(obs, dtype=np.float32)
            if arr.shape not in ((self._obs_size,), (1, self._obs_size)):
                return _OBS_SHAPE
            self._obs_flat[...] = arr.reshape(-1)
        except Exception:
            return _OBS_SHAPE
        return 0

    def _age_ok(self, t0: int, obs_timestamp_ns: Any) -> bool:
        """The obs-age rule (see ``tailguard.runtime.state``); never raises."""
        if obs_timestamp_ns is None or not self._age_on:
            return True
        try:
            return bool(0 <= t0 - obs_timestamp_ns <= self._age_max)
        except Exception:  # not a number, or an array of several
            return False

    def _set_fast(self, fast: bool) -> None:
        """Whether the next tick may take the plain nominal path of :meth:`step`."""
        self._fast = fast
        self._general = not (fast and self._plain_path) or self._deadline is not None

    @staticmethod
    def _note_exceed(queues: list[deque[int]], thresholds: list[int], tick: int, v: int) -> None:
        for q, threshold in zip(queues, thresholds, strict=True):
            if v > threshold:
                q.append(tick)

    def _reschedule(self) -> None:
        self._next_due = min(self._next_check, self._next_flush, self._next_probe)

    def _probe(self, tick: int, ok: bool) -> None:
        """Sample this tick's action for the action rules (a tick before a check tick)."""
        rules = self._action_rules
        if rules is None:
            self._next_probe = NO_TICK
        else:
            act, cur = self.policy._act, self._cur
            # the last applied action is the policy's own output unless the last tick
            # intervened (held, clipped, fallback, latched): then it is not handed in
            prev = act[1 - cur] if self._intervened != tick - 1 else None
            self._next_probe = rules.probe(tick, act[cur], ok, self._next_check, prev)
        self._reschedule()

    def _flush_ring(self, upto: int | None = None) -> None:
        """Fold ticks not yet counted (up to ``upto``, default all) into the histograms."""
        last = self._tick if upto is None else upto
        first = max(self._flushed + 1, last - self._ring.capacity + 1)
        if last < first:
            return
        self._flushed = last
        self._next_flush = last + _FLUSH_EVERY
        self._reschedule()
        dt, lat = self._ring.slice(first, last)
        # < 0 marks "no measurement" (see TelemetryRing): _NO_SAMPLE where there was none,
        # anything else a clock that went backwards (step() stores what it measured).
        # Nothing exceeds _HIST_MAX: the fast path only passes values <= its caps (<=
        # _NEVER) and _judge clamps.
        try:
            lat_ok, dt_ok = lat >= 0, dt >= 0
            if not (lat_ok.all() and dt_ok.all()):
                backwards = (~lat_ok | (~dt_ok & (dt != _NO_SAMPLE))).sum()
                self._faults["clock_backwards"] += int(backwards)
                lat, dt = lat[lat_ok], dt[dt_ok]
            for hist, values in ((self._h_lat, lat), (self._h_dt, dt)):
                if values.size:
                    hist.record_valid(values)
            if last >= self._next_roll:
                self._roll_interval(last)
        except Exception:  # statistics must never take the control loop down
            self._faults["histogram_errors"] = self._faults.get("histogram_errors", 0) + 1

    def _completed_ticks(self) -> int:
        """Ticks whose ring record is complete (read by the telemetry thread)."""
        return self._tick - 1

    def _resolve(self, t0: int, dt: int, lat: int, bad: int, obs_timestamp_ns: Any) -> np.ndarray:
        """The rest of step()'s plain path: a tick that left it. A clean tick that only
        crossed a percentile threshold or a periodic duty is finished here; anything else
        is judged by :meth:`_judge`. Never raises (last resort: latch)."""
        try:
            tick = self._tick
            if (
                self._fast
                and not bad
                and 0 <= lat <= self._ok_lat
                and 0 <= dt <= self._dt_max
                and not self._skip_dt
                and self._age_ok(t0, obs_timestamp_ns)
            ):
                if lat > self._lat_p50:
                    self._note_exceed(self._lat_exceed, self._lat_thr, tick, lat)
                if dt > self._dt_p50:
                    self._note_exceed(self._dt_exceed, self._dt_thr, tick, dt)
                if tick < self._next_check or not self._window_due(tick):
                    if tick >= self._next_probe:
                        self._probe(tick, True)
                    j = tick & self._ring_mask
                    self._ring_lat[j] = lat
                    self._ring_dt[j] = dt
                    cur = self._cur
                    self._cur = cur ^ 1
                    if tick >= self._next_flush:
                        self._flush_ring(tick)
                    return self._views[cur]
                return self._judge(t0, dt, lat, bad, obs_timestamp_ns, noted=True)
            return self._judge(t0, dt, lat, bad, obs_timestamp_ns)
        except Exception as exc:  # a bug of ours must not crash the robot's loop
            return self._emergency_latch(t0, exc)

    def _judge(
        self,
        t0: int,
        dt: int,
        lat: int,
        bad: int,
        obs_timestamp_ns: Any,
        noted: bool = False,
    ) -> np.ndarray:
        """The general path's judgement of one tick: every check with the numpy reference,
        :func:`decide`, the transition table, the action. ``noted``: this tick's samples
        above the percentile thresholds are already in the window queues."""
        tick, cur = self._tick, self._cur
        self._tick_bits = 0
        if self._state_since_ns is None:
            self._state_since_ns = t0
        while self._posted_events:
            self._emit(self._posted_events.popleft())
        while self._pending:
            self._apply_command(t0, tick, *self._pending.popleft())
        first = self._skip_dt  # first tick, or first after reset(): no meaningful dt
        self._skip_dt = False
        if not noted:
            if lat > self._lat_p50:
                self._note_exceed(self._lat_exceed, self._lat_thr, tick, lat)
            if dt > self._dt_p50 and not first:
                self._note_exceed(self._dt_exceed, self._dt_thr, tick, dt)
        viols: list[Violation] = []

        # -- timing of this tick (into the ring; < 0 marks "no measurement") --
        # A clock that went backwards is counted when the ring is flushed (_flush_ring).
        j = tick & self._ring_mask
        self._ring_lat[j] = min(lat, _HIST_MAX)
        self._ring_dt[j] = _NO_SAMPLE if first else min(dt, _HIST_MAX)
        if not first and dt > self._dt_max:
            viols.append(Violation.DT_MAX)
        if lat > self._lat_max:
            viols.append(Violation.LATENCY_MAX)
        if lat > self._period_ns:
            self._overrun_total += 1
            # Consecutive means on consecutive ticks, whichever path the ticks between took.
            in_a_row = self._last_overrun_tick == tick - 1
            self._overruns = self._overruns + 1 if in_a_row else 1
            self._last_overrun_tick = tick
            if self._max_overruns is not None and self._overruns > self._max_overruns:
                viols.append(Violation.OVERRUN_STREAK)
        if not self._age_ok(t0, obs_timestamp_ns):
            viols.append(Violation.OBS_AGE)

        # -- observation, policy, action (re-checked with the numpy reference) --
        policy_valid = False
        over_bounds = over_rate = False
        if (
            bad in (_ACTION, _POLICY_ERROR, _DEADLINE)
            and not self._obs_test
            and not all_pass(self._obs_bytes, OBS_FLAGS)
        ):
            bad = _OBS_NONFINITE  # the policy's own check flagged the observation
        if (
            self._range_on
            and self._policy_on
            and bad in (_ACTION, _POLICY_ERROR, _DEADLINE)
            and self.policy.observation_outside()
        ):
            viols.append(Violation.OBS_RANGE)  # finite, but outside the audited range
        if self._policy_on:
            if bad == _OBS_SHAPE:
                viols.append(Violation.OBS_SHAPE)
            elif bad == _OBS_NONFINITE:
                viols.append(Violation.OBS_NONFINITE)
            elif bad == _POLICY_ERROR:
                viols.append(Violation.POLICY_ERROR)
            elif bad == _DEADLINE:
                viols.append(Violation.DEADLINE_MISS)
            elif bad == _ACTION:  # the byte test failed: find out which check and by how much
                action_viols, over_bounds, over_rate = self._classify_action(cur)
                viols.extend(action_viols)
                policy_valid = Violation.ACTION_NONFINITE not in action_viols
            else:
                policy_valid = True

        # -- windows (evaluated every check_every_ticks by _window_due) --
        if tick >= self._next_check:
            self._window_due(tick, policy_valid)
        if tick >= self._next_probe:
            self._probe(tick, policy_valid)

        # -- the decision and the state machine --
        state = self._state
        since = self._state_since_ns
        d = decide(
            state,
            viols,
            self._window_active,
            self._responses,
            self._rule,
            hold_streak=self._hold_streak,
            clean_streak=self._clean_streak,
            in_state_ns=t0 - since,
            action_ok=policy_valid,
            fallback_reads_obs=self._fallback_kind == "policy",
        )
        self._hold_streak, self._clean_streak = d.hold_streak, d.clean_streak
        self._count(d.violations, tick, t0, dt, lat)
        self._transition(d.state, t0, tick, d.violations)

        # -- the action --
        source = d.source
        applied: np.ndarray | None = None  # None: the policy's own action in slot cur
        if source is _Source.POLICY:
            if over_bounds or over_rate:
                applied = self._limited(cur, over_bounds, over_rate, d.violations)
        elif source is _Source.HOLD:
            applied = self.policy._act[1 - cur].copy()
        elif source is _Source.FALLBACK:
            applied = self._fallback_action(t0, tick)
        if self._state is GuardState.LATCHED:  # also when it latched in _fallback_action
            applied = self._latched_action(cur)
        if self._state is not GuardState.NOMINAL or applied is not None:
            self._interventions += 1
            self._intervened = tick
            self._state_ticks[self._state] += 1
        if policy_valid:  # advance (recurrent state); an unused action is overwritten below
            self._cur = cur ^ 1
        if applied is not None:
            self.policy._set_applied(self._cur ^ 1, applied)
        self._has_prev = True
        self._set_fast(self._state is GuardState.NOMINAL and not self._window_active)
        if self._pending or self._posted_events:  # raced the line above: next tick
            self._set_fast(False)
        if self._telemetry is not None:
            self._ring.flag_events.append((tick, STATE_CODES[self._state] | self._tick_bits))
        if tick >= self._next_flush:
            self._flush_ring(tick)
        return self._views[self._cur ^ 1]

    def _limited(
        self, slot: int, over_bounds: bool, over_rate: bool, viols: tuple[Violation, ...]
    ) -> np.ndarray | None:
        """The policy's action in ``slot`` limited as the responses say (``log``: not)."""
        responses = self._responses
        log_bounds = (
            Violation.ACTION_BOUNDS in viols and responses[Violation.ACTION_BOUNDS] is Response.LOG
        )
        log_rate = (
            Violation.ACTION_RATE in viols and responses[Violation.ACTION_RATE] is Response.LOG
        )
        if not ((over_bounds and not log_bounds) or (over_rate and not log_rate)):
            return None
        out = self.policy._act[slot].copy()
        if over_rate and not log_rate:
            prev = self.policy._act[1 - slot]
            np.clip(out, prev - self._rate, prev + self._rate, out=out)
        if not log_bounds:
            np.clip(out, self._low, self._high, out=out)
        return out

    def _apply_command(self, t0: int, tick: int, kind: str, reason: str) -> None:
        self._emit(NoteRecord.command(tick, t0, kind, reason))
        if kind == "reset":
            self.reset()
            self._skip_dt = False  # this tick's dt is real: the loop did not pause
            # ... and this tick's samples enter the cleared windows (noted after commands)
            self._lat_from = self._dt_from = tick
        elif kind == "trip":
            self._transition(next_state(self._state, _Event.LATCH), t0, tick, ["command"])

    def _run_checked(self, slot: int, t0: int) -> int:
        try:
            if self._deadline is None:
                self._run(self._run_args[slot])
            elif not self._deadline.run(self._run_args[slot], t0 + self._deadline_ns):
                return _DEADLINE
        except Exception:
            return _POLICY_ERROR
        return 0

    def _classify_action(self, slot: int) -> tuple[list[Violation], bool, bool]:
        """Reference check of the action in ``slot``: (violations, beyond bounds, beyond rate).

        Excursions within float32 rounding of a limit (a few ulps, e.g. a Tanh head that
        returns 1.0000001) are reported as beyond the limit (so they get clipped) without
        counting as a violation. The first tick the guard runs has no previous applied
        action, so the rate limit does not apply to it.
        """
        a = self.policy._act[slot].astype(np.float64)
        if not np.isfinite(a).all():
            return [Violation.ACTION_NONFINITE], False, False
        low, high, rate = self._low, self._high, self._rate
        over_bounds = np.maximum(low - a, a - high)
        out = []
        if (over_bounds > _ulps(np.maximum(np.abs(low), np.abs(high)))).any():
            out.append(Violation.ACTION_BOUNDS)
        beyond_rate = False
        if self._has_prev:
            prev = self.policy._act[1 - slot].astype(np.float64)
            over_rate = np.abs(a - prev) - rate
            if (over_rate > _ulps(np.abs(a) + np.abs(prev) + rate)).any():
                out.append(Violation.ACTION_RATE)
            beyond_rate = bool((over_rate > 0).any())
        return out, bool((over_bounds > 0).any()), beyond_rate

    def _window_due(self, tick: int, action_ok: bool = True) -> bool:
        """Evaluate the window percentiles and the action rules; True when a window
        violation is active. ``action_ok``: this tick's policy output is usable.

        A window is judged only once it holds ``window.ticks`` samples since the start or
        the last reset (see ``tailguard.runtime.state``). Cheap when the window holds no
        sample above any threshold and no action rule is on (the common case).
        """
        self._next_check = tick + self._check_every
        detected: frozenset[Violation] = frozenset()
        rules = self._action_rules
        if rules is not None:
            ok = action_ok and self._policy_on
            detected = rules.check(tick, self.policy._act[self._cur], self._obs_flat, ok)
            nominal = self._state is GuardState.NOMINAL
            self._next_probe = rules.next_probe(tick, self._next_check, nominal)
        self._reschedule()
        if not (any(self._lat_exceed) or any(self._dt_exceed) or self._window_active or detected):
            return False
        active: set[Violation] = set(detected)
        w = self._window_ticks
        oldest = tick - w
        for queues, kinds, start in (
            (self._lat_exceed, _LAT_WINDOW, self._lat_from),
            (self._dt_exceed, _DT_WINDOW, self._dt_from),
        ):
            full = tick - start + 1 >= w
            for q, allowed, kind in zip(queues, self._allowed, kinds, strict=True):
                while q and q[0] <= oldest:
                    q.popleft()
                if full and len(q) > allowed:
                    active.add(kind)
        self._window_active = active
        self._counted_window &= active  # a kind that cleared counts again next time
        return bool(active)

    def _roll_interval(self, last: int) -> None:
        """Close the histogram interval ending at tick ``last``: merge it into lifetime and
        keep it as 'last' (called by _flush_ring right after folding the interval's ticks)."""
        self._next_roll = last + _INTERVAL
        # Swap instead of copying: the closed interval becomes 'last', the old 'last' is
        # zeroed and reused (nothing on the hot path holds these objects).
        self._h_dt_life.merge(self._h_dt)
        self._h_lat_life.merge(self._h_lat)
        self._h_dt, self._h_dt_last = self._h_dt_last, self._h_dt
        self._h_lat, self._h_lat_last = self._h_lat_last, self._h_lat
        self._h_dt.reset()
        self._h_lat.reset()

    def _count(
        self, viols: tuple[Violation, ...] | list[Violation], tick: int, t0: int, dt: int, lat: int
    ) -> None:
        """Count and record violations; a window violation counts once per episode."""
        for v in viols:
            if v in _WINDOW_KINDS:
                if v in self._counted_window:
                    continue
                self._counted_window.add(v)
            self._counts[v] += 1
            self._emit(ViolationRecord.of(tick, t0, v, dt, lat))
            self._tick_bits |= VIOLATION_BITS[v]

    def _transition(
        self, new: GuardState, t0: int, tick: int, cause: Sequence[Violation | str]
    ) -> None:
        """Enter ``new`` (a result of the transition table): time-per-state accounting,
        side effects of entering it, and the state record."""
        old = self._state
        if new is old:
            return
        since = self._state_since_ns if self._state_since_ns is not None else t0
        self._state_ns[old] += t0 - since
        self._state_since_ns = t0
        self._state = new
        self._transitions += 1
        self._policy_on = new is not GuardState.LATCHED
        if new is GuardState.FALLBACK:
            self._clean_streak = 0
            if self._fallback is not None:
                self._fallback.reset_state()
        if new is GuardState.LATCHED:
            self._latch_action = None
        self._emit(StateChangeRecord.of(tick, t0, old, new, cause))

    def _fallback_action(self, t0: int, tick: int) -> np.ndarray:
        """The fallback controller's action, checked and limited; latches if it fails."""
        policy = self.policy
        last = policy._act[1 - self._cur]
        prev = last if self._has_prev else None
        if self._fallback_kind == "hold":
            return last.copy()
        if self._fallback_kind == "zero":
            return policy.clip(self._zero_action, prev)
        fb = self._fallback
        slot = self._fb_cur
        try:
            fb._obs[:] = self._obs_flat
            fb._run_fn(fb._run_args[slot])
            action = fb._act[slot]
            problem = None if np.isfinite(action).all() else "a non-finite action"
        except Exception as exc:
            problem = repr(exc)[:200]
        if problem is None:
            self._fb_cur = slot ^ 1  # advance its recurrent state (double-buffered)
            return policy.clip(action, prev)
        viols = (Violation.FALLBACK_ERROR,)
        self._count(viols, tick, t0, 0, 0)
        self._emit(FaultRecord.of(tick, t0, "fallback_error", problem))
        event = event_for(self._responses[Violation.FALLBACK_ERROR])
        self._transition(next_state(self._state, event), t0, tick, viols)
        return last.copy()

    def _latched_action(self, cur: int) -> np.ndarray:
        if self._latch_action is None:
            if self._safe_kind == "zero":
                self._latch_action = self._zero_action.copy()
            else:
                self._latch_action = self.policy._act[1 - cur].copy()
        return self._latch_action

    def _emergency_latch(self, t0: int, exc: Exception) -> np.ndarray:
        """Last line of defence against a bug in the general path: latch through the
        transition table (state record, time per state) and hold, never raise."""
        try:
            self._faults["internal_error"] = self._faults.get("internal_error", 0) + 1
            self._emit(FaultRecord.of(self._tick, t0, "internal_error", repr(exc)[:200]))
        except Exception:
            pass
        new = next_state(self._state, _Event.LATCH)  # defined from every state
        try:
            self._transition(new, t0, self._tick, ["internal_error"])
        except Exception:  # the books may be what broke: still the table's state
            self._state = new
            self._policy_on = False
        self._set_fast(False)
        return self._views[self._cur ^ 1]

    # ------------------------------------------------------------------ public API --
    @property
    def state(self) -> GuardState:
        """Who is in charge of the action (see :class:`GuardState`)."""
        return self._state

    @property
    def tick(self) -> int:
        """Number of ticks run so far."""
        return self._tick

    def reset(self) -> None:
        """Leave any state (including a latched stop) and start a fresh episode.

        Clears recurrent policy state, streaks and the percentile windows (they are judged
        again once full, as at start-up); keeps lifetime statistics and the last applied
        action (so the rate limit stays continuous).
        """
        t0 = self._clock()
        tick = self._tick
        self._transition(next_state(self._state, _Event.RESET), t0, tick, ["reset"])
        self.policy.reset_state()
        if self._fallback is not None:
            self._fallback.reset_state()
        self._hold_streak = self._clean_streak = self._overruns = 0
        self._last_overrun_tick = -2
        for q in (*self._lat_exceed, *self._dt_exceed):
            q.clear()
        self._lat_from, self._dt_from = tick + 1, tick + 2
        if self._action_rules is not None:
            self._action_rules.reset(tick)
        self._window_active = set()
        self._counted_window = set()
        self._policy_on = True
        self._set_fast(False)  # the next tick has no meaningful dt: resolve it
        self._skip_dt = True

    def warm_up(self, obs: Any, ticks: int = 200, freeze_gc: bool = True) -> None:
        """Run the policy ``ticks`` times outside the guard's books, then freeze the GC.

        Warms caches and onnxruntime's allocator so the first real ticks are not outliers,
        then ``gc.collect(); gc.freeze()`` so a later collection has (almost) nothing to scan
        (a full collection of a loaded process costs milliseconds). Recurrent state is
        cleared afterwards.
        """
        self._obs_flat[:] = np.asarray(obs, dtype=np.float32).reshape(-1)
        saved = self.policy._act.copy(), self.policy._chk.copy()
        for i in range(ticks):
            try:
                self._run(self._run_args[i & 1])
            except Exception:
                break
        self.policy._act[:], self.policy._chk[:] = saved
        self.policy.reset_state()
        if freeze_gc:
            gc.collect()
            gc.freeze()

    def stats(self) -> dict[str, Any]:
        """Counts and percentiles so far (allocates; call it outside the hot loop).

        Returns:
            dict with ``ticks``, ``state``, ``violations`` (count per kind),
            ``state_time_ns`` and ``state_ticks`` per state, ``interventions`` (ticks whose
            action was not the policy's own), ``transitions``, ``overruns``, ``faults``,
            and ``dt_ns`` / ``latency_ns`` percentile summaries, each ``{"lifetime": ...,
            "window": ...}`` (window = the last complete histogram interval of 8192 ticks
            plus the current one; the envelope's window checks are exact and separate).
        """
        self._flush_ring()
        now = self._last_t0
        state_ns = dict(self._state_ns)
        if self._state_since_ns is not None:
            state_ns[self._state] += max(0, now - self._state_since_ns)
        ticks = dict(self._state_ticks)
        ticks[GuardState.NOMINAL] = self._tick - sum(
            v for k, v in ticks.items() if k is not GuardState.NOMINAL
        )
        return {
            "ticks": self._tick,
            "state": self._state.value,
            "violations": {v.value: n for v, n in self._counts.items()},
            "state_time_ns": {s.value: n for s, n in state_ns.items()},
            "state_ticks": {s.value: n for s, n in ticks.items()},
            "interventions": self._interventions,
            "transitions": self._transitions,
            "overruns": self._overrun_total,
            "faults": {
                **self._faults,
                **self._deadline_faults(),
                "histogram_clamped": sum(h.clamped_count for h in (self._h_dt, self._h_lat)),
            },
            "dt_ns": self._summaries(self._h_dt, self._h_dt_life, self._h_dt_last),
            "latency_ns": self._summaries(self._h_lat, self._h_lat_life, self._h_lat_last),
        }

    def _deadline_faults(self) -> dict[str, int]:
        d = self._deadline
        if d is None:
            return {}
        return {"late_results": d.late_results, "late_errors": d.late_errors}

    def histograms(self) -> dict[str, LogLinearHistogram]:
        """Lifetime dt and latency histograms (copies, current interval included)."""
        self._flush_ring()
        out = {}
        for name, cur, life in (
            ("dt_ns", self._h_dt, self._h_dt_life),
            ("latency_ns", self._h_lat, self._h_lat_life),
        ):
            h = life.copy()
            h.merge(cur)
            out[name] = h
        return out

    @staticmethod
    def _summaries(
        cur: LogLinearHistogram, life: LogLinearHistogram, last: LogLinearHistogram
    ) -> dict[str, dict[str, int]]:
        lifetime = life.copy()
        lifetime.merge(cur)
        window = last.copy()
        window.merge(cur)
        return {"lifetime": _summary(lifetime), "window": _summary(window)}

    @property
    def tick_ring(self) -> TelemetryRing:
        """The per-tick ring (dt, latency, flags) a telemetry publisher reads."""
        return self._ring

    def close(self) -> None:
        """Stop the deadline worker and flush/close the flight recorder and telemetry."""
        last = self._tick
        self._ring.head_source = lambda: last  # the last tick is complete: publish it
        while self._posted_events:  # posted after the last tick: still delivered
            self._emit(self._posted_events.popleft())
        if self._deadline is not None:
            self._deadline.close()
        for sink in self._sinks:
            if hasattr(sink, "close"):
                sink.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ulps(magnitude: np.ndarray) -> np.ndarray:
    """A few float32 units in the last place at ``magnitude`` (rounding, not a violation)."""
    return 4.0 * np.finfo(np.float32).eps * np.maximum(magnitude, 1.0)


def _summary(h: LogLinearHistogram) -> dict[str, int]:
    n = h.total_count
    if n == 0:
        return {"count": 0}
    out = {"count": n, "max": h.max_value}
    for p in _REPORT_PERCENTILES:
        key = "p" + (f"{p:g}".replace(".", ""))
        out[key] = h.value_at_percentile(p)
    return out
