"""The claims' statistics on synthetic stores whose numbers are chosen to hit each rule."""

import html
import re

import pytest
import torch
from scipy import stats

from dropkit.lab.report import batchnorm
from dropkit.lab.report.claims import (
    MIXED,
    NOT_MEASURED,
    NOT_SUPPORTED,
    SUPPORTED,
    evaluate_claims,
    holm,
    paired_t_test,
)
from dropkit.lab.report.table import format_stat, gap_definition
from dropkit.lab.store import open_store
from dropkit.lab.summary import Stat, summarise
from dropkit.lab.tasks import get_task
from tests.conftest import require_shared

OVERFITTING = "Dropout reduces overfitting"
TEST_CLAIM = "Dropout improves test accuracy"
N_TEST = 228  # breast-cancer's test patients: accuracy moves in steps of 1/228


def _row(gap=0.0, test=0.7, **extra):
    row = {"train_accuracy": test + gap, "test_accuracy": test, "train_loss": 0.5,
           "test_loss": 0.6, "fit_loss": 0.5, "epoch_time": 0.1, "test_examples": N_TEST}
    row.update(extra)
    return row


def _summary(tmp_path, cells, task="breast-cancer", measurements=None):
    """A store with one finished run per (variant, p, seed): ``cells[(variant, p)]`` lists,
    per seed, that run's epoch rows (a dict is one epoch)."""
    measurements = measurements or {}
    with open_store(tmp_path / "s.sqlite") as store:
        experiment = store.ensure_experiment("synthetic", task, {})
        for (variant, p), per_seed in cells.items():
            for seed, rows in enumerate(per_seed):
                run = store.ensure_run(experiment.id, f"{variant}/p={p}/seed={seed}",
                                       {"variant": variant, "p": p, "seed": seed})
                for epoch, row in enumerate([rows] if isinstance(rows, dict) else rows, 1):
                    store.log_epoch(run.id, epoch, row, b"")
                store.finish_run(run.id, measurements.get((variant, p), [{}] * 99)[seed], {})
        return summarise(store, experiment)


def _gaps(gaps):
    return {("standard", p): [_row(gap) for gap in per_seed] for p, per_seed in gaps.items()}


def _claim(summary, name):
    return next(c for c in evaluate_claims(summary) if c.claim == name)


def test_holm_on_a_textbook_example():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == [0.02]  # one comparison: nothing to correct


def test_paired_t_test_agrees_with_scipy_and_its_interval_has_the_t_width():
    ours, reference = [0.91, 0.93, 0.95, 0.90], [0.90, 0.90, 0.93, 0.90]
    differences = [a - b for a, b in zip(ours, reference, strict=True)]
    mean, (low, high), p = paired_t_test(differences)
    assert p == pytest.approx(stats.ttest_rel(ours, reference).pvalue, rel=1e-9)
    se = stats.sem(differences)
    assert high - low == pytest.approx(2 * stats.t.ppf(0.975, 3) * se, rel=1e-9)
    assert low < mean < high
    assert paired_t_test([0.01, 0.01, 0.01]) == (0.01, (0.01, 0.01), 0.0)  # no spread at all


@pytest.mark.parametrize(
    ("gaps", "verdict"),
    [
        # 0.2 lower at every seed: t = 0.2 / (0.01 / sqrt 3) = 35, p = 0.0008.
        ({0.0: [0.30, 0.31, 0.32], 0.5: [0.10, 0.11, 0.13]}, SUPPORTED),
        ({0.0: [0.30, 0.31, 0.32], 0.5: [0.29, 0.33, 0.30]}, NOT_SUPPORTED),  # within noise
        ({0.0: [0.10, 0.11, 0.12], 0.5: [0.30, 0.31, 0.33]}, NOT_SUPPORTED),  # larger gap
        # p=0.2 smaller beyond noise, p=0.5 larger beyond noise: neither verdict alone is honest.
        ({0.0: [0.20, 0.21, 0.22], 0.2: [0.10, 0.11, 0.13], 0.5: [0.30, 0.31, 0.33]}, MIXED),
    ],
)
def test_overfitting_verdict_follows_the_numbers(tmp_path, gaps, verdict):
    claim = _claim(_summary(tmp_path, _gaps(gaps)), OVERFITTING)
    assert claim.verdict == verdict, claim.numbers
    assert "n=3" in claim.numbers and "95% CI" in claim.numbers
    assert "paired t-test" in claim.test and "Holm" in claim.test


