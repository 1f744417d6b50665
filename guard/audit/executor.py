"""Executors: who runs the work units. A small interface so that another executor (a
cluster) can run the same units; results never depend on the executor.

``LocalExecutor`` runs units in this process; ``ProcessExecutor`` runs them on a local
process pool (``--workers N|auto``). Both return the results in unit order, whatever order
the units finished in.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from tailguard.audit.units import UnitResult, WorkUnit, run_unit
from tailguard.errors import ConfigError

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "ProcessExecutor",
    "make_executor",
    "parse_workers",
    "select_executor",
]

OnResult = Callable[[UnitResult], None]


class Executor(Protocol):
    """Runs work units."""

    def run(self, units: Sequence[WorkUnit], on_result: OnResult | None = None) -> list[UnitResult]:
        """Run every unit; ``on_result`` is called as each finishes (any order); returns
        the results in the order of ``units``."""
        ...


class LocalExecutor:
    """Runs the units one after the other in this process."""

    workers = 1

    def run(self, units: Sequence[WorkUnit], on_result: OnResult | None = None) -> list[UnitResult]:
        out = []
        for unit in units:
            result = run_unit(unit)
            if on_result is not None:
                on_result(result)
            out.append(result)
        return out


class ProcessExecutor:
    """Runs the units on a pool of ``workers`` local processes.

    Workers are forked on Linux (they inherit the imported modules; every unit builds its
    own loop and policy session, so nothing is shared after the fork) and spawned elsewhere.
    """

    def __init__(self, workers: int, while_waiting: Callable[[], None] | None = None) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        # Work for this (otherwise idle) process once every unit is submitted, e.g. importing
        # the report's plotting library; it runs after the workers are forked.
        self.while_waiting = while_waiting

    def run(self, units: Sequence[WorkUnit], on_result: OnResult | None = None) -> list[UnitResult]:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        method = "fork" if sys.platform.startswith("linux") else "spawn"
        ctx = multiprocessing.get_context(method)
        results: dict[int, UnitResult] = {}
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx) as pool:
            futures = {pool.submit(run_unit, u): i for i, u in enumerate(units)}
            if self.while_waiting is not None:
                self.while_waiting()
            for fut in as_completed(futures):
                result = fut.result()
                results[futures[fut]] = result
                if on_result is not None:
                    on_result(result)
        return [results[i] for i in range(len(units))]


def parse_workers(value: str | int) -> int:
    """``"auto"`` (the CPUs this process may use) or a positive integer.

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--workers must be 'auto' or a positive integer, got {value!r}"
        ) from None
    if n < 1:
        raise ConfigError(f"--workers must be 'auto' or a positive integer, got {value!r}")
    return n


def make_executor(
    workers: int, while_waiting: Callable[[], None] | None = None
) -> LocalExecutor | ProcessExecutor:
    """In-process for one worker, a process pool otherwise (``while_waiting``: see
    :class:`ProcessExecutor`; ignored in-process)."""
    return LocalExecutor() if workers <= 1 else ProcessExecutor(workers, while_waiting)


#: The executor kinds ``--executor`` accepts (``ray``: :mod:`tailguard.audit.ray_executor`).
EXECUTORS = ("local", "ray")


def select_executor(
    executor: Executor | str | None,
    *,
    workers: int = 1,
    address: str | None = None,
    while_waiting: Callable[[], None] | None = None,
) -> tuple[Executor, Callable[[], None]]:
    """The executor an API call asked for, and what to call when done with it.

    ``executor``: an :class:`Executor` (used as is; closing it is the caller's business),
    ``None`` or ``"local"`` (:func:`make_executor` with ``workers``) or ``"ray"`` (a
    :class:`~tailguard.audit.ray_executor.RayExecutor` at ``address``, connected here so a
    missing Ray or an unreachable cluster is refused before any episode runs).

    Raises:
        ConfigError: an unknown executor name, ``address`` without Ray, Ray missing, the
            cluster unreachable.
    """
    if executor is not None and not isinstance(executor, str):
        return executor, lambda: None
    kind = (executor or "local").strip().lower()
    if kind not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if kind == "local":
        if address is not None:
            raise ConfigError("--address is for --executor ray; drop it or add --executor ray")
        return make_executor(workers, while_waiting), lambda: None
    from tailguard.audit.ray_executor import RayExecutor

    ray_executor = RayExecutor(address, while_waiting=while_waiting)
    ray_executor.connect()
    return ray_executor, ray_executor.close
