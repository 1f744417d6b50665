"""Empirical timing data: the one HdrHistogram decoder agrees with the reference library, and
every file or inline spec is read with bounded memory and work."""

from __future__ import annotations

import base64
import functools
import json
import struct
import subprocess
import sys
import tempfile
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailguard.errors import ProfileError
from tailguard.firmware_sim import empirical
from tailguard.firmware_sim.empirical import (
    MAX_TRACE_VALUES,
    decode_hdr_histogram,
    load_recorded_timing,
    timing_from_json,
)
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
        ('{"counts": {"a": 1}}', "integer value"),
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


def test_there_is_one_hdr_decoder() -> None:
    """empirical.py keeps no decoder of its own: no zlib, no varint reader of its own."""
    source = Path(empirical.__file__).read_text()
    assert "zlib" not in source and "_read_varint" not in source
    assert "decode_hdr_buckets" in source


@functools.lru_cache(maxsize=4)
def _bomb_text(inflated_bytes: int, declared_len: int = 0) -> str:
    """A V2 blob whose deflate stream of zeros inflates to ``inflated_bytes``; built in chunks."""
    header = struct.pack(">IIiiqqd", 0x1C849313, declared_len, 0, 2, 1, 2**40, 1.0)
    deflater = zlib.compressobj(9)
    parts = [deflater.compress(header)]
    chunk = bytes(2**20)
    for _ in range(inflated_bytes // len(chunk)):
        parts.append(deflater.compress(chunk))
    parts.append(deflater.flush())
    compressed = b"".join(parts)
    return base64.b64encode(struct.pack(">II", 0x1C849314, len(compressed)) + compressed).decode()


_RSS_CHILD = textwrap.dedent(
    """
    import sys
    from tailguard.errors import ProfileError
    from tailguard.firmware_sim.profile_spec import parse_profile
    try:
        parse_profile(sys.stdin.read())
    except ProfileError as exc:
        print("refused:", exc)
    else:
        print("accepted")
    # VmHWM is this process's own peak; ru_maxrss keeps the parent's across fork+exec.
    status = open("/proc/self/status").read().splitlines()
    print("maxrss_kb", next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")))
    """
)


def _load_in_child(spec: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD],
        input=spec,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    message, rss_line = done.stdout.strip().rsplit("\n", 1)
    return message, int(rss_line.split()[1])


@pytest.mark.parametrize("declared_len", [0, 9 * 4480])
def test_zip_bomb_profile_file_is_refused_with_bounded_memory(
    tmp_path: Path, declared_len: int
) -> None:
    """A 1.4 MB profile file inflating to 1 GiB is refused; the loading process stays < 300 MB."""
    path = tmp_path / "bomb.hgrm"
    path.write_text(_bomb_text(2**30, declared_len) + "\n")
    assert path.stat().st_size < 2_000_000
    message, rss_kb = _load_in_child(f"empirical:{path}")
    assert message.startswith("refused:") and str(path) in message
    assert "inflates beyond" in message
    assert rss_kb < 300 * 1024
    print(f"peak RSS {rss_kb / 1024:.0f} MB")


def test_zip_bomb_inline_hdr_spec_is_refused_with_bounded_memory() -> None:
    """The same bomb as an inline JSON ``hdr`` spec is refused within the same memory bound."""
    spec = json.dumps({"kind": "empirical", "hdr": _bomb_text(2**28)})
    message, rss_kb = _load_in_child(spec)
    assert message.startswith("refused:") and "inflates beyond" in message
    assert rss_kb < 300 * 1024


def _npy_with_header(path: Path, shape: tuple[int, ...], data: bytes, descr: str = "<i8") -> Path:
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": descr, "fortran_order": False, "shape": shape}
        )
        f.write(data)
    return path