def test_two_seeds_are_not_measured_whatever_the_difference(tmp_path):
    # The old rule called this supported (a difference of 0.2, 2 s.e. = 0.014).
    summary = _summary(tmp_path, _gaps({0.0: [0.30, 0.31], 0.5: [0.10, 0.11]}))
    claim = _claim(summary, OVERFITTING)
    assert claim.verdict == NOT_MEASURED
    assert claim.verdict_text == "not measured (2 seeds; need 3)"
    assert "2 paired seed(s), need 3" in claim.numbers


def test_holm_correction_changes_the_verdict_when_a_claim_makes_two_comparisons(tmp_path):
    # p=0.2's differences -0.07, -0.10, -0.13: t = 5.77 with 2 d.f., p = 0.029 < 0.05 alone;
    # beside a second comparison Holm doubles it to 0.058.
    alone = {0.0: [0.30, 0.30, 0.30], 0.2: [0.23, 0.20, 0.17]}
    assert _claim(_summary(tmp_path / "a", _gaps(alone)), OVERFITTING).verdict == SUPPORTED
    both = {**alone, 0.5: [0.25, 0.30, 0.36]}
    claim = _claim(_summary(tmp_path / "b", _gaps(both)), OVERFITTING)
    assert claim.verdict == NOT_SUPPORTED, claim.numbers
    assert "over 2 comparison(s)" in claim.test
    (first, second) = claim.comparisons
    assert first.p_value == pytest.approx(0.0289, abs=5e-4)
    assert first.p_holm == pytest.approx(2 * first.p_value)


def test_a_difference_of_one_test_example_is_a_tie(tmp_path):
    one = 1 / N_TEST
    # p=0.5 is better by exactly one test patient at every seed: a t-test with no spread
    # would call it significant; the test set cannot resolve it.
    cells = {("standard", 0.0): [_row(test=0.70 + s / 100) for s in range(3)],
             ("standard", 0.5): [_row(test=0.70 + s / 100 + one) for s in range(3)]}
    claim = _claim(_summary(tmp_path, cells), TEST_CLAIM)
    assert claim.verdict == NOT_SUPPORTED and claim.verdict_text.startswith("not supported (tie")
    assert "a difference of at most one test example (0.0044) is a tie" in claim.test
    # Three test patients better is beyond the resolution and consistent: supported.
    cells[("standard", 0.5)] = [_row(test=0.70 + s / 100 + 3 * one) for s in range(3)]
    assert _claim(_summary(tmp_path / "b", cells), TEST_CLAIM).verdict == SUPPORTED


def test_underfitting_is_reported_as_such_and_not_counted_as_support(tmp_path):
    # p=0 overfits by 0.05; p=0.5 is better on test than on train (signed gap -0.03): its
    # gap *size* is 0, but that is underfitting, not less overfitting.
    claim = _claim(_summary(tmp_path, _gaps({0.0: [0.05, 0.06, 0.05],
                                              0.5: [-0.03, -0.02, -0.04]})), OVERFITTING)
    assert claim.verdict == NOT_SUPPORTED
    assert claim.verdict_text == "not supported (underfits at standard p=0.5)"
    assert "test better than train" in claim.numbers
    # Beside a rate that does shrink the gap, the underfitting rate is still named.
    claim = _claim(_summary(tmp_path / "b", _gaps({0.0: [0.05, 0.06, 0.05],
                                                    0.2: [0.01, 0.012, 0.011],
                                                    0.5: [-0.03, -0.02, -0.04]})), OVERFITTING)
    assert claim.verdict_text == (
        "supported at standard p=0.2 (underfits at standard p=0.5)"), claim.numbers


def test_gap_size_not_its_sign_decides(tmp_path):
    # Both underfit: sizes 0 vs 0. The old signed rule read -0.10 < -0.01 as "reduces".
    claim = _claim(_summary(tmp_path, _gaps({0.0: [-0.01, -0.012, -0.011],
                                              0.5: [-0.10, -0.11, -0.12]})), OVERFITTING)
    assert claim.verdict == NOT_SUPPORTED and "p=0 underfits too" in claim.numbers


