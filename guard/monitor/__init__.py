"""The ZMQ sidecar monitor: watch a running guard from another process.

``tailguard monitor --connect tcp://127.0.0.1:5555`` (see :mod:`tailguard.monitor.cli`).
Modules: ``wire`` (decoding untrusted messages), ``stats`` (the guard's view), ``rules``
(alert rules and presets), ``alerts`` (JSONL / exec), ``recording`` (``--record``),
``session`` (live loop and ``--once``), ``prometheus``, ``view`` (rich), and the command
channel (off by default): ``command`` (protocol, keys), ``command_server`` (guard side, run
by the telemetry publisher), ``command_client`` (``--send`` and the ``trip`` action).
"""

from tailguard.monitor.rules import PRESETS, Rule, RuleEngine, load_rules
from tailguard.monitor.session import Monitor, analyse_file, run_live
from tailguard.monitor.stats import MonitorState
from tailguard.protocol.telemetry_wire import decode_message

__all__ = [
    "PRESETS",
    "Monitor",
    "MonitorState",
    "Rule",
    "RuleEngine",
    "analyse_file",
    "decode_message",
    "load_rules",
    "run_live",
]
