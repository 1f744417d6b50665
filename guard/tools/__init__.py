"""Command-line entry points: the CLI, the demo, the loop benchmark and its report, and
``inspect``. Nothing imports this package.
"""