def test_ensemble_claim_can_be_mixed(tmp_path):
    def mc(single, averaged):
        return {"mc_vs_weight_scaling": {"mc": {"1": single, "10": averaged},
                                         "single_pass_mean": single,
                                         "weight_scaling": averaged}}

    cells = {("standard", p): [_row() for _ in range(3)] for p in (0.0, 0.2, 0.5)}
    measurements = {
        ("standard", 0.2): [mc(0.80, 0.85), mc(0.81, 0.86), mc(0.79, 0.85)],  # MC better
        ("standard", 0.5): [mc(0.85, 0.80), mc(0.86, 0.81), mc(0.85, 0.79)],  # MC worse
    }
    claim = _claim(_summary(tmp_path, cells, measurements=measurements),
                   "Dropout acts like an ensemble of subnetworks")
    assert claim.verdict == MIXED, claim.numbers
    assert "supported at standard p=0.2 MC T=10" in claim.verdict_text


def test_numbers_come_from_the_validation_selected_epoch(tmp_path):
    # Epoch 2 has the best validation accuracy; epoch 3's test spike is never reported as the
    # run's result, only as last-epoch test.
    rows = [_row(test=0.80, val_accuracy=0.80, val_loss=0.5, val_examples=69),
            _row(test=0.82, val_accuracy=0.90, val_loss=0.4, val_examples=69),
            _row(test=0.95, val_accuracy=0.85, val_loss=0.3, val_examples=69)]
    summary = _summary(tmp_path, {("standard", 0.0): [rows] * 3})
    group = summary.groups[0]
    assert summary.by_validation and summary.val_examples == 69
    assert group.test.mean == pytest.approx(0.82) and group.test_last.mean == pytest.approx(0.95)
    assert group.selected_epoch.mean == 2
    measurement = _claim(summary, OVERFITTING).measurement
    assert "best-validation epoch (validation split of 69 examples)" in measurement


def test_timing_claim_uses_cpu_time_and_notes_machine_load(tmp_path):
    # Wall-clock says p=0.5 is faster (the p=0 runs shared the CPU with another job); the CPU
    # time each run consumed says it is slower.
    def rows(wall, cpu):
        return [_row(epoch_time=wall, epoch_cpu_time=cpu + e / 1000) for e in range(3)]

    cells = {("standard", 0.0): [rows(0.40, 0.10 + s / 100) for s in range(3)],
             ("standard", 0.5): [rows(0.13, 0.12 + s / 100) for s in range(3)]}
    summary = _summary(tmp_path, cells)
    claim = _claim(summary, "Dropout costs training time")
    assert claim.verdict == SUPPORTED, claim.numbers
    assert "CPU seconds" in claim.measurement
    assert any(note.startswith("machine load") for note in summary.notes)
    assert "machine load" in claim.numbers


def test_best_rate_tie_is_not_resolved_against_dropout(tmp_path):
    cells = {("standard", p): [_row(test=0.9649 + s / 100) for s in range(3)] for p in (0, 0.2)}
    claim = _claim(_summary(tmp_path, cells), "Dropout works best at rates around 0.2-0.5")
    assert claim.verdict == NOT_SUPPORTED
    assert claim.verdict_text == "not supported (tie at standard p=0.2 vs p=0)"


def test_application_claims_are_judged_where_their_words_point(tmp_path):
    cells = {("standard", p): [_row() for _ in range(3)] for p in (0.0, 0.5)}
    patients = _claim(_summary(tmp_path / "bc", cells),
                      "Dropout improves generalization across patients")
    assert "patients held out of training (one row = one patient)" in patients.measurement
    assert patients.verdict == NOT_SUPPORTED  # identical numbers: a tie
    names = [c.claim for c in evaluate_claims(_summary(tmp_path / "fsdd", cells, task="fsdd"))]
    speech = _claim(_summary(tmp_path / "fsdd2", cells, task="fsdd"),
                    "Dropout helps model diverse speaking styles")
    assert speech.verdict == NOT_MEASURED and "fsdd-speakers" in speech.numbers
    assert "Dropout helps model diverse speaking styles" in names
    # Leave-one-speaker-out: p=0.5 better on every held-out speaker (seed = fold).
    folds = {("standard", 0.0): [_row(test=0.80 + s / 100) for s in range(6)],
             ("standard", 0.5): [_row(test=0.85 + s / 100) for s in range(6)]}
    unseen = _claim(_summary(tmp_path / "loso", folds, task="fsdd-speakers"),
                    "Dropout helps model diverse speaking styles")
    assert unseen.verdict == SUPPORTED and "n=6" in unseen.numbers
    assert "a speaker held out of training" in unseen.measurement


