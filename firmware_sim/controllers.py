"""What decides the action at each simulated tick.

The loop calls ``controller(obs, obs_time_ns) -> action`` once per tick and
``controller.reset()`` at every episode start (a controller may expose ``decide``, a
callable with the same signature that the loop fetches after ``reset()`` and calls instead:
one Python frame less per tick). The tick's own time is the loop's
:class:`~tailguard.firmware_sim.clock.SimClock` (inject the same clock into anything that needs
time,
e.g. a ``Guard``); ``obs_time_ns`` is when the observation was sampled (older than the tick
when there is an observation delay), ready to pass as ``obs_timestamp_ns``.

Inference latency: the loop samples one latency per tick and arms :class:`SimulatedInference`
with it. A policy wrapped by ``SimulatedInference.wrap`` advances the clock by the armed
latency while it is "running", so a guard around it measures that latency (and can miss a
deadline) exactly as on hardware. If nothing consumed the latency, the loop advances the clock
itself after the controller returns. Either way the command is released at the same time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tailguard.errors import PolicyLoadError
from tailguard.firmware_sim.clock import SimClock

__all__ = [
    "CallableController",
    "Controller",
    "LinearController",
    "OnnxController",
    "SimulatedInference",
]


@runtime_checkable
class Controller(Protocol):
    """Decides one action per tick."""

    def __call__(self, obs: np.ndarray, obs_time_ns: int) -> np.ndarray:
        """Return the action (float, shape (act_dim,)) for ``obs`` (float64, shape (obs_dim,))."""
        ...

    def reset(self) -> None:
        """Forget per-episode state."""
        ...


class CallableController:
    """Adapts a plain ``fn(obs) -> action`` (numpy policy, lambda) to the protocol."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.fn = fn

    def __call__(self, obs: np.ndarray, obs_time_ns: int) -> np.ndarray:
        return self.fn(obs)

    def reset(self) -> None:
        pass


class LinearController:
    """``action = tanh(W @ obs + b)`` (or without tanh): a tiny deterministic test policy.

    Args:
        weight: float, shape (act_dim, obs_dim).
        bias: float, shape (act_dim,).
        squash: apply tanh.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray, squash: bool = True) -> None:
        self.weight = np.asarray(weight, np.float32)
        self.bias = np.asarray(bias, np.float32)
        self.squash = squash

    def __call__(self, obs: np.ndarray, obs_time_ns: int) -> np.ndarray:
        y = self.weight @ obs.astype(np.float32) + self.bias
        return np.tanh(y) if self.squash else y

    def reset(self) -> None:
        pass


class OnnxController:
    """Runs an ONNX policy with plain onnxruntime (one thread, CPU).

    Input ``obs`` and output ``actions`` when present, else the first input and output. The
    observation is cast to the input's float type and given a batch dimension of 1.

    Args:
        path: the ``.onnx`` file.

    Raises:
        PolicyLoadError: the file is missing or is not a loadable model.
    """

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        p = Path(path)
        if not p.is_file():
            raise PolicyLoadError("ONNX policy file not found", path=p)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(p), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise PolicyLoadError(f"onnxruntime cannot load the model: {exc}", path=p) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names_in = [i.name for i in inputs]
        names_out = [o.name for o in outputs]
        self.input_name = "obs" if "obs" in names_in else names_in[0]
        self.output_name = "actions" if "actions" in names_out else names_out[0]
        inp = next(i for i in inputs if i.name == self.input_name)
        out = next(o for o in outputs if o.name == self.output_name)
        self.input_dtype = np.float64 if inp.type == "tensor(double)" else np.float32
        self._outputs = [self.output_name]
        self._feed: dict[str, np.ndarray] = {}
        self._binding, self._x, self._y = self._bind(inp, out)

    def _bind(self, inp: Any, out: Any) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
        """IO binding to preallocated [1, O] / [1, A] buffers (about 8 us a call instead of
        about 20 for ``session.run``, the same kernels and results), when both shapes are
        ``[batch, N]`` with a known N and the model has no other input (a recurrent policy's
        state is fed by the caller)."""
        types = {"tensor(float)": np.float32, "tensor(double)": np.float64}
        shape_in, shape_out = list(inp.shape), list(out.shape)
        if (
            len(self.session.get_inputs()) != 1
            or len(shape_in) != 2
            or len(shape_out) != 2
            or not isinstance(shape_in[1], int)
            or not isinstance(shape_out[1], int)
            or out.type not in types
        ):
            return None, None, None
        x = np.zeros((1, shape_in[1]), self.input_dtype)
        y = np.zeros((1, shape_out[1]), types[out.type])
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, x)
        binding.bind_output(self.output_name, "cpu", 0, y.dtype, list(y.shape), y.ctypes.data)
        return binding, x, y

    def __call__(self, obs: np.ndarray, obs_time_ns: int) -> np.ndarray:
        x = self._x
        if x is not None and obs.shape == x.shape[1:]:
            x[0] = obs  # cast as astype would
            self.session.run_with_iobinding(self._binding)
            return self._y[0].copy()  # the loop keeps the previous command while this runs
        self._feed[self.input_name] = obs.astype(self.input_dtype, copy=False)[None, :]
        return self.session.run(self._outputs, self._feed)[0][0]

    def reset(self) -> None:
        pass


class SimulatedInference:
    """Makes a policy call take simulated time: advances the clock by the armed latency.

    The loop calls ``arm(latency_ns)`` before each tick and ``settle()`` after it; a policy
    wrapped with :meth:`wrap` consumes the armed latency when it runs (once per tick).
    """

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self._armed_ns = 0

    def arm(self, latency_ns: int) -> None:
        """Set the latency of this tick's inference, ns."""
        self._armed_ns = latency_ns

    def consume(self) -> None:
        """Advance the clock by the armed latency (if not consumed yet this tick)."""
        if self._armed_ns:
            self.clock.advance(self._armed_ns)
            self._armed_ns = 0

    def settle(self) -> int:
        """Consume what is left of the latency; return the clock (the release time), ns."""
        self.consume()
        return self.clock()

    def wrap(
        self, policy: Callable[[np.ndarray], np.ndarray]
    ) -> Callable[[np.ndarray], np.ndarray]:
        """Return ``policy`` made to take the armed latency of simulated time per call."""

        def timed(obs: np.ndarray) -> np.ndarray:
            out = policy(obs)
            self.consume()
            return out

        return timed
