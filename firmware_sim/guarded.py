"""The runtime ``Guard`` as a :class:`~tailguard.firmware_sim.loop.SimLoop` controller, in
simulated time.

The guard is the unmodified runtime object: it reads the loop's :class:`SimClock` (injected
as its clock) and calls the policy's inference, which this module wraps (through the
policy's public ``set_inference_wrapper``) *before* the guard is built so that the
inference takes the loop's sampled latency of simulated time. Nothing in the guard knows
it is simulated.

Deadline mode (``deadline_ns``) runs the guard with ``deadline_mode="inline"``: the guard
judges ``clock() > t0 + deadline_ns`` after the call. :class:`GuardedInference` models what
the threaded runner does on a robot:

- a tick whose sampled latency exceeds the deadline is a miss: the clock moves just past the
  deadline, the guard answers with its hold/fallback action, and that action is released at
  ``t0 + deadline_ns`` (not at the end of the inference); the late result is discarded;
- the abandoned inference keeps the worker busy until ``t0 + latency``; a tick starting
  before then misses too (no second inference is started) and is also answered at its
  deadline (the threaded runner may answer earlier; the deadline is the upper bound);
- the next tick starts on schedule, ``dt`` after the previous one (with a deadline at or
  beyond ``dt``, 1 ns after the deadline: the inline runner sees a miss only once the clock
  is past it).

Without a deadline the inference takes its full latency and the guard's action (its own or
a hold/fallback one) is released when the inference returns, as on a robot where the guard
must wait for the policy. When the guard does not run the policy at all (latched, or an
invalid observation) the tick takes no time.

The fallback controller is instantaneous unless ``fallback_latency`` is given: then every
call of a fallback *policy* (a second ONNX model) takes a latency drawn from that profile
(its own random stream, seeded per episode like the loop's), after the main policy's
inference or its deadline, and the tick's action is released when it returns. With
``process_wide=True`` the main latency models a pause of the whole process (a garbage
collection, a page-fault storm): the guard's own thread is paused too, so a deadline miss
is answered when the pause ends (``t0 + max(deadline, latency)``), not at the deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tailguard.envelope.model import Envelope
from tailguard.errors import ConfigError
from tailguard.firmware_sim.clock import SimClock
from tailguard.firmware_sim.controllers import SimulatedInference
from tailguard.firmware_sim.profiles import Profile
from tailguard.runtime.guard import Fallback, Guard
from tailguard.runtime.policy import _CheckedPolicy
from tailguard.runtime.state import GuardState

__all__ = ["GuardedController", "GuardedInference"]


class GuardedInference(SimulatedInference):
    """Simulated inference time with an optional deadline and a busy worker.

    Args:
        clock: the loop's simulated clock.
        deadline_ns: the guard's deadline, ns, or None (no deadline mode).
        fallback_latency: latency of each fallback-policy call (None: instantaneous).
        process_wide: the main latency pauses the guard's thread too (see the module doc).
    """

    def __init__(
        self,
        clock: SimClock,
        deadline_ns: int | None = None,
        *,
        fallback_latency: Profile | None = None,
        process_wide: bool = False,
    ) -> None:
        super().__init__(clock)
        if deadline_ns is not None and deadline_ns <= 0:
            raise ConfigError(f"deadline_ns must be positive, got {deadline_ns}")
        self.deadline_ns = deadline_ns
        self.fallback_latency = fallback_latency
        self.process_wide = process_wide
        self._fallback_ns = 0  # fallback time spent this tick
        self._busy_until_ns = -1
        self._release_ns: int | None = None
        self.missed = False  # this tick's inference missed its deadline
        self.busy = False  # ... because the worker was still running an abandoned one
        self.misses = 0  # deadline misses since reset()
        self.busy_misses = 0  # ... of which the worker was busy

    def arm(self, latency_ns: int) -> None:
        """Set this tick's inference latency (the clock is at the tick start), ns."""
        self._armed_ns = latency_ns
        self._release_ns = None
        self._fallback_ns = 0
        self.missed = self.busy = False

    def reseed(self, seq: np.random.SeedSequence) -> None:
        """Seed the fallback latency stream for an episode (the loop calls this)."""
        if self.fallback_latency is not None:
            self.fallback_latency.reseed(seq)

    def wrap_fallback(self, run: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``run`` (a fallback policy's inference) made to take a ``fallback_latency``
        sample of simulated time per call (``run`` itself when there is no such profile)."""
        profile = self.fallback_latency
        if profile is None:
            return run
        clock, next_ns = self.clock, profile.next_ns

        def timed(arg: Any) -> Any:
            out = run(arg)
            ns = next_ns()
            clock.advance(ns)
            self._fallback_ns += ns
            return out

        return timed

    def reset(self) -> None:
        """Forget the busy worker and the miss counts (a new episode)."""
        self._busy_until_ns = -1
        self.misses = self.busy_misses = 0

    def settle(self) -> int:
        """The release time of this tick's action, ns (simulated clock).

        Latency that no inference consumed is dropped: the guard answered without running
        the policy.
        """
        self._armed_ns = 0
        if self._release_ns is not None:
            return self._release_ns + self._fallback_ns
        return self.clock()

    def wrap(self, policy: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Return the policy's run function made to take the armed latency per call (an
        ``InferenceWrapper`` for ``policy.set_inference_wrapper``)."""
        clock = self.clock
        deadline_ns = self.deadline_ns
        process_wide = self.process_wide

        if deadline_ns is None:

            def timed(arg: Any) -> Any:
                out = policy(arg)
                if self._armed_ns:
                    clock.advance(self._armed_ns)
                    self._armed_ns = 0
                return out

            return timed

        def timed_deadline(arg: Any) -> Any:
            t0_ns = clock()
            latency_ns, self._armed_ns = self._armed_ns, 0
            if t0_ns < self._busy_until_ns:
                # The worker still runs an abandoned inference: miss without starting one.
                self.missed = self.busy = True
                self.busy_misses += 1
            elif latency_ns > deadline_ns:
                policy(arg)  # it does finish, late; the guard discards the result
                self._busy_until_ns = t0_ns + latency_ns
                self.missed = True
            else:
                out = policy(arg)
                clock.advance(latency_ns)
                return out
            self.misses += 1
            # Just past the deadline, so the inline runner sees the miss; the guard's answer
            # is released at the deadline itself -- or, when the pause stopped the guard's
            # thread too, when the pause ends.
            answer_ns = deadline_ns
            if process_wide and not self.busy and latency_ns > deadline_ns:
                answer_ns = latency_ns
            clock.set(t0_ns + answer_ns + 1)
            self._release_ns = t0_ns + answer_ns
            return None

        return timed_deadline


class GuardedController:
    """The runtime :class:`Guard` running the policy inside the simulated-time loop.

    Build the loop with this controller; it brings its own :class:`GuardedInference`, which
    the loop arms with each tick's sampled latency (``SimLoop`` picks up
    ``controller.inference`` and its clock).

    Every episode gets a fresh ``Guard`` (same policy, envelope, fallback and clock), with
    the policy's last applied action zeroed like the loop's initial command: the guard keeps
    windows, tick-based check cadences and the last applied action across ``reset()``, so
    one guard across episodes would make episode ``i`` depend on episodes ``0..i-1``. This
    way every episode is reproducible from its seed alone and ``stats()`` is per episode.

    Args:
        policy: the policy (``OnnxPolicy`` / ``CallablePolicy``); its inference wrapper is
            set here (``set_inference_wrapper``), so give each controller its own policy.
        envelope: the envelope the guard enforces.
        clock: the simulated clock (the loop's); a new one when None.
        fallback: ``"hold"``, ``"zero"``, a callable or a second policy (see ``Guard``).
        deadline_ns: deadline mode in simulated time when set, ns.
        fallback_latency: latency profile of each call of a fallback policy (None:
            instantaneous); see the module docstring.
        process_wide: the loop's latency pauses the whole process (see the module docstring).
        keep_ticks: record per tick the guard state and the deadline outcome (tests, traces).
        **guard_kwargs: passed to ``Guard`` (``recorder``: an object with ``append``, shared
            by the episodes' guards; ``allow_hash_mismatch``).

    Raises:
        EnvelopeError, HashMismatchError, ValueError: as ``Guard`` does.
    """

    def __init__(
        self,
        policy: _CheckedPolicy,
        envelope: Envelope,
        *,
        clock: SimClock | None = None,
        fallback: Fallback = "hold",
        deadline_ns: int | None = None,
        fallback_latency: Profile | None = None,
        process_wide: bool = False,
        keep_ticks: bool = False,
        **guard_kwargs: Any,
    ) -> None:
        self.clock = clock if clock is not None else SimClock()
        self.inference = GuardedInference(
            self.clock, deadline_ns, fallback_latency=fallback_latency, process_wide=process_wide
        )
        policy.set_inference_wrapper(self.inference.wrap)  # replaces, never stacks
        if fallback_latency is not None:
            if not isinstance(fallback, _CheckedPolicy):
                raise ConfigError(
                    "fallback_latency models a fallback policy's inference; the fallback here "
                    f"is {fallback!r}: give a policy, or no fallback_latency"
                )
            fallback.set_inference_wrapper(self.inference.wrap_fallback)
        self.policy = policy
        self.envelope = envelope
        self.fallback = fallback
        self.deadline_ns = deadline_ns
        self._guard_kwargs = guard_kwargs
        self.guard = self._new_guard()
        self._used = False
        self.keep_ticks = keep_ticks
        self.tick_states: list[str] = []
        self.tick_missed: list[bool] = []

    def _new_guard(self) -> Guard:
        return Guard(
            self.policy,
            self.envelope,
            self.fallback,
            clock=self.clock,
            deadline_ns=self.deadline_ns,
            deadline_mode="inline",
            **self._guard_kwargs,
        )

    def __call__(self, obs: np.ndarray, obs_time_ns: int) -> np.ndarray:
        """One guarded tick; the action is read-only and valid until the next call."""
        action = self.guard.step(obs, obs_time_ns)
        if self.keep_ticks:
            self.tick_states.append(self.guard.state.value)
            self.tick_missed.append(self.inference.missed)
        return action

    @property
    def decide(self) -> Callable[[np.ndarray, int], np.ndarray]:
        """What the loop calls each tick (fetched after ``reset``): the guard's own ``step``
        unless per-tick records are kept (one Python frame less per tick)."""
        return self if self.keep_ticks else self.guard.step

    def reset(self) -> None:
        """Start an episode: a fresh guard, an idle inference worker, zeroed counters."""
        if self._used:
            self.guard.close()
            self.policy._act[:] = 0.0  # last applied action = the loop's initial command
            self.policy.reset_state()
            self.guard = self._new_guard()
        self._used = True
        self.inference.reset()
        self.tick_states = []
        self.tick_missed = []

    def stats(self) -> dict[str, Any]:
        """This episode's guard statistics.

        Returns:
            dict with ``ticks``, ``final_state``, ``violations`` (count per kind, nonzero
            kinds only), ``state_time_ns`` and ``state_ticks`` per state (time up to the last
            tick start), ``interventions`` (ticks whose action was not the policy's own),
            ``transitions``, ``overruns``, ``deadline_misses`` and ``busy_misses`` (misses
            because an abandoned inference was still running).
        """
        now = self.guard.stats()
        out: dict[str, Any] = {"ticks": now["ticks"], "final_state": now["state"]}
        out["violations"] = {k: v for k, v in now["violations"].items() if v}
        for key in ("state_time_ns", "state_ticks"):
            out[key] = now[key]
        for key in ("interventions", "transitions", "overruns"):
            out[key] = now[key]
        out["deadline_misses"] = self.inference.misses
        out["busy_misses"] = self.inference.busy_misses
        return out

    @property
    def state(self) -> GuardState:
        """The current guard's state."""
        return self.guard.state

    def close(self) -> None:
        """Release the guard's resources (recorder)."""
        self.guard.close()