def test_cnn_report_says_which_dropout_went_where_and_compares_variants(tmp_path):
    def cells(variants):
        return {(v, p): [_row(test=0.90 + s / 100 + (0.05 if v == "dropblock" and p else 0))
                         for s in range(3)] for v in variants for p in (0.0, 0.5)}

    name = ("In CNNs and LSTMs, structured dropout (channel / DropBlock on conv maps, "
            "LockedDropout / WeightDrop in LSTMs) beats element-wise dropout")
    only = _claim(_summary(tmp_path / "a", cells(["standard"]), task="mnist-cnn"), name)
    assert only.verdict == NOT_MEASURED
    assert "standard: features.3 Dropout2d(p=0.5" in only.measurement
    both = _claim(_summary(tmp_path / "b", cells(["dropblock", "elementwise", "standard"]),
                           task="mnist-cnn"), name)
    assert "dropblock: features.3 DropBlock2d(p=0.5, block_size=3)" in both.measurement
    assert "elementwise: features.3 Dropout(p=0.5" in both.measurement
    assert both.verdict == SUPPORTED and "dropblock p=0.5" in both.verdict_text
    assert "standard p=0.5" not in both.verdict_text  # tied with element-wise: no support
    # An MLP has no conv or LSTM layer: no such row.
    assert name not in [c.claim for c in evaluate_claims(_summary(tmp_path / "c", cells(
        ["standard"])))]


def test_lstm_layout_names_locked_dropout_and_weight_drop():
    layout = dict(get_task("ptb").dropout_layout("standard"))
    assert layout["lstm"] == "WeightDrop(p=0.5, weights=['weight_hh_l0'])"
    assert layout["input_drop"].startswith("LockedDropout")


def test_held_out_speaker_protocol_never_trains_on_the_test_speaker():
    root = require_shared("fsdd", "recordings").parents[1]
    task = get_task("fsdd-speakers")
    speakers = set()
    for seed in (0, 1):
        data = task.load(root / "fsdd", seed=seed)
        assert data.seed == seed and len(data.y_test) == 500
        note = next(n for n in data.notes if n.startswith(f"seed {seed}: test speaker"))
        held_out = note.split("'")[1]
        assert held_out not in note.split("trained on")[1]
        speakers.add(held_out)
        assert len(data.y_train) + len(data.y_val) == 2500
        # No recording is in both: every test spectrogram is absent from the training ones.
        train = {hash(row.numpy().tobytes()) for row in data.x_train}
        assert not any(hash(row.numpy().tobytes()) in train for row in data.x_test[:50])
    assert len(speakers) == 2
    assert torch.equal(task.load(root / "fsdd", seed=6).y_test, task.load(root / "fsdd",
                                                                           seed=0).y_test)


BATCHNORM = "Dropout needs care with batch normalisation (variance shift)"


def _bn(after, before=1.0):
    """A run's recorded variance shifts: one BatchNorm layer after dropout, one before."""
    return {"bn_variance_shift": [
        {"layer": "features.1", "after_dropout": False, "library_shift": before},
        {"layer": "features.5", "after_dropout": True, "library_shift": after}]}


@pytest.mark.parametrize(
    ("base", "dropout", "verdict"),
    [
        # +0.02 at every seed with spread 0.005: t = 0.02 / (0.005 / sqrt 3) = 6.9, p = 0.02.
        # Small, but beyond noise: the verdict is the test's, not a threshold's.
        ([1.010, 1.015, 1.020], [1.030, 1.030, 1.045], SUPPORTED),
        ([1.10, 1.30, 1.20], [1.25, 1.15, 1.22], NOT_SUPPORTED),  # differences -> mean ~0
        ([1.40, 1.50, 1.45], [1.10, 1.12, 1.11], NOT_SUPPORTED),  # p>0 fits better: contradicts
        ([1.00, 1.01], [1.80, 1.90], NOT_MEASURED),  # two seeds: never a sign-only guess
    ],
)
def test_batchnorm_claim_is_a_paired_test_on_the_variance_shift(tmp_path, base, dropout,
                                                                 verdict):
    cells = {("standard", p): [_row() for _ in base] for p in (0.0, 0.5)}
    measurements = {("standard", 0.0): [_bn(v) for v in base],
                    ("standard", 0.5): [_bn(v) for v in dropout]}
    claim = _claim(_summary(tmp_path, cells, task="digits", measurements=measurements),
                   BATCHNORM)
    assert claim.verdict == verdict, claim.numbers
    assert claim.measurement.startswith(batchnorm.DEFINITION)
    assert "features.5" in claim.measurement and "features.1" not in claim.measurement
    # Only the layer after dropout counts (features.1 is always 1.0 and would dilute it).
    ours, theirs = Stat.of(dropout), Stat.of(base)
    assert (f"variance shift {format_stat(ours, 3)} vs p=0: {format_stat(theirs, 3)}"
            in claim.numbers)
    (comparison,) = claim.comparisons
    assert comparison.n == len(base)
    if verdict != NOT_MEASURED:
        differences = [a - b for a, b in zip(dropout, base, strict=True)]
        assert comparison.p_value == pytest.approx(stats.ttest_1samp(differences, 0).pvalue)
        assert comparison.effect == pytest.approx(sum(differences) / len(differences))
        assert comparison.ci[0] < comparison.effect < comparison.ci[1]
    else:
        assert claim.verdict_text == "not measured (2 seeds; need 3)"


