import base64
import re
import shutil
import subprocess

import pytest

from dropkit.lab.report.claims import (
    MIXED,
    NOT_MEASURED,
    NOT_SUPPORTED,
    SUPPORTED,
    evaluate_claims,
)
from dropkit.lab.report.html import render_report, write_report
from dropkit.lab.store import open_store
from dropkit.lab.summary import summarise


def _summary(path, name):
    with open_store(path) as store:
        return summarise(store, store.get_experiment(name))


def test_report_is_self_contained_and_escapes_names(tiny_store, tmp_path):
    path, name = tiny_store
    html = render_report(_summary(path, name))
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; [bold]" in html
    assert "<script" not in html  # no user text became markup, and the page needs no script
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing fetched from a network
    for section in ("Comparison", "Claims", "Learning curves", "generalisation gap vs p",
                    "unit ablation", "Co-adaptation", "MC averaging vs weight scaling",
                    "Time per epoch", "BatchNorm variance shift", "MC-dropout uncertainty"):
        assert section in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 5
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)


def test_claims_have_one_computed_verdict_each(tiny_store):
    claims = evaluate_claims(_summary(*tiny_store))
    # 9 of the explainer + "generalization across patients" (breast-cancer rows are patients).
    assert len(claims) == 10
    assert {c.verdict for c in claims} <= {SUPPORTED, MIXED, NOT_SUPPORTED, NOT_MEASURED}
    by_claim = {c.claim: c for c in claims}
    # The breast-cancer MLP has no BatchNorm: that claim cannot be measured on it.
    batchnorm = by_claim["Dropout needs care with batch normalisation (variance shift)"]
    assert batchnorm.verdict == NOT_MEASURED and "no BatchNorm" in batchnorm.numbers
    # The tiny experiment has two seeds: too few for any verdict, and it says so.
    overfitting = by_claim["Dropout reduces overfitting"]
    assert overfitting.verdict == NOT_MEASURED and "p=0.5" in overfitting.numbers
    assert overfitting.verdict_text == "not measured (2 seeds; need 3)"


def test_report_without_finished_runs_says_so(tmp_path):
    with open_store(tmp_path / "s.sqlite") as store:
        experiment = store.ensure_experiment("empty", "digits", {})
        path = write_report(store, experiment, tmp_path / "r.html")
    assert "No finished runs yet" in path.read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium; .ci/run does)"
)


def _chromium(url, screenshot, tmp_path):
    """Load ``url`` headless; returns the browser's console lines and writes a screenshot."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--log-level=0",
         "--window-size=1200,1600", f"--screenshot={screenshot}", url],
        capture_output=True, text=True, timeout=120,
    )
    assert screenshot.exists(), result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if "CONSOLE" in line]


@needs_chromium
def test_console_detector_sees_errors_on_a_bad_page(tmp_path):
    # Control: proves the check below would catch a console error if the report had one.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body>x<script>console.error('boom'); undefinedCall();</script>")
    console = _chromium(bad.as_uri(), tmp_path / "bad.png", tmp_path)
    assert any("boom" in line for line in console)
    assert any("undefinedCall" in line for line in console)


@needs_chromium
def test_report_renders_in_chromium_without_console_errors(tiny_store, tmp_path):
    import matplotlib.image

    path, name = tiny_store
    with open_store(path) as store:
        report = write_report(store, store.get_experiment(name), tmp_path / "report.html")
    screenshot = tmp_path / "report.png"
    console = _chromium(report.as_uri(), screenshot, tmp_path)
    assert console == []
    pixels = matplotlib.image.imread(screenshot)[..., :3]
    not_white = (pixels < 0.95).any(-1).mean()
    assert not_white > 0.02  # text, tables and plots cover a few percent of a blank canvas
    assert len({tuple(p) for p in pixels.reshape(-1, 3)[::97].round(2).tolist()}) > 10
