"""Statistics shared by every layer: the log-linear histogram, its codecs, and the one
percentile definition.
"""

#: "Never" in integer nanoseconds: a threshold that disables a check, and the top of every
#: guard histogram (so any value that passes a check can be recorded). The one definition.
NEVER_NS = (1 << 62) - 1

__all__ = ["NEVER_NS"]