def test_npy_header_declaring_1e12_values_is_refused_before_reading(tmp_path: Path) -> None:
    """A 100-byte .npy whose header declares 10**12 int64 values is refused by its header."""
    path = _npy_with_header(tmp_path / "huge.npy", (10**12,), bytes(16))
    message, rss_kb = _load_in_child(f"empirical:{path}")
    assert f"declares {10**12} values" in message and message.startswith("refused:")
    assert rss_kb < 300 * 1024


@pytest.mark.parametrize(
    ("shape", "data", "descr", "fragment"),
    [
        ((4,), bytes(16), "<i8", "holds 16 bytes of data"),
        ((MAX_TRACE_VALUES + 1,), b"", "<i8", "at most"),
        ((2, 2), bytes(32), "<i8", "1-D"),
        ((2,), bytes(2), "|b1", "1-D integers or floats"),
    ],
)
def test_bad_npy_headers_are_refused(
    tmp_path: Path, shape: tuple[int, ...], data: bytes, descr: str, fragment: str
) -> None:
    """.npy shape, dtype and length are checked against the header before reading the data."""
    path = _npy_with_header(tmp_path / "bad.npy", shape, data, descr)
    with pytest.raises(ProfileError, match=fragment):
        load_recorded_timing(path)


def test_counts_near_float_max_are_normalised_not_infinite() -> None:
    """Counts summing past float max still weigh equally: both buckets are sampled, 50/50."""
    profile = parse_profile({"kind": "empirical", "counts": {"1000": 1e308, "2000": 1e308}})
    values = profile.sample(20_000)
    assert set(np.unique(values).tolist()) == {1000, 2000}
    assert abs(float(np.mean(values == 1000)) - 0.5) < 0.02
    assert profile.cdf(1000) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"trace_ns": [1e300, 10]}, r"trace value 1e\+300 ns at index 0 is outside \[0, 4611"),
        ({"trace_ns": [5, 2**70]}, "trace value 1180591620717411303424 ns at index 1 is outside"),
        ({"trace_ns": [5, float("nan")]}, "finite numbers of ns; index 1 is nan"),
        ({"trace_ns": [5, -3]}, "negative durations; index 1 is -3"),
        ({"trace_ns": [True, False]}, "numbers of ns"),
        ({"trace_ns": "123"}, "sequence of ns"),
        ({"counts": {"1000": float("inf")}}, "finite and non-negative"),
        ({"counts": {str(2**63): 1}}, "outside"),
        ({"counts": {"-1": 1}}, "outside"),
        ({"counts": {"1000": True}}, "numeric count"),
        ({"hdr": 12}, "base64 string"),
    ],
)
def test_bad_inline_data_is_refused(obj: dict, fragment: str) -> None:
    """Inline traces and counts are checked value by value: range, finiteness, type."""
    with pytest.raises(ProfileError, match=fragment):
        timing_from_json(obj)


def test_oversized_inputs_are_refused_by_their_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """File size, line length, trace length and histogram entries each have a stated bound."""
    monkeypatch.setattr(empirical, "MAX_PROFILE_FILE_BYTES", 100)
    big = tmp_path / "big.txt"
    big.write_text("1\n" * 100)
    with pytest.raises(ProfileError, match="larger than the 100 accepted"):
        load_recorded_timing(big)
    monkeypatch.setattr(empirical, "MAX_TRACE_VALUES", 3)
    with pytest.raises(ProfileError, match="longer than the 3 accepted"):
        timing_from_json([1, 2, 3, 4])
    small = tmp_path / "small.txt"
    small.write_text("1\n2\n3\n4\n")
    with pytest.raises(ProfileError, match="at most 3 values; line 4"):
        load_recorded_timing(small)
    monkeypatch.setattr(empirical, "MAX_PROFILE_FILE_BYTES", 10**6)
    wide = tmp_path / "wide.txt"
    wide.write_text("1 " * 3000)
    with pytest.raises(ProfileError, match="line 1 is longer than 4096 characters"):
        load_recorded_timing(wide)
    monkeypatch.setattr(empirical, "MAX_JSON_FILE_BYTES", 10)
    (tmp_path / "t.json").write_text("[1, 2, 3, 4, 5]")
    with pytest.raises(ProfileError, match=r"store long traces as \.npy"):
        load_recorded_timing(tmp_path / "t.json")
    monkeypatch.setattr(empirical, "MAX_HISTOGRAM_BUCKETS", 2)
    with pytest.raises(ProfileError, match="3 entries; at most 2"):
        timing_from_json({"counts": {"1": 1, "2": 1, "3": 1}})


