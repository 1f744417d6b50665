"""Statistics shared by every layer: the log-linear histogram, its codecs, and the one
percentile definition.
"""
