"""The HTML report as a reader sees it: each section rendered by headless Chromium at 1280 px.

A copy of each report gets a small script that, once the page has loaded,
writes what the browser laid out (section text, every image's decoded and
displayed size, the page's scroll width) into the DOM; ``--dump-dom`` hands
that back. The report itself carries no script. Skipped without Chromium
(``.ci/run`` installs it).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from dropkit.lab.cli import app
from dropkit.lab.config import build_config
from dropkit.lab.report.html import write_report
from dropkit.lab.report.plots import PAGE_WIDTH
from dropkit.lab.run import run_experiment
from dropkit.lab.store import open_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium; .ci/run does)"
)
WINDOW = (1280, 2000)
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}"]

_MEASURE = """<script>
window.addEventListener("load", () => {
  const box = (e) => e.getBoundingClientRect();
  const out = {viewport: window.innerWidth,
               scrollWidth: document.documentElement.scrollWidth, sections: {}};
  for (const section of document.querySelectorAll("section")) {
    const right = Math.max(...[...section.querySelectorAll("*")].map((e) => box(e).right));
    out.sections[section.id] = {
      text: section.innerText, right: right, pre: section.querySelectorAll("pre").length,
      verdicts: [...section.querySelectorAll("td.verdict-cell")].map((e) => e.innerText),
      images: [...section.querySelectorAll("img")].map((i) => ({
        alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth,
        naturalHeight: i.naturalHeight, width: box(i).width, height: box(i).height,
        declaredWidth: Number(i.getAttribute("width"))})),
    };
  }
  const pre = document.createElement("pre");
  pre.id = "measured";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _layout(report, tmp_path) -> dict:
    """What Chromium laid out for ``report`` (see the module docstring)."""
    page = tmp_path / f"measured-{report.name}"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"),
                    encoding="utf-8")
    profile = tmp_path / f"profile-{report.stem}"
    result = subprocess.run(
        [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    found = re.search(r'<pre id="measured">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


def _screenshot(url, screenshot, tmp_path):
    """Load ``url`` headless; returns the browser's console lines and writes a screenshot."""
    result = subprocess.run(
        [CHROMIUM, *_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--log-level=0", f"--screenshot={screenshot}", url],
        capture_output=True, text=True, timeout=180,
    )
    assert screenshot.exists(), result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if "CONSOLE" in line]


def _grid_report(tmp_path_factory, task, name, **config):
    path = tmp_path_factory.mktemp(name) / "lab.sqlite"
    settings = {"seeds": [0, 1], "rates": [0.0, 0.5], "mc_samples": 3, "epochs": 3} | config
    experiment_config = build_config(task, name=name, **settings)
    with open_store(path) as store:
        run_experiment(store, experiment_config, show_progress=False)
        return write_report(store, store.get_experiment(name), path.parent / "report.html")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Reports of: two variants with MC uncertainty, a BatchNorm CNN, one-epoch runs, a sweep."""
    found = {
        # Two variants: each figure must tell them apart by colour.
        "uncertainty": _grid_report(tmp_path_factory, "breast-cancer", "bc",
                                    variants=["standard", "gaussian"]),
        # Three seeds: the fewest with which a claim is tested at all.
        "batchnorm": _grid_report(tmp_path_factory, "digits", "bn", epochs=2, seeds=[0, 1, 2]),
        "one_epoch": _grid_report(tmp_path_factory, "mnist1d", "one", seeds=[0], epochs=1),
    }
    folder = tmp_path_factory.mktemp("sweep")
    result = CliRunner().invoke(app, [
        "lab", "sweep", "breast-cancer", "--trials", "8", "--epochs", "2", "--mc-samples", "2",
        "--variants", "standard,gaussian", "--study", "sw", "--store", str(folder / "s.sqlite"),
        "--storage", f"sqlite:///{folder / 'study.db'}", "-o", str(folder / "report.html")])
    assert result.exit_code == 0, result.output
    found["sweep"] = folder / "report.html"
    return found


@pytest.fixture(scope="module")
def layouts(reports, tmp_path_factory):
    folder = tmp_path_factory.mktemp("layouts")
    return {name: _layout(path, folder) for name, path in reports.items()}


def _images(layout):
    return [image for section in layout["sections"].values() for image in section["images"]]


@pytest.mark.parametrize("report", ["uncertainty", "batchnorm", "one_epoch", "sweep"])
def test_every_figure_loads_and_shows_at_its_intended_size(layouts, report):
    layout = layouts[report]
    assert layout["scrollWidth"] <= layout["viewport"]  # nothing runs off the page sideways
    images = _images(layout)
    assert images
    for image in images:
        assert image["complete"] and image["naturalWidth"] > 0, image["alt"]
        # Drawn at 2x for sharp screens, displayed at the declared size: never squeezed
        # by the column (a squeezed figure is what made 170 px panels with tiny ticks).
        assert image["naturalWidth"] == 2 * image["declaredWidth"], image["alt"]
        assert abs(image["width"] - image["declaredWidth"]) < 1, image["alt"]
        assert image["width"] <= PAGE_WIDTH
    for name, section in layout["sections"].items():
        assert section["right"] <= layout["viewport"], name


def test_co_adaptation_has_readable_labels_and_a_colour_per_variant(layouts):
    section = layouts["uncertainty"]["sections"]["co-adaptation"]
    (image,) = section["images"]
    assert "mean |correlation| between units" in image["alt"]
    assert "dead units" in image["alt"]
    # The legend names each variant: one colour each.
    assert "legend: gaussian, standard" in image["alt"]
    for raw in ("dead_units", "mean_abs_correlation", "effective_rank", "fraction_inactive"):
        assert raw not in image["alt"] and raw not in section["text"]
    # Five measurements at >= 300 px each cannot sit in one row of the 1040 px column.
    assert image["height"] > 2 * 200


def test_sweep_learning_curves_wrap_into_rows(layouts):
    sections = layouts["sweep"]["sections"]
    (curves,) = sections["learning-curves"]["images"]
    # Eight trials: four cells a row, two rows of (metric, loss) panels.
    assert curves["width"] <= PAGE_WIDTH and curves["height"] >= 2 * 2 * 150
    (mc,) = sections["mc-vs-weight-scaling"]["images"]
    assert mc["height"] >= 2 * 180  # eight p > 0 panels wrap too
    (trials,) = sections["sweep"]["images"]
    assert "dropout rate p" in trials["alt"]


def test_one_epoch_runs_say_so_instead_of_drawing_empty_boxes(layouts):
    section = layouts["one_epoch"]["sections"]["learning-curves"]
    assert section["images"] == []
    assert "one epoch" in section["text"]


def test_uncertainty_is_tables_and_two_figures_not_a_json_dump(layouts):
    section = layouts["uncertainty"]["sections"]["uncertainty"]
    text = section["text"]
    assert section["pre"] == 0 and '"nll"' not in text and "{" not in text
    assert not re.search(r"\d\.\d{4,}", text)  # three decimals, not sixteen
    assert "p = 0 is left out" in text
    assert not re.search(r"^(standard|gaussian)\t0\t", text, re.M)  # no p = 0 row
    for header in ("NLL", "Brier", "ECE", "none referred", "10% referred"):
        assert header in text
    alts = [image["alt"] for image in section["images"]]
    assert any(alt.startswith("reliability diagram") for alt in alts), alts
    assert any(alt.startswith("referral curve") for alt in alts), alts
    reliability = next(a for a in alts if a.startswith("reliability diagram"))
    assert "perfectly calibrated" in reliability and "gaussian p=0.5" in reliability


def test_batchnorm_shift_is_one_number_with_one_definition(layouts):
    layout = layouts["batchnorm"]
    section = layout["sections"]["batchnorm"]
    text = section["text"]
    assert text.count("mean over channels of max(r, 1/r)") == 1
    # dropkit.check's own ratios ("1.27x the variance", "off by 1.75x") are not repeated.
    assert not re.search(r"\d\.\d+x", text)
    assert "features.5 (after dropout)" in text
    (image,) = section["images"]
    assert "variance shift (1 = none)" in image["alt"]


def test_every_verdict_shows_n_and_an_interval(layouts):
    claims = layouts["batchnorm"]["sections"]["claims"]
    assert len(claims["verdicts"]) >= 9
    tested = [v for v in claims["verdicts"] if not v.startswith("not measured")]
    assert tested  # three seeds: the claims with p=0 and p>0 runs are tested
    for verdict in tested:
        assert re.search(r"n=3, effect [+-]\d", verdict), verdict
        assert re.search(r"95% CI [+-][\d.e-]+ to [+-][\d.e-]+", verdict), verdict
        assert "paired t-test" in verdict and "Holm" in verdict, verdict
    # Two seeds: each verdict says why it is not measured, and how many seeds it had.
    for verdict in layouts["uncertainty"]["sections"]["claims"]["verdicts"]:
        assert verdict.startswith("not measured"), verdict
    overfitting = layouts["uncertainty"]["sections"]["claims"]["verdicts"][0]
    assert "(2 seeds; need 3)" in overfitting and "n=2, need 3 paired seeds" in overfitting


def test_batchnorm_claim_quotes_the_batchnorm_tables_number(layouts):
    sections = layouts["batchnorm"]["sections"]
    cell = re.search(r"^standard\t0\.5\t3\t(.*)$", sections["batchnorm"]["text"], re.M)
    assert cell, sections["batchnorm"]["text"]
    shift = cell.group(1).split("\t")[-1]  # features.5 (after dropout), the last column
    assert f"standard p=0.5: variance shift {shift} vs p=0" in sections["claims"]["text"]


def test_gap_label_matches_the_sign_it_is_computed_with(layouts):
    text = layouts["uncertainty"]["sections"]["comparison"]["text"]
    assert "gap = train - test accuracy" in text


def test_console_detector_sees_errors_on_a_bad_page(tmp_path):
    # Control: proves the check below would catch a console error if the report had one.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body>x<script>console.error('boom'); undefinedCall();</script>")
    console = _screenshot(bad.as_uri(), tmp_path / "bad.png", tmp_path)
    assert any("boom" in line for line in console)
    assert any("undefinedCall" in line for line in console)


@pytest.mark.parametrize("report", ["uncertainty", "sweep"])
def test_report_renders_in_chromium_without_console_errors(reports, report, tmp_path):
    import matplotlib.image

    screenshot = tmp_path / "report.png"
    console = _screenshot(reports[report].as_uri(), screenshot, tmp_path)
    assert console == []
    pixels = matplotlib.image.imread(screenshot)[..., :3]
    not_white = (pixels < 0.95).any(-1).mean()
    assert not_white > 0.02  # text, tables and plots cover a few percent of a blank canvas
    assert len({tuple(p) for p in pixels.reshape(-1, 3)[::97].round(2).tolist()}) > 10