def test_deeply_nested_json_file_is_refused(tmp_path: Path) -> None:
    """A JSON profile nested 100k deep raises ProfileError, not RecursionError."""
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ProfileError, match="nest"):
        load_recorded_timing(path)


def _valid_file_bytes(suffix: str) -> bytes:
    """A small valid file of each kind, as a seed for byte mutation."""
    if suffix == ".npy":
        import io

        buf = io.BytesIO()
        np.save(buf, np.array([5, 7, 9], np.int64))
        return buf.getvalue()
    if suffix == ".json":
        return b'{"counts": {"1000": 3, "5000": 1}}'
    if suffix == ".hgrm":
        from tailguard.stats.histogram import LogLinearHistogram

        hist = LogLinearHistogram()
        hist.record_many(np.array([1000, 2000, 3_000_000]))
        return hist.to_hdr_base64().encode()
    return b"5\n7\n9\n"


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([".npy", ".json", ".hgrm", ".txt"]),
    st.data(),
)
def test_any_file_bytes_load_in_range_or_raise_profile_error(
    suffix: str, data: st.DataObject
) -> None:
    """Fuzz: a mutated or random profile file loads values in [0, 2**62) or raises ProfileError."""
    raw = bytearray(_valid_file_bytes(suffix))
    if data.draw(st.booleans()):
        for _ in range(data.draw(st.integers(1, 6))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    else:
        raw = bytearray(data.draw(st.binary(max_size=200)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(bytes(raw))
        try:
            rec = load_recorded_timing(path)
        except ProfileError:
            return
    assert rec.values_ns.dtype == np.int64 and rec.values_ns.size > 0
    assert rec.values_ns.min() >= 0 and rec.values_ns.max() < 2**62


def _tiny_blob(lowest: int, highest: int, varints: bytes) -> str:
    payload = struct.pack(">IIiiqqd", 0x1C849313, len(varints), 0, 2, lowest, highest, 1.0)
    compressed = zlib.compress(payload + varints, 9)
    return base64.b64encode(struct.pack(">II", 0x1C849314, len(compressed)) + compressed).decode()


@pytest.mark.parametrize(
    ("lowest", "highest", "varints", "fragment"),
    [
        # a run of 2**62 empty buckets, then a count: the shape that cost 3.5 GB before
        (1, 2**40, b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f\x02", "beyond the"),
        (2**62, 2**63 - 1, b"\x02", "must be >= 2 \\* lowest_discernible_value"),
        (1000, 2**40, b"\x01\x01\x02", "two empty entries in a row"),
    ],
)
def test_tiny_inline_hdr_specs_are_refused_by_structure(
    lowest: int, highest: int, varints: bytes, fragment: str
) -> None:
    """Inline hdr specs of ~64 characters declaring absurd runs or layouts are refused at once."""
    blob = _tiny_blob(lowest, highest, varints)
    assert len(blob) < 100
    with pytest.raises(ProfileError, match=fragment):
        parse_profile({"kind": "empirical", "hdr": blob})


def test_hdr_values_beyond_the_duration_range_are_refused() -> None:
    """A valid HdrHistogram holding a value above 2**62 - 1 ns cannot become a profile."""
    from tailguard.stats.histogram import LogLinearHistogram

    hist = LogLinearHistogram(2, 2**63 - 1)
    hist.record(2**62 + 2**60)
    with pytest.raises(ProfileError, match="above the largest duration a profile may return"):
        parse_profile({"kind": "empirical", "hdr": hist.to_hdr_base64()})
