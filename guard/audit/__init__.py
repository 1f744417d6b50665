"""The offline timing audit: sweeps, paired statistics, envelope derivation, certification and
reports (built by the audit issue; empty until then).
"""
