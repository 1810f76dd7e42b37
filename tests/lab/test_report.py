import base64
import html
import re

from dropkit.lab.report import batchnorm, plots
from dropkit.lab.report.claims import (
    MIXED,
    NOT_MEASURED,
    NOT_SUPPORTED,
    SUPPORTED,
    evaluate_claims,
)
from dropkit.lab.report.html import _finding_text, render_report, write_report
from dropkit.lab.report.table import gap_definition
from dropkit.lab.store import open_store
from dropkit.lab.summary import ExperimentSummary, GroupSummary, RunResult, summarise
from dropkit.lab.tasks import get_task


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


# --- the report's figures and sections (the browser view is tests/lab/test_report_browser.py)


def _section(html, anchor):
    found = re.search(rf'<section id="{anchor}">(.*?)</section>', html, re.S)
    assert found, anchor
    return found.group(1)


def _synthetic(path, task, groups, epochs=1, measurements=None):
    """A store whose (variant, p) groups (one run per seed) end with the given metric values."""
    with open_store(path) as store:
        experiment = store.ensure_experiment("synthetic", task, {})
        metric = summarise(store, experiment).metric
        for (variant, p), seeds in groups.items():
            for seed, (train, test) in enumerate(seeds):
                run = store.ensure_run(experiment.id, f"{variant}/p={p}/seed={seed}", {
                    "variant": variant, "p": p, "seed": seed})
                for epoch in range(1, epochs + 1):
                    store.log_epoch(run.id, epoch, {
                        f"train_{metric}": train, f"test_{metric}": test, "train_loss": 0.5,
                        "test_loss": 0.6, "fit_loss": 0.5, "epoch_time": 0.1}, b"")
                store.finish_run(run.id, (measurements or {}).get((variant, p, seed), {}), {})
        return summarise(store, experiment)


def test_gap_is_labelled_with_the_sign_it_is_computed_with(tmp_path):
    # Perplexity: lower is better, so the gap is test - train (positive = overfitting).
    summary = _synthetic(tmp_path / "s.sqlite", "ptb", {("standard", 0.0): [(90.0, 130.0)]})
    assert summary.groups[0].gap.mean == 40.0
    assert gap_definition(summary.task) == "test - train perplexity"
    comparison = _section(render_report(summary), "comparison")
    assert "gap = test - train perplexity" in comparison
    assert "train - test" not in comparison
    assert gap_definition(get_task("breast-cancer")) == "train - test accuracy"


def test_one_epoch_runs_say_so_instead_of_empty_learning_curves(tmp_path):
    # PTB at its defaults is one long epoch per run: nothing to draw a curve through.
    summary = _synthetic(tmp_path / "s.sqlite", "ptb", {
        ("standard", 0.0): [(90.0, 130.0)], ("standard", 0.5): [(110.0, 120.0)]})
    assert plots.learning_curves(summary) is None
    section = _section(render_report(summary), "learning-curves")
    assert "one epoch" in section and "<img" not in section


def test_many_groups_wrap_into_rows_of_readable_panels(tmp_path):
    rates = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    summary = _synthetic(tmp_path / "s.sqlite", "breast-cancer",
                         {("standard", p): [(0.9, 0.8)] for p in rates}, epochs=3)
    plot = plots.learning_curves(summary)
    assert plot.width <= plots.PAGE_WIDTH
    # Plot area per panel; one row of 8 gave ~100 px at half-size text once fitted to the page.
    assert plot.min_panel_width >= 170
    assert plot.height >= 2 * 2 * 150  # two rows of (metric, loss) cells
    assert "standard p=0.7" in plot.alt


def test_co_adaptation_panels_are_readable_and_labelled(tiny_store):
    plot = plots.co_adaptation(_summary(*tiny_store))
    assert plot.width <= plots.PAGE_WIDTH and plot.min_panel_width >= 250
    assert "mean |correlation| between units" in plot.alt
    assert "_" not in plot.alt  # human labels, not measurement keys