def test_batchnorm_claim_is_holm_corrected_over_rates(tmp_path):
    # Differences 0.02, 0.015, 0.03: p = 0.039 alone; beside a null rate (differences
    # 0.002, 0.001, -0.003, p = 1) Holm doubles it to 0.078.
    base, small = [1.010, 1.015, 1.020], [1.030, 1.030, 1.050]
    cells = {("standard", p): [_row() for _ in base] for p in (0.0, 0.2, 0.5)}
    measurements = {("standard", 0.0): [_bn(v) for v in base],
                    ("standard", 0.2): [_bn(v) for v in small],
                    ("standard", 0.5): [_bn(v) for v in (1.012, 1.016, 1.017)]}
    claim = _claim(_summary(tmp_path, cells, task="digits", measurements=measurements),
                   BATCHNORM)
    first = claim.comparisons[0]
    assert first.p_value < 0.05 < first.p_holm
    assert claim.verdict == NOT_SUPPORTED and "Holm-corrected over 2" in claim.test


def test_batchnorm_claim_quotes_the_batchnorm_tables_cell(tmp_path):
    # A real digits CNN (BatchNorm after a dropout layer), three seeds, one epoch.
    from dropkit.lab.config import build_config
    from dropkit.lab.report.html import render_report
    from dropkit.lab.run import run_experiment

    config = build_config("digits", name="bn", epochs=1, seeds=[0, 1, 2], rates=[0.0, 0.5],
                          mc_samples=2)
    with open_store(tmp_path / "s.sqlite") as store:
        run_experiment(store, config, show_progress=False)
        summary = summarise(store, store.get_experiment("bn"))
    layers = batchnorm.after_dropout_layers(summary)
    assert layers == {"features.5"}
    claim = _claim(summary, BATCHNORM)
    group, base = summary.groups[1], summary.groups[0]
    assert (group.p, base.p) == (0.5, 0.0)
    cell = format_stat(batchnorm.shift(group, layers), 3)
    assert f"variance shift {cell} vs p=0: {format_stat(batchnorm.shift(base, layers), 3)}" \
        in claim.numbers
    # The same text is the BatchNorm table's cell for (standard, 0.5, features.5).
    section = re.search(r'<section id="batchnorm">(.*?)</section>', render_report(summary),
                        re.S).group(1)
    row = re.search(r'<td class="left">standard</td><td>0.5</td><td>3</td>(.*?)</tr>',
                    section).group(1)
    assert html.escape(cell) in re.findall(r"<td>(.*?)</td>", row)
    # The verdict is the paired test's: three pairs, Holm over one rate.
    (comparison,) = claim.comparisons
    assert comparison.n == 3 and comparison.p_holm is not None
    expected = (NOT_SUPPORTED if comparison.p_holm >= 0.05 or comparison.effect <= 0
                else SUPPORTED)
    assert claim.verdict == expected, claim.numbers


def test_overfitting_claim_states_the_gap_with_its_sign_on_perplexity(tmp_path):
    # PTB: lower perplexity is better, so the gap is test - train.
    def row(train, test):
        return {"train_perplexity": train, "test_perplexity": test, "train_loss": 4.0,
                "test_loss": 4.5, "fit_loss": 4.0, "epoch_time": 1.0}

    cells = {("standard", 0.0): [row(90.0, 130.0 + s) for s in range(3)],
             ("standard", 0.5): [row(110.0 + s, 120.0) for s in range(3)]}
    claim = _claim(_summary(tmp_path, cells, task="ptb"), OVERFITTING)
    assert gap_definition(get_task("ptb")) == "test - train perplexity"
    assert "max(test - train perplexity, 0)" in claim.measurement
    for text in (claim.measurement, claim.numbers, claim.verdict_text):
        assert "train - test" not in text
    assert claim.verdict == SUPPORTED, claim.numbers  # gap 40-42 -> 8-10 at every seed
