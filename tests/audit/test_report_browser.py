"""The HTML reports are self-contained and render in a real headless browser.

Skipped when Debian's chromium is not installed (CI installs it: see .ci/run)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from audit_plants import PERIOD_NS

from tailguard.audit.audit import run_audit
from tailguard.audit.certification import certify
from tailguard.audit.outputs import write_audit, write_certify
from tailguard.audit.sweep import build_sweep

ENV = "py:audit_plants:integrator"
_MARKS = {"polyline", "circle", "path", "rect"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_CHECK = (
    "<script>window.addEventListener('load',()=>{const imgs=[...document.images];"
    "const bad=imgs.filter(i=>!(i.complete&&i.naturalWidth>0)).length;"
    "document.body.setAttribute('data-check',`images=${imgs.length} broken=${bad}`);});"
    "</script></body>"
)


@pytest.fixture(scope="module")
def reports(
    plant_policy: Path, plant_fallback: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    conds = build_sweep(
        PERIOD_NS,
        dimensions=["latency_fixed", "latency_lognormal"],
        levels={"latency_fixed": [0.25, 0.625, 0.75], "latency_lognormal": [0.05]},
    )
    r = run_audit(plant_policy, ENV, episodes=4, conditions=conds, n_resamples=500)
    out = tmp_path_factory.mktemp("report")
    audit_files = write_audit(r, out / "audit")
    c = certify(
        plant_policy,
        audit_files["envelope"],
        ENV,
        fallback=str(plant_fallback),
        episodes=3,
        n_resamples=500,
    )
    cert_files = write_certify(c, out / "cert")
    return [audit_files["report"], cert_files["report"]]


def test_reports_are_self_contained(reports: list[Path]) -> None:
    """No network reference; every image is an embedded SVG document that parses, has a
    size and draws marks (bars, lines, markers), and references nothing outside itself."""
    for path in reports:
        text = path.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)
        srcs = re.findall(r'<img alt="plot" src="data:image/svg\+xml;base64,([^"]+)"', text)
        assert len(srcs) >= 2 and text.count("<img") == len(srcs)
        for s in srcs:
            svg = base64.b64decode(s).decode("utf-8")
            root = ElementTree.fromstring(svg)
            assert root.tag == "{http://www.w3.org/2000/svg}svg"
            assert float(root.get("width", 0)) > 50 and float(root.get("height", 0)) > 50
            marks = [e for e in root.iter() if e.tag.rsplit("}", 1)[-1] in _MARKS]
            assert len(marks) >= 3
            assert "href" not in svg


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install "
    "chromium); the browser check of report.html needs it",
)
def test_reports_render_in_headless_chromium(reports: list[Path], tmp_path: Path) -> None:
    """Chromium loads each report with every image decoded (none broken), and its
    screenshot is not blank."""
    import matplotlib.image as mpimg

    for i, path in enumerate(reports):
        probe = tmp_path / f"probe{i}.html"
        probe.write_text(path.read_text().replace("</body>", _CHECK, 1))
        common = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / f'prof{i}'}",
            "--virtual-time-budget=10000",
        ]
        dom = subprocess.run(
            [*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
        )
        match = re.search(r'data-check="images=(\d+) broken=(\d+)"', dom.stdout)
        assert match, dom.stderr[-2000:]
        assert int(match.group(1)) >= 2 and int(match.group(2)) == 0
        shot = tmp_path / f"shot{i}.png"
        subprocess.run(
            [*common, f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri()],
            capture_output=True,
            timeout=120,
            check=True,
        )
        pixels = mpimg.imread(shot)
        assert pixels.shape[0] >= 1000
        assert float(np.std(pixels[..., :3])) > 0.05  # text and plots, not a blank page