def test_reliability_diagram_draws_a_second_series_per_panel():
    nan = float("nan")
    mc = plots.ReliabilitySeries("MC dropout", [0.55, nan, 0.95], [0.5, nan, 0.9], [10, 0, 90])
    scaled = plots.ReliabilitySeries("after temperature scaling", [0.6, 0.8, 0.9],
                                     [0.55, 0.8, 0.92], [5, 5, 90], colour="C3", style="--")
    plot = plots.reliability_diagram([("standard p=0.5", [mc, scaled]), ("other", [mc])])
    assert base64.b64decode(plot.png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "MC dropout" in plot.alt and "after temperature scaling" in plot.alt
    assert "standard p=0.5; other" in plot.alt


def test_uncertainty_section_is_tables_and_figures_without_p0(tiny_store):
    section = _section(render_report(_summary(*tiny_store)), "uncertainty")
    assert "<pre" not in section and "&quot;nll&quot;" not in section
    assert not re.search(r"\d\.\d{4,}", section)  # three decimals, not sixteen
    assert "p = 0 is left out" in section
    assert not re.search(r"<td[^>]*>standard</td><td>0</td>", section)  # no p = 0 row
    assert 'alt="reliability diagram' in section and 'alt="referral curve' in section


def _bn_run(shifts):
    return RunResult(None, [], {"bn_variance_shift": [
        {"layer": name, "after_dropout": name == "features.5", "ratio": 0.0,
         "library_shift": value} for name, value in shifts.items()]})


def test_batchnorm_shift_is_one_quantity_averaged_per_run_then_over_seeds():
    runs = [_bn_run({"features.1": 1.0, "features.5": 2.0}),
            _bn_run({"features.1": 1.2, "features.5": 3.0})]
    group = GroupSummary("standard", 0.5, runs)
    # Per run: mean over the chosen layers; then mean ± s.e. over the two seeds.
    assert batchnorm.shift(group, {"features.5"}).mean == 2.5
    assert batchnorm.shift(group, {"features.5"}).n == 2  # layers are not extra seeds
    assert batchnorm.shift(group).mean == (1.5 + 2.1) / 2
    summary = ExperimentSummary(None, get_task("digits"), [group], runs)
    assert batchnorm.layers(summary) == [("features.1", False), ("features.5", True)]
    assert batchnorm.after_dropout_layers(summary) == {"features.5"}


def test_findings_leave_the_variance_ratios_to_the_batchnorm_table():
    import torch

    import dropkit
    from dropkit.lab.tasks.digits import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN(0.5)
    model.train()
    model(torch.randn(64, 1, 8, 8))  # one batch of running statistics
    messages = [f.message for f in dropkit.check(model, torch.randn(64, 1, 8, 8))
                if f.code == "dropout-before-batchnorm"]
    assert messages and re.search(r"\d\.\d+x", messages[0])  # the library quotes its ratios
    text = _finding_text(messages[0])
    assert not re.search(r"\d\.\d+x", text)
    assert text.startswith("dropout runs before BatchNorm 'features.5'")
    assert "Li et al. 2019" in text


def test_verdicts_show_n_effect_interval_and_test(tmp_path):
    rows = [{"train_accuracy": 0.9, "test_accuracy": test, "train_loss": 0.5, "test_loss": 0.6,
             "fit_loss": 0.5, "epoch_time": 0.1, "val_accuracy": 0.8, "val_loss": 0.5,
             "val_examples": 69, "test_examples": 228} for test in (0.7, 0.72, 0.71)]
    with open_store(tmp_path / "s.sqlite") as store:
        experiment = store.ensure_experiment("synthetic", "breast-cancer", {})
        for p, shift in ((0.0, 0.0), (0.5, 0.05)):
            for seed, row in enumerate(rows):
                run = store.ensure_run(experiment.id, f"standard/p={p}/seed={seed}",
                                       {"variant": "standard", "p": p, "seed": seed})
                store.log_epoch(run.id, 1, row | {"test_accuracy": row["test_accuracy"] + shift},
                                b"")
                store.finish_run(run.id, {}, {})
        summary = summarise(store, experiment)
    claims = evaluate_claims(summary)
    section = _section(render_report(summary), "claims")
    verdicts = re.findall(r'<td class="left verdict-cell">(.*?)</td>', section, re.S)
    assert len(verdicts) == len(claims)
    test_claim = next(c for c in claims if c.claim == "Dropout improves test accuracy")
    cell = verdicts[claims.index(test_claim)]
    # The styled verdict is the verdict with its reason, and the cell gives every number.
    assert f'<span class="verdict supported">{test_claim.verdict_text}</span>' in cell
    (comparison,) = test_claim.comparisons
    low, high = comparison.ci
    assert f"n={comparison.n}, effect {comparison.effect:+.3g}" in cell
    assert f"95% CI {low:+.3g} to {high:+.3g}" in cell
    assert f"Holm p={comparison.p_holm:.2g}" in cell and "paired t-test" in cell
    # The numbers cell has the means compared, and leaves the test's numbers to the verdict.
    row = re.search(r"<tr><td class=\"left\">Dropout improves test accuracy</td>(.*?)</tr>",
                    section, re.S).group(1)
    numbers = re.findall(r'<td class="left">(.*?)</td>', row, re.S)[1]
    assert html.escape(comparison.means) in numbers and "standard p=0.5: " in numbers
    assert "Holm" not in numbers and "95% CI" not in numbers
    # The comparison table: selected-epoch numbers, last-epoch test beside them, labelled.
    comparison_section = _section(render_report(summary), "comparison")
    for header in ("test at last epoch", "gap size", "selected epoch", "CPU s/epoch"):
        assert f"<th class=\"\">{header}</th>" in comparison_section
    assert html.escape("at each run's best-validation epoch (validation split of 69 examples)") \
        in comparison_section
    assert "at the last epoch" not in comparison_section.replace("test at last epoch", "")


def test_cli_comparison_table_has_the_selected_epoch_columns(tiny_store):
    from rich.console import Console

    from dropkit.lab.report.table import comparison_table

    console = Console(width=200, record=True)
    console.print(comparison_table(_summary(*tiny_store)))
    text = console.export_text()
    for header in ("test@last", "gap size", "epoch*", "CPU s/ep"):
        assert header in text, text
    assert "best-validation epoch" in text


def test_time_plot_and_metric_axis_say_what_they_show(tiny_store):
    summary = _summary(*tiny_store)
    # The tiny experiment recorded CPU time: the plot shows what the timing claim tests.
    assert all(g.epoch_cpu_time is not None for g in summary.groups)
    assert "CPU s per epoch (median)" in plots.time_and_convergence(summary).alt
    alt = plots.metric_vs_p(summary).alt
    assert "(selected epoch)" in alt and "final test" not in alt


def test_write_report_from_the_api_follows_the_umask(tmp_path):
    # mkstemp creates 0600 files; the report must be readable like any file the user makes.
    import os
    import stat

    from dropkit.lab.config import build_config
    from dropkit.lab.report.html import write_report
    from dropkit.lab.run import run_experiment
    from dropkit.lab.store import open_store

    config = build_config("breast-cancer", name="m", epochs=1, rates=[0.0], seeds=[0],
                          mc_samples=2)
    previous = os.umask(0o002)
    try:
        with open_store(tmp_path / "s.sqlite") as store:
            run_experiment(store, config, show_progress=False)
            path = write_report(store, store.get_experiment("m"), tmp_path / "r.html")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664
