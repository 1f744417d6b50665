"""onnxruntime call styles for one policy inference, side by side, for three policy sizes.

Run for real (``python bench/run.py`` collects the summary)::

    python -m pytest bench/bench_onnx_styles.py --benchmark-enable -p no:cacheprovider -s

Models (seeded, built by tailguard.runtime.onnx_build; ELU MLPs like RSL-RL's): small 17-64-64-6,
large 48-512-256-128-12, wide 376-256-256-17 (humanoid-sized input). One session per model
(1 intra-op thread, no spinning: ``tailguard.runtime.policy.session_options``); every variant
copies the
same observation in and leaves the action in a float32 buffer, and they run interleaved in
blocks so they share the machine's noise:

* run_dict -- ``sess.run(["actions"], {"obs": obs[None]})``: builds the feed dict and the
  output arrays per call (what most examples do);
* run_prealloc -- feed dict, names and input buffer made once; the result copied into a
  preallocated action buffer (``run`` itself cannot write into caller memory);
* run_ort_values -- ``run_with_ort_values`` with an OrtValue bound to the input buffer; the
  returned OrtValue copied out;
* iobinding -- ``run_with_iobinding`` with input and output bound to preallocated buffers:
  nothing allocated per call;
* iobinding_c -- the same binding through the C-level session method, skipping one Python
  frame (what ``OnnxPolicy`` uses on the guard's hot path).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tg_timing import interleaved, summary_us

from tailguard.runtime.policy import session_options


def _smoke(config: Any) -> bool:
    """--benchmark-enable overrides the default --benchmark-disable (as pytest-benchmark does)."""
    return bool(config.getoption("benchmark_disable")) and not config.getoption("benchmark_enable")


def _variants(path: Path) -> dict[str, Callable[[], Any]]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    obs_size = int(sess.get_inputs()[0].shape[1])
    act_size = int(sess.get_outputs()[0].shape[1])
    obs = np.random.default_rng(0).standard_normal(obs_size).astype(np.float32)
    in_buf = np.zeros((1, obs_size), np.float32)
    in_flat = in_buf.reshape(-1)
    out_buf = np.zeros((1, act_size), np.float32)
    names = ["actions"]
    feed = {"obs": in_buf}
    run = sess.run

    def run_dict() -> None:
        out_buf[:] = run(["actions"], {"obs": obs.reshape(1, -1)})[0]

    def run_prealloc() -> None:
        in_flat[...] = obs
        out_buf[:] = run(names, feed)[0]

    ort_in = ort.OrtValue.ortvalue_from_numpy(in_buf)
    ort_feed = {"obs": ort_in}
    run_ov = sess.run_with_ort_values

    def run_ort_values() -> None:
        in_flat[...] = obs
        out_buf[:] = run_ov(names, ort_feed)[0].numpy()

    binding = sess.io_binding()
    binding.bind_cpu_input("obs", in_buf)
    binding.bind_output("actions", "cpu", 0, np.float32, [1, act_size], out_buf.ctypes.data)
    run_b = sess.run_with_iobinding

    def iobinding() -> None:
        in_flat[...] = obs
        run_b(binding)

    variants: dict[str, Callable[[], Any]] = {
        "run_dict": run_dict,
        "run_prealloc": run_prealloc,
        "run_ort_values": run_ort_values,
        "iobinding": iobinding,
    }
    c_run = getattr(getattr(sess, "_sess", None), "run_with_iobinding", None)
    c_binding = getattr(binding, "_iobinding", None)
    if c_run is not None and c_binding is not None:

        def iobinding_c() -> None:
            in_flat[...] = obs
            c_run(c_binding, None)

        variants["iobinding_c"] = iobinding_c
    # All styles must compute the same action.
    reference = sess.run(["actions"], {"obs": obs.reshape(1, -1)})[0]
    for fn in variants.values():
        out_buf[:] = 0.0
        fn()
        np.testing.assert_allclose(out_buf, reference, rtol=1e-6, atol=1e-6)
    return variants


@pytest.mark.benchmark(group="onnx_styles")
@pytest.mark.parametrize("model", ["small", "large", "wide"])
def bench_onnx_call_styles(
    benchmark: Any, request: pytest.FixtureRequest, model_dir: Path, model: str
) -> None:
    """Per-call latency of each onnxruntime call style, interleaved, for one model size."""
    blocks, per_block = (4, 50) if _smoke(request.config) else (40, 1000)
    variants = _variants(model_dir / f"{model}.onnx")
    for fn in variants.values():  # warm caches and the allocator
        for _ in range(100):
            fn()

    def run() -> dict[str, Any]:
        hists, gcs = interleaved(variants, blocks, per_block)
        s = {k: summary_us(h) for k, h in hists.items()}
        best = min(s, key=lambda k: s[k]["p50"])
        return {"model": model, "gc_collections": gcs, "fastest_p50": best, **s}

    info = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    if not _smoke(request.config):
        print(f"\nonnx call styles, {model}:")
        for name in variants:
            t = info[name]
            print(
                f"  {name:<15} p50 {t['p50']:7.2f}  p99 {t['p99']:7.2f}  "
                f"p99.9 {t['p999']:7.2f}  max {t['max']:8.1f} us"
            )
