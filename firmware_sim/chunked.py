"""Action-chunk policies in simulated time: a ``ChunkGuard`` driving a MuJoCo task.

Each chunk inference takes a latency drawn from a timing profile (the same profiles and
spec language as every other replay, ``profile_spec``); its delay in control ticks is
``d = ceil(latency / period)``. The control loop runs on the period grid of the task
(``MujocoTask.run`` of one period, the env's own reward and termination):

* **async** (``ChunkGuard(mode="async")`` with a :class:`ScheduledChunkRunner`): every tick
  applies the guard's action for one period; a chunk requested on tick ``r`` is usable on
  tick ``r + d`` (the guard skips its first ``d`` actions).
* **sync** (``mode="sync"``): the loop waits for each chunk: the ``d`` periods of the wait
  hold the last applied command (the robot is paused, the plant is not), then the chunk
  executes from index 0. Paused periods count towards the episode's length in time.

In both modes the first chunk of an episode is computed before the episode's clock starts
(there is nothing to execute while it is computed). Episode ``i`` of a run has reset seed
``seed + i`` and its delay stream seeded with ``SeedSequence([seed, i])`` whatever the mode
or guard, so runs of several modes are paired episode by episode (common random numbers).

Named per-chunk delay profiles (exp-delta's long tail and its tail-capped variant) are in
:data:`NAMED_CHUNK_PROFILES`, in ticks; :func:`chunk_profile_spec` turns one into a latency
spec for a given period.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tailguard.errors import ConfigError
from tailguard.firmware_sim.profile_spec import parse_profile
from tailguard.firmware_sim.profiles import Profile
from tailguard.runtime.chunk_guard import ChunkGuard, ScheduledChunkRunner

__all__ = [
    "NAMED_CHUNK_PROFILES",
    "ChunkEpisode",
    "async_runner",
    "chunk_profile",
    "chunk_profile_spec",
    "run_chunk_episode",
    "run_chunk_episodes",
]

#: Per-chunk inference delay distributions in control ticks, ``((probability, d), ...)``.
#: ``exp_delta_long_tail``: exp-delta's long tail (RTC, arXiv 2506.07339): a spike of d = 4
#: with probability 0.05, otherwise d = 0 (0.9) or d = 1 (0.1). ``exp_delta_tail_capped``:
#: the same stream with a tail cap of 2 ticks (the spike becomes d = 2).
NAMED_CHUNK_PROFILES: dict[str, tuple[tuple[float, int], ...]] = {
    "exp_delta_long_tail": ((0.95 * 0.9, 0), (0.95 * 0.1, 1), (0.05, 4)),
    "exp_delta_tail_capped": ((0.95 * 0.9, 0), (0.95 * 0.1, 1), (0.05, 2)),
}


def chunk_profile_spec(name: str, period_ns: int) -> dict[str, Any]:
    """The latency spec (JSON form) of a named per-chunk delay profile for ``period_ns``.

    A delay of d ticks is a fixed latency of ``d * period_ns`` (so ``ceil(latency /
    period) = d`` exactly). ``"nominal"`` is accepted too (every chunk on time, d = 0).

    Raises:
        ConfigError: an unknown name or a non-positive period.
    """
    if period_ns <= 0:
        raise ConfigError(f"period_ns: expected > 0, found {period_ns}")
    if name == "nominal":
        return {"kind": "fixed", "ns": 0}
    try:
        terms = NAMED_CHUNK_PROFILES[name]
    except KeyError:
        raise ConfigError(
            f"unknown chunk delay profile {name!r}; expected one of "
            f"{[*sorted(NAMED_CHUNK_PROFILES), 'nominal']}, or pass a latency spec"
        ) from None
    return {
        "kind": "mix",
        "components": [
            {"weight": w, "profile": {"kind": "fixed", "ns": d * period_ns}} for w, d in terms
        ],
    }


def chunk_profile(spec: str | dict[str, Any], period_ns: int, seed: int = 0) -> Profile:
    """A latency profile from a named chunk profile or any latency spec."""
    if isinstance(spec, str) and (spec in NAMED_CHUNK_PROFILES or spec == "nominal"):
        spec = chunk_profile_spec(spec, period_ns)
    return parse_profile(spec, nominal_ns=0, seed=seed)


@dataclass
class ChunkEpisode:
    """One simulated episode of a chunk policy.

    Attributes:
        index, reset_seed: the episode's position in its run and its env reset seed.
        ret: the episode's return; steps: control periods simulated (paused ones included).
        terminated: the env's termination (a fall) ended it.
        actions: float64 [steps, A], the command applied in each period.
        delays: d of every chunk requested after the first (in ticks).
        guard: the guard's ``stats()`` at the end of the episode (its counters are
            cumulative over a run; ``violations`` here are this episode's own).
    """

    index: int
    reset_seed: int
    ret: float
    steps: int
    terminated: bool
    actions: np.ndarray
    delays: list[int] = field(default_factory=list)
    guard: dict[str, Any] = field(default_factory=dict)


def _delta_counts(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def run_chunk_episode(
    task: Any,
    guard: ChunkGuard,
    draw: Callable[[], int],
    *,
    index: int,
    reset_seed: int,
    clock: list[int],
) -> ChunkEpisode:
    """Simulate one episode (see the module docstring).

    Args:
        task: a :class:`~tailguard.firmware_sim.tasks.MujocoTask`.
        guard: a ChunkGuard whose clock reads ``clock[0]``; for async its runner draws its
            delays with ``draw``.
        draw: the next chunk's delay in ticks, from the latency profile reseeded for this
            episode (the async runner and the sync pauses both call it).
        index, reset_seed: the episode's index and env seed.
        clock: one-element list, the simulated time in ns (shared with the guard's clock).
    """
    period = task.period_ns
    frame_skip = task.period_ns // task.substep_ns
    guard.reset()
    before = dict(guard.stats()["violations"])
    obs = task.reset(reset_seed)
    ret, steps, terminated = 0.0, 0, False
    actions: list[np.ndarray] = []
    applied = np.zeros(task.nu, np.float64)
    first_request = True
    limit = task.max_episode_steps

    def advance(ctrl: np.ndarray) -> bool:
        nonlocal ret, steps, terminated
        cmd = np.asarray(ctrl, dtype=task.action_dtype).copy()
        ret += task.run(cmd, frame_skip)
        steps += 1
        clock[0] += period
        actions.append(np.asarray(ctrl, np.float64).copy())
        terminated = task.terminated()
        return terminated or steps >= limit

    while True:
        action = np.asarray(guard.step(obs), np.float64)
        if guard.mode == "sync" and guard.last_request_tick == guard.tick:
            if first_request:
                first_request = False
            else:
                pause = draw()
                done = False
                for _ in range(pause):  # the loop waits; the plant keeps the last command
                    if advance(applied):
                        done = True
                        break
                if done:
                    break
        elif guard.last_request_tick == guard.tick:
            first_request = False
        applied = action.copy()
        if advance(applied):
            break
        obs = task.observe()
    st = guard.stats()
    st["violations"] = _delta_counts(st["violations"], before)
    return ChunkEpisode(
        index=index,
        reset_seed=reset_seed,
        ret=float(ret),
        steps=steps,
        terminated=bool(terminated),
        actions=np.asarray(actions),
        guard=st,
    )


def run_chunk_episodes(
    task: Any,
    make_guard: Callable[[Callable[[], int], Callable[[], int]], ChunkGuard],
    latency: str | dict[str, Any],
    episodes: int,
    seed: int,
) -> list[ChunkEpisode]:
    """Simulate ``episodes`` paired episodes (reset seed ``seed + i``, delay stream
    ``SeedSequence([seed, i])``).

    Args:
        task: a MujocoTask.
        make_guard: ``make_guard(clock, delays) -> ChunkGuard``: build the guard with
            ``clock=clock`` and, for async, ``runner=ScheduledChunkRunner(delays)``.
        latency: a named chunk profile (:data:`NAMED_CHUNK_PROFILES`, ``"nominal"``) or a
            latency spec (per chunk inference).
        episodes, seed: how many and from which seed.
    """
    period = task.period_ns
    profile = chunk_profile(latency, period, seed)
    time_ns = [0]
    recorded: list[int] = []

    def draw() -> int:
        d = math.ceil(profile.next_ns() / period)
        recorded.append(d)
        return d

    guard = make_guard(lambda: time_ns[0], draw)
    out = []
    try:
        for i in range(episodes):
            profile.reseed(np.random.SeedSequence([seed, i]))
            recorded.clear()
            ep = run_chunk_episode(task, guard, draw, index=i, reset_seed=seed + i, clock=time_ns)
            ep.delays = list(recorded)
            out.append(ep)
    finally:
        guard.close()
    return out


def async_runner(delays: Callable[[], int]) -> ScheduledChunkRunner:
    """The simulated-time runner of async mode (``make_guard``'s usual choice)."""
    return ScheduledChunkRunner(delays)
