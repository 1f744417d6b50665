"""Empirical timing data: our HdrHistogram decoder agrees with the reference library."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tailguard.errors import ProfileError
from tailguard.firmware_sim.empirical import decode_hdr_histogram, load_recorded_timing
from tailguard.firmware_sim.profile_spec import parse_profile


@pytest.mark.parametrize(("lowest", "digits"), [(1, 3), (1000, 2), (1, 2)])
def test_hdr_decode_matches_reference(lowest: int, digits: int) -> None:
    """Decoded buckets (highest equivalent value, count) equal hdrh's recorded iterator."""
    hdrh = pytest.importorskip("hdrh.histogram")
    h = hdrh.HdrHistogram(lowest, 10**11, digits)
    for v in np.random.default_rng(0).lognormal(14, 1.5, 3000).astype(np.int64):
        h.record_value(int(v) + lowest)
    ref = [(it.value_iterated_to, it.count_at_value_iterated_to) for it in
           hdrh.HdrHistogram.decode(h.encode()).get_recorded_iterator()]  # fmt: skip
    rec = decode_hdr_histogram(h.encode())
    assert list(zip(rec.values_ns.tolist(), rec.weights.astype(int).tolist(), strict=True)) == ref


def test_hdr_profile_quantiles_match_reference(tmp_path: Path) -> None:
    """An empirical profile from an HdrHistogram file reports hdrh's percentiles."""
    hdrh = pytest.importorskip("hdrh.histogram")
    h = hdrh.HdrHistogram(1, 10**10, 3)
    for v in np.random.default_rng(1).lognormal(14, 1.0, 5000).astype(np.int64):
        h.record_value(int(v))
    path = tmp_path / "lat.hdr"
    path.write_text(h.encode().decode() + "\n")
    p = parse_profile(f"empirical:{path}")
    for q in (50, 95, 99):
        assert p.quantile_ns(q / 100) == h.get_value_at_percentile(q)


def test_trace_files(tmp_path: Path) -> None:
    """.npy, JSON list, JSON trace_ns and one-int-per-line text all load as traces."""
    values = [5, 7, 9]
    np.save(tmp_path / "t.npy", np.asarray(values, np.int64))
    (tmp_path / "a.json").write_text(json.dumps(values))
    (tmp_path / "b.json").write_text(json.dumps({"trace_ns": values}))
    (tmp_path / "c.txt").write_text("5\n7\n9\n")
    for name in ("t.npy", "a.json", "b.json", "c.txt"):
        rec = load_recorded_timing(tmp_path / name)
        assert rec.is_trace and rec.values_ns.tolist() == values
        assert parse_profile(f"empirical:{tmp_path / name}").sample(4).tolist() == [5, 7, 9, 5]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("HISTFnotbase64!!", "base64"),
        ('{"hdr": "QUJD"}', "too short"),
        ('{"hdr": "AAAAAAAAAAAAAAAA"}', "cookie"),
        ("1\n2\nx\n", "one integer ns per line"),
        ('{"counts": {"1": 0}}', "no recorded values"),
        ('{"counts": {"a": 1}}', "integers"),
        ('{"trace_ns": [1, -2]}', "negative"),
        ('{"hdr": "x", "counts": {}}', "exactly one"),
        ("[]", "non-empty"),
    ],
)
def test_bad_files_raise_profile_error(tmp_path: Path, content: str, fragment: str) -> None:
    """Unusable recorded-timing files raise ProfileError naming the file and the problem."""
    suffix = ".json" if content.startswith(("{", "[")) else ".txt"
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(ProfileError, match=fragment) as info:
        load_recorded_timing(path)
    assert str(path) in str(info.value)
