"""``RayExecutor``: the audit's work units on a Ray cluster (``pip install 'tailguard[cluster]'``).

The same units as the local executors (condition x block of episodes, see
:mod:`tailguard.audit.units`), run by :func:`~tailguard.audit.units.run_unit` on Ray workers,
so the results are the local executor's, byte for byte (same inputs, same seed).

What travels: each file a unit reads (the ONNX policy, a fallback ONNX policy, measured
profile files) is read once here, put in Ray's object store by **content** (``ray.put``) and
written by each worker node into its own cache (``$TMPDIR/tailguard-ray-UID/SHA256/NAME``,
checked against the sha256); the unit is rewritten to those copies. Nothing is read by path
on another node except what the env id itself names (``mjcf:PATH``, ``py:MODULE:FUNCTION``:
installed there like tailguard). Results come back through the object store; their units are
this process's own.

Faults: a worker process that dies (killed, out of memory) has its unit retried
(``max_retries``, Ray's task retries); a unit that raises is not retried (it would raise
again) and fails the run with :class:`UnitFailedError`, naming the unit. Ctrl-C cancels every
unit not finished.

``ray`` is imported only when an executor connects: the rest of tailguard never needs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.audit.portable import relocate, unit_files
from tailguard.audit.units import UnitResult, WorkUnit
from tailguard.errors import ConfigError, TailguardError

__all__ = ["DEFAULT_CONNECT_TIMEOUT_S", "RayExecutor", "UnitFailedError", "parse_address"]

#: How long to wait for a cluster's head to accept a connection, s.
DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: Ray client's default port (``ray://HOST`` without a port).
_CLIENT_PORT = 10001
_INSTALL = "pip install 'tailguard[cluster]'"

OnResult = Callable[[UnitResult], None]


class UnitFailedError(TailguardError):
    """A work unit failed on the cluster (its own error, or its worker died every retry)."""


def parse_address(address: str | None) -> tuple[str, tuple[str, int] | None]:
    """``(address for ray.init, (host, port) to probe or None)``.

    Accepted: None (start a Ray on this machine), ``auto`` (the cluster ``ray start`` runs
    here), ``HOST:PORT`` (a head's GCS port, 6379 by default) and ``ray://HOST[:PORT]``
    (Ray client, port 10001 by default).

    Raises:
        ConfigError: anything else.
    """
    if address is None:
        return "", None
    text = address.strip()
    if text == "auto":
        return "auto", None
    how = (
        f"--address must be auto, HOST:PORT or ray://HOST[:PORT], got {address!r}; "
        "e.g. --address auto on a node where `ray start` ran, --address 10.0.0.5:6379"
    )
    client = text.startswith("ray://")
    rest = text[len("ray://") :] if client else text
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        host, port_text = (rest, str(_CLIENT_PORT)) if client else ("", "")
    host = host.strip("[]")
    if not host or "/" in host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(how)
    return text, (host, int(port_text))


def _probe(host: str, port: int, timeout_s: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {host}:{port} within {timeout_s:g} s "
            f"({exc.strerror or exc}); start its head with `ray start --head` and pass its "
            "address, or use --executor local"
        ) from None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed: {_INSTALL}") from None
    return ray


def _cache_root() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"tailguard-ray-{uid}"


def _materialize(digest: str, name: str, ref: Any) -> str:
    """The worker's copy of a file sent by content (written once per node, atomically)."""
    import ray

    path = _cache_root() / digest / name
    if not path.is_file():
        data = ray.get(ref)
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise UnitFailedError(f"{name} arrived corrupted (sha256 {got}, sent {digest})")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return str(path)


def run_portable(unit: WorkUnit, files: dict[str, tuple[str, str, Any]]) -> UnitResult:
    """On a worker: fetch the unit's files by content, run it on the local copies."""
    from tailguard.audit.units import run_unit

    where = {p: _materialize(digest, name, ref) for p, (digest, name, ref) in files.items()}
    return run_unit(relocate(unit, where))


def _owned_arrays(result: UnitResult, unit: WorkUnit) -> UnitResult:
    """The result with this process's unit and writable copies of its arrays (Ray hands
    numpy arrays back as read-only views into the object store)."""
    episodes = []
    for e in result.episodes:
        arrays = {
            f.name: np.array(getattr(e, f.name))
            for f in dataclasses.fields(e)
            if isinstance(getattr(e, f.name), np.ndarray)
        }
        episodes.append(dataclasses.replace(e, **arrays))
    return UnitResult(unit, episodes)


def _describe(unit: WorkUnit) -> str:
    tag = f" ({unit.tag})" if unit.tag else ""
    return (
        f"work unit {unit.condition.name}{tag}, episodes {unit.start}..{unit.stop - 1} of "
        f"{Path(unit.target.policy).name} on {unit.target.env}"
    )


class RayExecutor:
    """Runs the units as Ray tasks (one CPU each).

    Args:
        address: None to start a Ray on this machine (``num_cpus``; its workers import what
            this process can), ``auto``, ``HOST:PORT`` or ``ray://HOST[:PORT]`` (see
            :func:`parse_address`). A Ray this process already initialised is used as is.
        num_cpus: CPUs of a Ray started here (default: all).
        max_retries: times a unit is re-run when its worker process dies.
        connect_timeout_s: how long the head has to accept the connection.
        while_waiting: work for this process once every unit is submitted.

    Raises:
        ConfigError: a malformed address (at once); Ray not installed or the cluster
            unreachable (at :meth:`connect`, before any unit runs).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        max_retries: int = 3,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        while_waiting: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self._init_address, self._probe_at = parse_address(address)
        if num_cpus is not None and num_cpus < 1:
            raise ConfigError(f"num_cpus must be >= 1, got {num_cpus}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.connect_timeout_s = connect_timeout_s
        self.while_waiting = while_waiting
        self.workers: int | None = None
        self._ray: Any = None
        self._started = False
        self._remote: Any = None

    def connect(self) -> None:
        """Connect to (or start) Ray; idempotent."""
        if self._ray is not None:
            return
        ray = _import_ray()
        if self._probe_at is not None:
            _probe(*self._probe_at, self.connect_timeout_s)
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
            if self._init_address:
                kwargs["address"] = self._init_address
                if self._init_address.startswith("ray://"):
                    kwargs.pop("include_dashboard")
            else:
                kwargs["num_cpus"] = self.num_cpus
                paths = [p for p in sys.path if p and os.path.isdir(p)]
                kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}
            try:
                ray.init(**kwargs)
            except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ...
                where = self.address or "a new local Ray"
                raise ConfigError(
                    f"cannot connect to the Ray cluster at {where}: {exc}; start one with "
                    "`ray start --head`, or use --executor local"
                ) from None
            self._started = True
        self._ray = ray
        self.workers = int(ray.cluster_resources().get("CPU", 0)) or None
        self._remote = ray.remote(num_cpus=1, max_retries=self.max_retries)(run_portable)

    def close(self) -> None:
        """Shut down the Ray this executor started (a cluster it joined keeps running)."""
        if self._ray is not None and self._started:
            self._ray.shutdown()
        self._ray = None
        self._started = False

    def __enter__(self) -> RayExecutor:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put_files(self, units: Sequence[WorkUnit]) -> dict[str, tuple[str, str, Any]]:
        table: dict[str, tuple[str, str, Any]] = {}
        for unit in units:
            for path in unit_files(unit):
                if path in table:
                    continue
                try:
                    data = Path(path).read_bytes()
                except OSError as exc:
                    raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", path) from None
                digest = hashlib.sha256(data).hexdigest()
                table[path] = (digest, Path(path).name, self._ray.put(data))
        return table

    def run(self, units: Sequence[WorkUnit], on_result: OnResult | None = None) -> list[UnitResult]:
        """Run every unit on the cluster; results in the order of ``units``.

        Raises:
            UnitFailedError: a unit raised, or its worker died more than ``max_retries``
                times (the other units are cancelled).
        """
        self.connect()
        ray = self._ray
        table = self._put_files(units)
        refs = [self._remote.remote(u, {p: table[p] for p in unit_files(u)}) for u in units]
        index = {ref: i for i, ref in enumerate(refs)}
        results: dict[int, UnitResult] = {}
        pending = list(refs)
        try:
            if self.while_waiting is not None:
                self.while_waiting()
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    i = index[ref]
                    try:
                        raw = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        raise UnitFailedError(
                            f"{_describe(units[i])} failed: {_cause(exc)}"
                        ) from None
                    results[i] = _owned_arrays(raw, units[i])
                    if on_result is not None:
                        on_result(results[i])
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return [results[i] for i in range(len(units))]


def _cause(exc: Exception) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"
