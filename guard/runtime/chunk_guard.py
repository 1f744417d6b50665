"""The chunk-aware guard: executes an action-chunk policy tick by tick and enforces an envelope.

Vocabulary (real-time chunking, ``AUDIT.md``): a chunk holds ``H`` actions; ``s`` (the
execute horizon) actions of a chunk are executed before the next inference is requested;
``d`` is the inference delay in control ticks.

**Bookkeeping.** Ticks are numbered 1, 2, ... A chunk requested on tick ``r`` (from that
tick's observation) has its action ``k`` meant for tick ``r + k``. The executing chunk's
action for tick ``t`` is its index ``t - r``. A new inference is requested on the first tick
on which the executing chunk's index is ``>= s`` and no inference is in flight.

* *Synchronous* mode (``mode="sync"``): the inference runs inside the requesting tick (the
  loop waits for it, ``step`` returns when it is done) and the new chunk is executed from
  index 0.
* *Asynchronous* mode (``mode="async"``): the request is handed to a runner and the
  executing chunk keeps going. The chunk that becomes usable ``d`` ticks after its request
  (on tick ``r + d``) replaces the executing one on that tick; its first ``d`` actions are
  already in the past and are skipped. The executing chunk covers ticks up to its index
  ``H - 1``, so it runs out when ``d > H - s``: every tick without an action is
  ``chunk_exhausted`` and the envelope's ``chunks.on_exhausted`` response applies (hold,
  fallback or latch). (With ``d <= s`` every request starts at index ``s``; a chunk that
  arrives later than ``s`` ticks starts the next request on its arrival, at index ``d``, and
  then runs out when that ``d`` plus the next one exceed ``H``.) A request still in flight
  after ``chunks.max_delay_ticks`` ticks (the tail cap on d) is ``chunk_late``, once per
  request (``chunks.on_late``).
* The first chunk of an episode (after construction, :meth:`ChunkGuard.reset` or a policy
  error with nothing left to execute) is computed inline in both modes: there is nothing to
  execute while it is computed.

**Checks.** Every executed action passes the per-tick guard's action checks against the
*last applied* action, including across a chunk boundary (the jump from the old chunk's
last to the new chunk's first executed action): ``action_nonfinite``, ``action_bounds``,
``action_rate`` with the envelope's responses (clip, hold, fallback, latch, log). The
observation is checked (``obs_shape``, ``obs_nonfinite``) on the ticks it is used: at a
request, and on every tick a fallback policy reads it. A policy that raises is
``policy_error`` (the executing chunk keeps going; the request is repeated on the next tick).
States, transitions, hold escalation and recovery are the per-tick guard's, through
:func:`tailguard.runtime.state.decide` (stated once in ``tailguard.runtime.state``). The
envelope's latency / period percentile windows are not enforced here.

**Delay estimate.** Each installed chunk's ``d`` enters a window of the last
``chunks.delay_window`` chunks (the oldest is evicted); the first ``chunks.warmup_chunks``
chunks of an episode are left out, so a warm-up spike is forgotten instead of dominating a
running maximum. :meth:`ChunkGuard.delay_estimate` gives its nearest-rank percentiles.

**Cost.** A tick that executes a buffered action on which nothing is to be decided is the
plain path: two integer compares and a tuple index (``step`` returns a read-only view of the
chunk's row). Each chunk is checked once, vectorized, when it is installed (finite, within
bounds, within the rate limit of its predecessor row); a row that passes and follows the row
applied before it unchanged needs no further check. Anything else (a request, an arrival,
the boundary, a clipped action, a non-nominal state) takes the general path.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

import numpy as np

from tailguard.envelope.chunks import ChunkLimits
from tailguard.envelope.model import Envelope
from tailguard.errors import ConfigError
from tailguard.runtime.chunk_policy import ChunkPolicy
from tailguard.runtime.events import FaultRecord, StateChangeRecord, ViolationRecord
from tailguard.runtime.guard import Guard, _ulps
from tailguard.runtime.policy import OBS_FLAGS, UNLIMITED, CallablePolicy, _CheckedPolicy, all_pass
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
from tailguard.stats import NEVER_NS
from tailguard.stats.percentile import percentiles

__all__ = [
    "ChunkGuard",
    "ChunkViolation",
    "DelayWindow",
    "ScheduledChunkRunner",
    "ThreadChunkRunner",
]

_NEVER = NEVER_NS
_NO_ERRSTATE = contextlib.nullcontext()


class ChunkViolation(Enum):
    """What only a chunk guard checks (the per-tick kinds are ``Violation``'s)."""

    CHUNK_EXHAUSTED = "chunk_exhausted"  # the executing chunk ran out (d > H - s)
    CHUNK_LATE = "chunk_late"  # a request in flight longer than chunks.max_delay_ticks


class DelayWindow:
    """The inference delay d over the last ``size`` chunks, warm-up excluded.

    Args:
        size: chunks kept (the oldest is evicted), >= 1.
        warmup: first chunks after construction or :meth:`clear` that are not kept.
    """

    def __init__(self, size: int, warmup: int) -> None:
        if size < 1 or warmup < 0:
            raise ConfigError(
                f"delay window: expected size >= 1, warmup >= 0; found {size}, {warmup}"
            )
        self._window: deque[int] = deque(maxlen=size)
        self._warmup = warmup
        self._seen = 0

    def add(self, d: int) -> None:
        """Record one chunk's delay (ignored while warming up)."""
        self._seen += 1
        if self._seen > self._warmup:
            self._window.append(int(d))

    def clear(self) -> None:
        """Forget everything; the warm-up applies again (a new episode)."""
        self._window.clear()
        self._seen = 0

    def __len__(self) -> int:
        return len(self._window)

    def values(self) -> list[int]:
        """The delays in the window, oldest first."""
        return list(self._window)

    def percentile(self, p: float) -> int | None:
        """Nearest-rank percentile ``p`` of the window (None when it is empty)."""
        if not self._window:
            return None
        return int(percentiles(np.fromiter(self._window, np.int64), (p,))[float(p)])

    def summary(self) -> dict[str, int | None]:
        """``count``, ``p50``, ``p95``, ``p99`` and ``max`` of the window."""
        if not self._window:
            return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
        arr = np.fromiter(self._window, np.int64)
        q = percentiles(arr, (50, 95, 99))
        return {
            "count": int(arr.size),
            "p50": int(q[50.0]),
            "p95": int(q[95.0]),
            "p99": int(q[99.0]),
            "max": int(arr.max()),
        }


class ScheduledChunkRunner:
    """Asynchronous inference in simulated time (replay, tests).

    The chunk is computed when it is requested; it becomes usable ``d`` ticks later, where
    ``d = delays()`` is drawn once per request (e.g. ``ceil(latency / period)`` of a latency
    profile, or a test's sequence).

    Args:
        delays: returns the next request's delay in ticks, an int >= 0.
    """

    def __init__(self, delays: Callable[[], int]) -> None:
        self._delays = delays
        #: The first tick on which the in-flight chunk is usable (never when none is).
        self.ready_tick = _NEVER
        self._error: BaseException | None = None
        self.last_delay = 0

    def submit(self, policy: ChunkPolicy, slot: int, tick: int) -> None:
        d = int(self._delays())
        if d < 0:
            raise ConfigError(f"a chunk delay must be >= 0 ticks, got {d}")
        self.last_delay = d
        self._error = None
        try:
            policy.infer(slot)
        except Exception as exc:
            self._error = exc
        self.ready_tick = tick + d

    def take(self) -> BaseException | None:
        """Hand over the arrived chunk: None, or the exception the inference raised."""
        self.ready_tick = _NEVER
        return self._error

    def cancel(self) -> None:
        """Discard the chunk in flight."""
        self.ready_tick = _NEVER

    def close(self) -> None:
        """Nothing to release."""


class ThreadChunkRunner:
    """Asynchronous inference on a worker thread (wall clock, a real loop).

    The worker runs ``policy.infer(slot)``; the guard installs the chunk on the first tick
    after it finished. One request is in flight at a time (the guard never submits more).
    """

    def __init__(self) -> None:
        self.ready_tick = _NEVER
        self._jobs: queue.SimpleQueue[tuple[ChunkPolicy, int, int] | None] = queue.SimpleQueue()
        self._gen = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="tailguard-chunks", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            policy, slot, gen = job
            error: BaseException | None = None
            try:
                policy.infer(slot)
            except Exception as exc:
                error = exc
            if gen == self._gen:  # not cancelled meanwhile
                self._error = error
                self.ready_tick = 0  # any tick: usable now

    def submit(self, policy: ChunkPolicy, slot: int, tick: int) -> None:
        self._gen += 1
        self.ready_tick = _NEVER
        self._jobs.put((policy, slot, self._gen))

    def take(self) -> BaseException | None:
        self.ready_tick = _NEVER
        return self._error

    def cancel(self) -> None:
        self._gen += 1
        self.ready_tick = _NEVER

    def close(self) -> None:
        """Stop the worker (waits for an inference in progress)."""
        self._jobs.put(None)
        self._thread.join(timeout=10.0)


class _NoRunner:
    ready_tick = _NEVER

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


Runner = ScheduledChunkRunner | ThreadChunkRunner


def _limit_vector(values: Any, size: int, default: float) -> np.ndarray:
    if values is None:
        return np.full(size, default, dtype=np.float32)
    return np.asarray(values, dtype=np.float32).reshape(size)


class ChunkGuard:
    """Executes an action-chunk policy under an envelope, one action per tick.

    What the bookkeeping, the checks and the delay estimate do is stated in the module
    docstring; states and responses are the per-tick guard's (``tailguard.runtime.state``).

    Args:
        policy: an :class:`~tailguard.runtime.chunk_policy.OnnxChunkPolicy` (or
            :class:`~tailguard.runtime.chunk_policy.CallableChunkPolicy`).
        envelope: the envelope; its optional ``chunks`` section sets the tail cap, the
            responses to ``chunk_exhausted`` / ``chunk_late`` and the delay window (defaults
            of :class:`~tailguard.envelope.chunks.ChunkLimits` without it).
        fallback: who acts in FALLBACK: ``"hold"``, ``"zero"``, a callable ``f(obs) ->
            action`` or a per-tick policy (e.g. an ``OnnxPolicy``), limited like the chunk's
            actions.
        mode: ``"sync"`` or ``"async"``.
        runner: async only: a :class:`ScheduledChunkRunner` (simulated time) or a
            :class:`ThreadChunkRunner` (the default: a worker thread).
        clock: integer-ns monotonic clock (recovery dwell, records, sync delay measurement).
        sinks: objects with ``append(record)`` (e.g. a flight recorder) for every violation
            and state change.
        allow_hash_mismatch: run a policy whose sha256 differs from the envelope's.

    Raises:
        EnvelopeError / HashMismatchError: the envelope does not fit the policy.
        ConfigError: an unknown mode or fallback; the envelope's ``chunks.horizon`` /
            ``chunks.execute_horizon`` differ from the policy's; a runner in sync mode.
    """

    def __init__(
        self,
        policy: ChunkPolicy,
        envelope: Envelope,
        fallback: Any = "hold",
        *,
        mode: str = "async",
        runner: Runner | None = None,
        clock: Callable[[], int] = time.perf_counter_ns,
        sinks: Iterable[Any] = (),
        allow_hash_mismatch: bool = False,
    ) -> None:
        Guard._check_binding(policy, envelope, allow_hash_mismatch)  # type: ignore[arg-type]
        if mode not in ("sync", "async"):
            raise ConfigError(f"mode: expected 'sync' or 'async', found {mode!r}")
        limits: ChunkLimits = getattr(envelope, "chunks", None) or ChunkLimits()
        h, s = policy.horizon, policy.execute_horizon
        for name, want, have in (
            ("horizon", limits.horizon, h),
            ("execute_horizon", limits.execute_horizon, s),
        ):
            if want is not None and want != have:
                raise ConfigError(
                    f"envelope chunks.{name}: expected the policy's {name} ({have}), found "
                    f"{want}; use the envelope audited for this chunking, or load the policy "
                    f"with {name}={want}"
                )
        if mode == "sync" and runner is not None:
            raise ConfigError("a runner is for mode='async'; sync mode runs inference inline")
        self.policy, self.envelope, self.mode, self.limits = policy, envelope, mode, limits
        self._clock = clock
        self._sinks = tuple(sinks)
        self._h, self._s = h, s
        a = policy.action_size
        pb = envelope.policy
        self._low = _limit_vector(pb.action_low, a, -UNLIMITED)
        self._high = _limit_vector(pb.action_high, a, UNLIMITED)
        self._rate = _limit_vector(envelope.actions.max_delta, a, UNLIMITED)
        self._rate_on = envelope.actions.max_delta is not None
        self._responses: dict[Any, Response] = dict(envelope.responses)
        self._responses[ChunkViolation.CHUNK_EXHAUSTED] = limits.on_exhausted
        self._responses[ChunkViolation.CHUNK_LATE] = limits.on_late
        self._log_bounds = self._responses[Violation.ACTION_BOUNDS] is Response.LOG
        self._log_rate = self._responses[Violation.ACTION_RATE] is Response.LOG
        rec = envelope.recovery
        self._rule = Hysteresis(rec.recovery_ticks, rec.dwell_ns, rec.max_hold_ticks)
        self._cap = limits.max_delay_ticks
        self._period_ns = envelope.timing.period_ns
        self._safe_kind = envelope.safe_action
        self._zero = np.clip(np.zeros(a, np.float32), self._low, self._high)
        self._fb_kind, self._fb = self._resolve_fallback(fallback)
        self._fb_slot = 0
        self._fb_reads_obs = self._fb_kind == "policy"
        if mode == "async":
            self._runner: Any = runner if runner is not None else ThreadChunkRunner()
        else:
            self._runner = _NoRunner()
        # Read-only row views of both chunk slots: the plain path returns one of them.
        views = []
        for slot in (0, 1):
            rows = []
            for i in range(h):
                v = policy.chunks[slot, i].view()
                v.flags.writeable = False
                rows.append(v)
            views.append(tuple(rows))
        self._views = tuple(views)
        self._next_bad = np.zeros((2, h + 1), dtype=np.int64)  # per slot: first non-fast row >= i
        self._obs = np.zeros(policy.obs_size, np.float32)
        self._obs_bad = False  # this tick's observation was rejected
        self._last = np.zeros(a, np.float32)
        self._last_view = self._last.view()
        self._last_view.flags.writeable = False
        self._has_prev = False
        self.delays = DelayWindow(limits.delay_window, limits.warmup_chunks)
        #: Every installed chunk's d since construction (bounded), for audits.
        self.delay_history: deque[int] = deque(maxlen=1 << 16)
        self._counts: dict[str, int] = {v.value: 0 for v in (*Violation, *ChunkViolation)}
        self._faults: dict[str, int] = {}
        self._state = GuardState.NOMINAL
        self._state_since = clock()
        self._state_ticks = dict.fromkeys(GuardState, 0)
        self._transitions = 0
        self._interventions = 0
        self._requests = 0
        self._installed = 0
        self._exhausted_ticks = 0
        self._tick = 0
        #: The last tick on which an inference was requested (0: none yet).
        self.last_request_tick = 0
        self._begin_episode()

    # ------------------------------------------------------------------ construction --
    def _resolve_fallback(self, fallback: Any) -> tuple[str, Any]:
        if isinstance(fallback, str):
            if fallback not in ("hold", "zero"):
                raise ConfigError(
                    f"fallback: expected 'hold', 'zero', a callable or a per-tick policy; "
                    f"found {fallback!r}"
                )
            return fallback, None
        p = self.policy
        if isinstance(fallback, _CheckedPolicy):
            if (fallback.obs_size, fallback.action_size) != (p.obs_size, p.action_size):
                raise ConfigError(
                    f"fallback policy sizes: expected {p.obs_size}/{p.action_size}, found "
                    f"{fallback.obs_size}/{fallback.action_size}"
                )
            fallback.set_limits(self._low, self._high, None)
            return "policy", fallback
        if callable(fallback):
            fb = CallablePolicy(fallback, p.obs_size, p.action_size, name="fallback")
            fb.set_limits(self._low, self._high, None)
            return "policy", fb
        raise ConfigError(
            f"fallback must be 'hold', 'zero', a callable or a policy; got {fallback!r}"
        )

    def _begin_episode(self) -> None:
        self._cs = -1  # slot of the executing chunk, -1: none
        self._origin = 0  # tick of the executing chunk's index 0
        self._inflight = False
        self._req_tick = 0
        self._req_slot = 0
        self._late_counted = False
        self._contig = False  # the last applied action is the executing chunk's row, as is
        self._fast_tick = 0  # ticks below this may take the plain path
        self._policy_on = True
        self._hold_streak = 0
        self._clean_streak = 0
        self._latch_action: np.ndarray | None = None
        self.delays.clear()

    # ------------------------------------------------------------------ the hot path --
    def step(self, obs: Any) -> np.ndarray:
        """One tick: observation in, action out. Never raises.

        Returns:
            float32 [action_size], read-only, valid until the next call: the executing
            chunk's action for this tick as the envelope allows it, or the hold / fallback /
            safe action the responses call for.
        """
        tick = self._tick + 1
        self._tick = tick
        if tick < self._fast_tick and tick < self._runner.ready_tick:
            return self._views[self._cs][tick - self._origin]
        return self._general(tick, obs)

    # ------------------------------------------------------------ off the hot path --
    def _general(self, tick: int, obs: Any) -> np.ndarray:
        try:
            return self._judge(tick, obs)
        except Exception as exc:  # a bug of ours must not crash the loop: latch and hold
            self._faults["internal_error"] = self._faults.get("internal_error", 0) + 1
            try:
                self._emit(FaultRecord.of(tick, self._clock(), "internal_error", repr(exc)[:200]))
                self._transition(next_state(self._state, _Event.LATCH), tick, ["internal_error"])
            except Exception:
                self._state = GuardState.LATCHED
                self._policy_on = False
            self._fast_tick = 0
            return self._last_view

    def _prev(self, last_tick: int) -> np.ndarray | None:
        """A copy of the last applied action, applied on ``last_tick`` (None before the
        first one)."""
        if not self._has_prev:
            return None
        if self._contig:  # the plain path applied the executing chunk's rows since
            return self.policy.chunks[self._cs, last_tick - self._origin].copy()
        return self._last.copy()

    def _judge(self, tick: int, obs: Any) -> np.ndarray:
        t0 = self._clock()
        prev = self._prev(tick - 1)
        was_contig, chunk_before = self._contig, (self._cs, self._origin)
        viols: list[Any] = []
        if (
            self._inflight
            and self._cap is not None
            and not self._late_counted
            and tick - self._req_tick > self._cap
        ):
            viols.append(ChunkViolation.CHUNK_LATE)  # d > cap, whether it arrives now or later
            self._late_counted = True
        request_due = (
            self._policy_on
            and not self._inflight
            and (self._cs < 0 or tick - self._origin >= self._s)
        )
        if self._inflight and tick >= self._runner.ready_tick:
            arrived = self._arrive(tick, t0, viols)
            # after a failed inference the request is repeated on the next tick
            request_due = arrived and self._policy_on and tick - self._origin >= self._s
        bad_obs = None
        if request_due or self._fb_reads_obs:
            bad_obs = self._take_obs(obs)
            self._obs_bad = bad_obs is not None
        if request_due:
            if bad_obs is not None:
                viols.append(bad_obs)
            else:
                self._request(tick, t0, viols)
                if self._inflight and tick >= self._runner.ready_tick:  # d = 0: usable now
                    self._arrive(tick, t0, viols)
        elif bad_obs is not None and self._state is GuardState.FALLBACK:
            viols.append(bad_obs)  # the fallback must not act on it
        cand = None
        beyond_bounds = beyond_rate = False
        action_ok = False
        if self._policy_on:
            idx = tick - self._origin
            if self._cs >= 0 and idx < self._h:
                cand = self.policy.chunks[self._cs, idx]
                if (
                    was_contig
                    and chunk_before == (self._cs, self._origin)
                    and self._next_bad[self._cs, idx] > idx
                ):
                    action_ok = True  # checked at install against the row applied before it
                else:
                    kinds, beyond_bounds, beyond_rate = self._classify(cand, prev)
                    viols.extend(kinds)
                    action_ok = Violation.ACTION_NONFINITE not in kinds
            else:
                viols.append(ChunkViolation.CHUNK_EXHAUSTED)
                self._exhausted_ticks += 1
        state = self._state
        if not viols and state is GuardState.NOMINAL:  # what decide() gives, without the call
            new_state, src, counted = state, _Source.POLICY, ()
            self._hold_streak = self._clean_streak = 0
        else:
            dec = decide(
                state,
                viols,
                frozenset(),
                self._responses,
                self._rule,
                hold_streak=self._hold_streak,
                clean_streak=self._clean_streak,
                in_state_ns=t0 - self._state_since,
                action_ok=action_ok,
                fallback_reads_obs=self._fb_reads_obs,
            )
            self._hold_streak, self._clean_streak = dec.hold_streak, dec.clean_streak
            new_state, src, counted = dec.state, dec.source, dec.violations
        out = self._last
        clipped = False
        if src is _Source.POLICY and cand is not None:
            out[:] = cand
            if prev is not None and beyond_rate and not self._log_rate:
                np.clip(out, prev - self._rate, prev + self._rate, out=out)
                clipped = True
            if (beyond_bounds and not self._log_bounds) or (beyond_rate and not self._log_rate):
                np.clip(out, self._low, self._high, out=out)
                clipped = True
        elif src is _Source.FALLBACK:
            out[:] = self._fallback_action(prev, tick, t0)
        elif src is _Source.SAFE:
            out[:] = self._latched_action(prev)
        else:  # HOLD (or a policy tick without a usable action)
            src = _Source.HOLD
            out[:] = prev if prev is not None else self._zero
        if counted:
            self._count(counted, tick, t0)
        self._transition(new_state, tick, counted)
        if self._state is not GuardState.NOMINAL:
            self._state_ticks[self._state] += 1
        if src is not _Source.POLICY:
            self._interventions += 1
        self._has_prev = True
        self._contig = src is _Source.POLICY and cand is not None and not clipped
        self._plan_fast(tick)
        return self._last_view

    def _plan_fast(self, tick: int) -> None:
        """Set the first tick that must take the general path again."""
        if not (self._contig and self._state is GuardState.NOMINAL and self._policy_on):
            self._fast_tick = 0
            return
        idx = tick - self._origin
        stop = self._h if self._inflight else min(self._h, max(self._s, idx + 1))
        stop = min(stop, int(self._next_bad[self._cs, min(idx + 1, self._h)]))
        fast = self._origin + stop
        if self._inflight and self._cap is not None and not self._late_counted:
            fast = min(fast, self._req_tick + self._cap + 1)
        self._fast_tick = fast

    def _take_obs(self, obs: Any) -> Violation | None:
        try:
            arr = np.asarray(obs, dtype=np.float32)
            if arr.size != self._obs.size or arr.ndim > 2 or (arr.ndim == 2 and arr.shape[0] != 1):
                return Violation.OBS_SHAPE
            self._obs[:] = arr.reshape(-1)
        except Exception:
            return Violation.OBS_SHAPE
        if not all_pass(self._obs.data.cast("B"), OBS_FLAGS):
            return Violation.OBS_NONFINITE
        return None

    def _request(self, tick: int, t0: int, viols: list[Any]) -> None:
        """Start the next inference from ``self._obs`` (inline in sync mode and for the
        first chunk of an episode)."""
        slot = 1 - self._cs if self._cs >= 0 else 0
        policy = self.policy
        policy.obs[:] = self._obs
        self._requests += 1
        self.last_request_tick = tick
        if self.mode == "async" and self._cs >= 0:
            self._runner.submit(policy, slot, tick)
            self._inflight, self._req_tick, self._req_slot = True, tick, slot
            self._late_counted = False
            return
        try:
            policy.infer(slot)
        except Exception as exc:
            self._policy_error(tick, t0, exc, viols)
            return
        elapsed = max(0, self._clock() - t0)
        self._install(slot, tick, math.ceil(elapsed / self._period_ns))

    def _arrive(self, tick: int, t0: int, viols: list[Any]) -> bool:
        """Install the chunk in flight; False when its inference failed."""
        error = self._runner.take()
        self._inflight = False
        if error is not None:
            self._policy_error(tick, t0, error, viols)
            return False
        self._install(self._req_slot, self._req_tick, tick - self._req_tick)
        return True

    def _policy_error(self, tick: int, t0: int, exc: BaseException, viols: list[Any]) -> None:
        viols.append(Violation.POLICY_ERROR)
        self._faults["policy_error"] = self._faults.get("policy_error", 0) + 1
        self._emit(FaultRecord.of(tick, t0, "policy_error", repr(exc)[:200]))

    def _install(self, slot: int, origin: int, d: int) -> None:
        """Make the chunk in ``slot`` (requested on tick ``origin``, usable ``d`` ticks
        later) the executing one, and check all its rows at once."""
        rows = self.policy.chunks[slot]
        ok = ((rows >= self._low) & (rows <= self._high)).all(axis=1)  # NaN fails both
        clean = bool(ok.all())
        if self._rate_on:
            with np.errstate(invalid="ignore") if not clean else _NO_ERRSTATE:
                steps = np.abs(np.diff(rows.astype(np.float64), axis=0)) <= self._rate
            ok[1:] &= steps.all(axis=1)
            clean = bool(ok.all())
        # next_bad[i] = the first row j >= i that cannot take the plain path (H if none)
        if clean:
            self._next_bad[slot].fill(self._h)
        else:
            marks = np.full(self._h + 1, self._h, dtype=np.int64)
            bad = np.flatnonzero(~ok)
            marks[bad] = bad
            self._next_bad[slot] = np.minimum.accumulate(marks[::-1])[::-1]
        self._cs, self._origin = slot, origin
        self._installed += 1
        self.delays.add(d)
        self.delay_history.append(int(d))

    def _classify(
        self, a32: np.ndarray, prev: np.ndarray | None
    ) -> tuple[list[Violation], bool, bool]:
        """The per-tick guard's action checks on one action (see ``Guard._classify_action``)."""
        low, high, rate = self._low, self._high, self._rate
        if ((a32 >= low) & (a32 <= high)).all() and (  # the common case: exactly within
            prev is None
            or not self._rate_on
            or (np.abs(a32.astype(np.float64) - prev) <= rate).all()
        ):
            return [], False, False
        a = a32.astype(np.float64)
        if not np.isfinite(a).all():
            return [Violation.ACTION_NONFINITE], False, False
        over_bounds = np.maximum(low - a, a - high)
        out = []
        if (over_bounds > _ulps(np.maximum(np.abs(low), np.abs(high)))).any():
            out.append(Violation.ACTION_BOUNDS)
        beyond_rate = False
        if prev is not None and self._rate_on:
            p = prev.astype(np.float64)
            over_rate = np.abs(a - p) - rate
            if (over_rate > _ulps(np.abs(a) + np.abs(p) + rate)).any():
                out.append(Violation.ACTION_RATE)
            beyond_rate = bool((over_rate > 0).any())
        return out, bool((over_bounds > 0).any()), beyond_rate

    def _limited(self, action: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
        out = np.clip(np.asarray(action, np.float32), self._low, self._high)
        if prev is not None and self._rate_on:
            out = np.clip(np.clip(out, prev - self._rate, prev + self._rate), self._low, self._high)
        return out.astype(np.float32, copy=False)

    def _fallback_action(self, prev: np.ndarray | None, tick: int, t0: int) -> np.ndarray:
        hold = prev if prev is not None else self._zero
        if self._fb_kind == "hold":
            return hold
        if self._fb_kind == "zero":
            return self._limited(self._zero, prev)
        if self._obs_bad:  # never hand a rejected observation to the fallback
            return hold
        fb = self._fb
        slot = self._fb_slot
        try:
            fb._obs[:] = self._obs
            fb._run_fn(fb._run_args[slot])
            action = fb._act[slot]
            problem = None if np.isfinite(action).all() else "a non-finite action"
        except Exception as exc:
            problem = repr(exc)[:200]
        if problem is None:
            self._fb_slot = slot ^ 1
            return self._limited(action, prev)
        viols = (Violation.FALLBACK_ERROR,)
        self._count(viols, tick, t0)
        self._emit(FaultRecord.of(tick, t0, "fallback_error", problem))
        event = event_for(self._responses[Violation.FALLBACK_ERROR])
        self._transition(next_state(self._state, event), tick, viols)
        return hold

    def _latched_action(self, prev: np.ndarray | None) -> np.ndarray:
        if self._latch_action is None:
            if self._safe_kind == "zero" or prev is None:
                self._latch_action = self._zero.copy()
            else:
                self._latch_action = prev.copy()
        return self._latch_action

    def _count(self, viols: Iterable[Any], tick: int, t0: int) -> None:
        for v in viols:
            self._counts[v.value] += 1
            self._emit(ViolationRecord.of(tick, t0, v, 0, 0))

    def _transition(self, new: GuardState, tick: int, cause: Iterable[Any]) -> None:
        old = self._state
        if new is old:
            return
        now = self._clock()
        self._state, self._state_since = new, now
        self._transitions += 1
        self._policy_on = new is not GuardState.LATCHED
        if new is GuardState.FALLBACK:
            self._clean_streak = 0
            if self._fb is not None:
                self._fb.reset_state()
        if new is GuardState.LATCHED:
            self._latch_action = None
            self._runner.cancel()
            self._inflight = False
            self._cs = -1
        names = [c.value if isinstance(c, Enum) else str(c) for c in cause]
        self._emit(StateChangeRecord.of(tick, now, old, new, names))

    def _emit(self, record: tuple[Any, ...]) -> None:
        for sink in self._sinks:
            sink.append(record)

    # ------------------------------------------------------------------ public API --
    @property
    def state(self) -> GuardState:
        """Who is in charge of the action (see :class:`GuardState`)."""
        return self._state

    @property
    def tick(self) -> int:
        """Ticks run so far."""
        return self._tick

    def reset(self) -> None:
        """Start a fresh episode: leave any state (a latch too), drop the executing chunk
        and any request in flight, restart the delay window's warm-up. The last applied
        action is kept (the rate limit stays continuous)."""
        self._runner.cancel()
        prev = self._prev(self._tick)
        if prev is not None:  # the plain path applied a chunk row: keep it as the last action
            self._last[:] = prev
        self._transition(next_state(self._state, _Event.RESET), self._tick, ["reset"])
        self.policy.reset_state()
        if self._fb is not None:
            self._fb.reset_state()
        self._begin_episode()

    def delay_estimate(self, p: float = 99.0) -> int | None:
        """Nearest-rank percentile ``p`` of d over the delay window (None while empty)."""
        return self.delays.percentile(p)

    def stats(self) -> dict[str, Any]:
        """Counts so far (allocates; call it outside the loop)."""
        ticks = {s.value: n for s, n in self._state_ticks.items()}
        ticks[GuardState.NOMINAL.value] = self._tick - sum(
            n for s, n in self._state_ticks.items() if s is not GuardState.NOMINAL
        )
        return {
            "ticks": self._tick,
            "state": self._state.value,
            "mode": self.mode,
            "horizon": self._h,
            "execute_horizon": self._s,
            "violations": dict(self._counts),
            "state_ticks": ticks,
            "interventions": self._interventions,
            "transitions": self._transitions,
            "requests": self._requests,
            "chunks_installed": self._installed,
            "exhausted_ticks": self._exhausted_ticks,
            "delay_window": self.delays.summary(),
            "faults": dict(self._faults),
        }

    def close(self) -> None:
        """Stop the runner's worker (if any)."""
        self._runner.close()

    def __enter__(self) -> ChunkGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
