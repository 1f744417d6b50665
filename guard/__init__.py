"""tailguard: a real-time deployment guard for robot RL policies.

The runtime imports only numpy and onnxruntime (plus pyzmq/msgpack for telemetry);
torch, MuJoCo and gymnasium are imported lazily by the offline parts.

    from guard import Guard, OnnxPolicy, load_envelope
    guard = Guard(OnnxPolicy("policy.onnx"), load_envelope("envelope.json"), fallback="hold")
    action = guard.step(obs)
"""

from guard.core import Guard
from guard.envelope import Envelope, load_envelope, save_envelope, starter_envelope
from guard.errors import (
    EnvelopeError,
    HashMismatchError,
    PolicyLoadError,
    TailguardError,
)
from guard.histogram import LogLinearHistogram
from guard.pacer import Pacer
from guard.policy import CallablePolicy, OnnxPolicy
from guard.state import GuardState, Response, Violation

__version__ = "0.1.0"

__all__ = [
    "CallablePolicy",
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
