"""tailguard: a real-time deployment guard for robot RL policies.

The runtime imports only numpy and onnxruntime (plus pyzmq/msgpack for telemetry);
torch, MuJoCo and gymnasium are imported lazily by the offline parts.

    from tailguard import Guard, OnnxPolicy, load_envelope
    guard = Guard(OnnxPolicy("policy.onnx"), load_envelope("envelope.json"), fallback="hold")
    action = guard.step(obs)
"""

if __name__ != "tailguard":  # e.g. `import guard` from the repository root
    raise ImportError(
        f"the folder 'guard/' is the package 'tailguard'; import tailguard "
        f"(found it imported as {__name__!r}; install with pip install -e .)"
    )

from tailguard.envelope.model import Envelope, load_envelope, save_envelope, starter_envelope
from tailguard.errors import (
    EnvelopeError,
    HashMismatchError,
    PolicyLoadError,
    TailguardError,
)
from tailguard.runtime.guard import Guard, register_sink_factory
from tailguard.runtime.pacer import Pacer
from tailguard.runtime.policy import CallablePolicy, OnnxPolicy
from tailguard.runtime.state import GuardState, Response, Violation
from tailguard.stats.histogram import LogLinearHistogram

__version__ = "0.1.0"


def _recorder(path: object, **kwargs: object) -> object:
    # kwargs: clock= (the guard's time base, so one file has one clock)
    from tailguard.sinks.flight_recorder import FlightRecorder

    return FlightRecorder(path, **kwargs)  # type: ignore[arg-type]


def _telemetry(endpoint: str, **kwargs: object) -> object:
    from tailguard.sinks.telemetry import TelemetryPublisher

    return TelemetryPublisher(endpoint, **kwargs)  # type: ignore[arg-type]


# The composition root: the runtime never imports the sinks; paths and endpoints passed to
# Guard(recorder=..., telemetry=...) become sinks through these (imported on first use).
register_sink_factory("recorder", _recorder)
register_sink_factory("telemetry", _telemetry)

__all__ = [
    "CallablePolicy",
    "certify",
    "run_audit",
    "Envelope",
    "EnvelopeError",
    "Guard",
    "GuardState",
    "HashMismatchError",
    "LogLinearHistogram",
    "OnnxPolicy",
    "Pacer",
    "PolicyLoadError",
    "Response",
    "TailguardError",
    "Violation",
    "load_envelope",
    "save_envelope",
    "starter_envelope",
    "__version__",
]


def __getattr__(name: str) -> object:
    # The offline audit is heavy (scipy, MuJoCo): loaded on first use, never by the runtime.
    if name in ("run_audit", "certify"):
        from tailguard import audit

        return getattr(audit, name)
    raise AttributeError(f"module 'tailguard' has no attribute '{name}'")
