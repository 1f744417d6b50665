"""The firmware's command-timeout watchdog: damp when commands stop, recover when they resume.

Pure logic on an injected time base, so it is tested without a clock or a process.
"""

from __future__ import annotations

__all__ = ["CommandWatchdog"]


class CommandWatchdog:
    """Command-timeout watchdog: trips when commands stop, recovers when they resume.

    Pure logic on an injected time base (no clock of its own). Starts tripped: the robot
    damps until the first command.

    Args:
        timeout_ns: longest allowed silence between valid commands, ns.
        now_ns: the start time, ns.
    """

    def __init__(self, timeout_ns: int, now_ns: int) -> None:
        self.timeout_ns = timeout_ns
        self.tripped = True
        self.last_command_ns = now_ns
        self.trips = 0
        self.recoveries = 0

    def command(self, now_ns: int) -> int | None:
        """A valid command was applied at ``now_ns``.

        Returns:
            The silence that ends here (ns) if this command recovers from a trip, else None.
        """
        gap_ns = now_ns - self.last_command_ns
        self.last_command_ns = now_ns
        if self.tripped:
            self.tripped = False
            self.recoveries += 1
            return gap_ns
        return None

    def check(self, now_ns: int) -> int | None:
        """Check the timeout at ``now_ns``.

        Returns:
            The silence so far (ns) if the watchdog trips now, else None.
        """
        silence_ns = now_ns - self.last_command_ns
        if not self.tripped and silence_ns > self.timeout_ns:
            self.tripped = True
            self.trips += 1
            return silence_ns
        return None
