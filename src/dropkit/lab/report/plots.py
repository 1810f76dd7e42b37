"""Matplotlib figures of an experiment, each a :class:`Plot` (base64 PNG and its display size).

Figures are laid out for the page they land on: panels of a fixed, readable
size (about 250-340 CSS pixels wide, 10 pt text) in a grid that wraps at the
report's content width, drawn at twice the display resolution so they stay
sharp on high-density screens, and shown at exactly their intended size (the
``<img>`` carries ``width``/``height``). One colour per dropout variant in
every figure; error bars and bands are ±1 standard error over seeds.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # headless: the report is written without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, ScalarFormatter  # noqa: E402

from dropkit.lab.report import batchnorm  # noqa: E402
from dropkit.lab.report.table import gap_definition  # noqa: E402
from dropkit.lab.summary import ExperimentSummary, GroupSummary, Stat  # noqa: E402

__all__ = [
    "PAGE_WIDTH",
    "Plot",
    "ReliabilitySeries",
    "ablation_curves",
    "bn_shift",
    "co_adaptation",
    "figure_html",
    "learning_curves",
    "longest_run",
    "mc_vs_weight_scaling",
    "metric_vs_p",
    "referral_curves",
    "reliability",
    "reliability_diagram",
    "time_and_convergence",
    "variant_colours",
]

#: CSS pixels a figure may take: the report's content column (html._CSS) less a margin.
PAGE_WIDTH = 1040
_CSS_DPI = 96  # CSS pixels per inch: a figure of w inches shows w * 96 px wide
_SCALE = 2  # PNG pixels per CSS pixel, for high-density screens
#: Text sizes in points; at 96 CSS px/inch 9 pt ticks are 12 px, as small as body text allows.
_STYLE = {
    "font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "legend.fontsize": 9, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
}
_LINE_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Plot:
    """One figure: ``png`` (base64) and the CSS size it is meant to be seen at."""

    png: str
    width: int
    height: int
    #: Narrowest panel, in CSS pixels (what a reader's eye gets per panel).
    min_panel_width: int
    #: What the figure shows: its panel titles and legend entries, as drawn.
    alt: str


@dataclass(frozen=True)
class ReliabilitySeries:
    """One line of a reliability diagram: per confidence bin, the mean confidence and accuracy.

    Bins with no case are left out (``count`` 0). A second series on the same
    panel (say, "after temperature scaling") is another instance of this.
    """

    label: str
    confidence: Sequence[float]
    accuracy: Sequence[float]
    count: Sequence[int]
    colour: Optional[str] = None
    style: str = "-"


def figure_html(plot: Plot, caption: str = "") -> str:
    """``<figure>`` with the image at its intended CSS size and an optional (escaped) caption."""
    caption = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return (f'<figure><img alt="{escape(plot.alt)}" width="{plot.width}" height="{plot.height}" '
            f'src="data:image/png;base64,{plot.png}">{caption}</figure>')


def _styled(function: Callable[..., Optional[Plot]]) -> Callable[..., Optional[Plot]]:
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_STYLE):
            return function(*args, **kwargs)

    return wrapper


def _grid(
    count: int, panel: tuple[int, int], *, rows_per_cell: int = 1, sharey: bool = False
) -> tuple[plt.Figure, list[list[plt.Axes]]]:
    """A figure of ``count`` cells of ``panel`` CSS px, wrapping at :data:`PAGE_WIDTH`.

    Each cell is ``rows_per_cell`` panels stacked; returns the cells' axes in
    reading order (cell -> its rows). Unused grid slots are hidden.
    """
    columns = max(1, min(count, PAGE_WIDTH // panel[0]))
    cell_rows = math.ceil(count / columns)
    figure, axes = plt.subplots(
        cell_rows * rows_per_cell, columns, squeeze=False,
        figsize=(columns * panel[0] / _CSS_DPI, cell_rows * rows_per_cell * panel[1] / _CSS_DPI),
        layout="constrained",
    )
    cells = []
    for index in range(cell_rows * columns):
        row, column = divmod(index, columns)
        stack = [axes[row * rows_per_cell + k][column] for k in range(rows_per_cell)]
        if index < count:
            cells.append(stack)
        else:
            for axis in stack:
                axis.set_visible(False)
    if sharey:
        # One y scale per row of a cell across the whole grid, wrapped rows included.
        for cell in cells[1:]:
            for axis, first in zip(cell, cells[0], strict=True):
                axis.sharey(first)
    return figure, cells


def _describe(what: str, figure: plt.Figure) -> str:
    """Alt text: the figure's panel titles (or axis labels) and legend entries, as drawn."""
    def unique(texts: list[str]) -> list[str]:
        return list(dict.fromkeys(" ".join(t.split()) for t in texts if t.strip()))

    axes = [a for a in figure.axes if a.get_visible()]
    titles = unique([a.get_title() for a in axes])
    labels = unique([a.get_ylabel() for a in axes] + [a.get_xlabel() for a in axes])
    legend = unique([t.get_text() for a in axes if a.get_legend() for t in a.get_legend().texts])
    text = f"{what}: {'; '.join(titles or labels)}"
    if titles and labels:
        text += f" (axes: {', '.join(labels)})"
    return text + (f" (legend: {', '.join(legend)})" if legend else "")


def _plot(figure: plt.Figure, what: str) -> Plot:
    figure.canvas.draw()  # the constrained layout is final once drawn
    width, height = (round(v * _CSS_DPI) for v in figure.get_size_inches())
    panels = [a.get_window_extent().width / figure.dpi * _CSS_DPI
              for a in figure.axes if a.get_visible()]
    alt = _describe(what, figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_CSS_DPI * _SCALE)
    plt.close(figure)
    return Plot(base64.b64encode(buffer.getvalue()).decode("ascii"), width, height,
                round(min(panels)) if panels else 0, alt)


def _p(p: float) -> str:
    return f"{p:.3g}"


def _label(group: GroupSummary) -> str:
    return f"{group.variant} p={_p(group.p)}"


def variant_colours(summary: ExperimentSummary) -> dict[str, str]:
    """One matplotlib colour per variant, the same in every figure of the report."""
    return {v: f"C{i % 10}" for i, v in enumerate(sorted({g.variant for g in summary.groups}))}


def _rate_styles(summary: ExperimentSummary) -> dict[float, str]:
    # Colour says the variant, the line style says the rate (cycled for a sweep's many rates).
    rates = sorted({g.p for g in summary.groups})
    return {p: _LINE_STYLES[i % len(_LINE_STYLES)] for i, p in enumerate(rates)}


def _mean_curve(group: GroupSummary, key: str) -> tuple[list[int], list[float], list[float]]:
    length = min(len(run.epochs) for run in group.runs)
    epochs, means, sems = [], [], []
    for i in range(length):
        stat = Stat.of([run.epochs[i][key] for run in group.runs])
        epochs.append(group.runs[0].epochs[i]["epoch"])
        means.append(stat.mean)
        sems.append(stat.sem or 0.0)
    return epochs, means, sems


def _pretty(name: str) -> str:
    return name.replace("_", " ")


def longest_run(summary: ExperimentSummary) -> int:
    """Epochs of the longest finished run (1: there is no curve to draw)."""
    return max((len(run.epochs) for group in summary.groups for run in group.runs), default=0)


@_styled
def learning_curves(summary: ExperimentSummary) -> Optional[Plot]:
    """Train vs test metric (top) and loss (bottom) per epoch, one cell per (variant, p).

    Points are marked, so a one-epoch run shows its values rather than an empty
    box; ``None`` when every run has a single epoch (no curve to draw).
    """
    if longest_run(summary) < 2:
        return None
    groups = summary.groups
    figure, cells = _grid(len(groups), (255, 190), rows_per_cell=2, sharey=True)
    metric = _pretty(summary.metric)
    for (top, bottom), group in zip(cells, groups, strict=True):
        for axis, key in ((top, summary.metric), (bottom, "loss")):
            for split, colour in (("train", "tab:blue"), ("test", "tab:red")):
                epochs, mean, sem = _mean_curve(group, f"{split}_{key}")
                axis.plot(epochs, mean, color=colour, marker="o", markersize=3, label=split)
                low = [m - s for m, s in zip(mean, sem, strict=True)]
                high = [m + s for m, s in zip(mean, sem, strict=True)]
                axis.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
            axis.xaxis.get_major_locator().set_params(integer=True)
            # The same epoch axis everywhere: a pruned one-epoch trial is a dot at epoch 1.
            axis.set_xlim(0.5, longest_run(summary) + 0.5)
        length = min(len(run.epochs) for run in group.runs)
        top.set_title(_label(group) + (" (1 epoch)" if length == 1 else ""))
        top.set_ylabel(metric)
        bottom.set_ylabel("loss")
        bottom.set_xlabel("epoch")
    losses = [v for group in groups for run in group.runs for e in run.epochs
              for v in (e["train_loss"], e["test_loss"])]
    # A log axis pays when the loss spans a decade; below that it leaves one tick label.
    if min(losses) > 0 and max(losses) > 10 * min(losses):
        cells[0][1].set_yscale("log")  # shared: every loss panel follows
        # 0.4, not 4 x 10^-1; between powers of ten only 2 and 5 are labelled, to fit.
        cells[0][1].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        cells[0][1].yaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    cells[0][0].legend()
    return _plot(figure, "learning curves")


def _errorbar_by_variant(axis: plt.Axes, summary: ExperimentSummary,
                         value: Callable[[GroupSummary], Optional[Stat]]) -> None:
    colours = variant_colours(summary)
    variants = sorted(colours)
    # Variants share the rates: nudge each sideways so their error bars do not overlap.
    span = max((g.p for g in summary.groups), default=0.0) or 1.0
    for index, variant in enumerate(variants):
        offset = (index - (len(variants) - 1) / 2) * 0.012 * span
        points = [(g.p, value(g)) for g in summary.groups if g.variant == variant]
        points = [(p, s) for p, s in points if s is not None]
        if not points:
            continue
        axis.errorbar([p + offset for p, _ in points], [s.mean for _, s in points],
                      yerr=[s.sem or 0.0 for _, s in points], marker="o", markersize=4,
                      capsize=3, color=colours[variant], label=variant)


@_styled
def metric_vs_p(summary: ExperimentSummary) -> Plot:
    """Test metric and generalisation gap at each run's selected epoch against p, ±1 s.e."""
    figure, cells = _grid(2, (400, 290))
    (left,), (right,) = cells
    _errorbar_by_variant(left, summary, lambda g: g.test)
    _errorbar_by_variant(right, summary, lambda g: g.gap)
    left.set_ylabel(f"test {_pretty(summary.metric)} (selected epoch)")
    right.set_ylabel(f"gap = {gap_definition(summary.task)}")
    right.axhline(0.0, color="black", linewidth=0.6)
    for axis in (left, right):
        axis.set_xlabel("dropout rate p")
    left.legend()
    return _plot(figure, "metric vs p")


@_styled
def ablation_curves(summary: ExperimentSummary) -> Optional[Plot]:
    """Test metric as a growing fraction of the last hidden layer's units is zeroed."""
    colours, styles = variant_colours(summary), _rate_styles(summary)
    figure, ((axis,),) = _grid(1, (620, 330))
    drawn = False
    for group in summary.groups:
        curves = [r.measurements["ablation"] for r in group.runs if "ablation" in r.measurements]
        if not curves:
            continue
        fractions = curves[0]["fractions"]
        mean = [statistics.fmean(c["metric"][i] for c in curves) for i in range(len(fractions))]
        axis.plot([100 * f for f in fractions], mean, marker="o", markersize=3,
                  color=colours[group.variant], linestyle=styles[group.p], label=_label(group))
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axis.set_xlabel("% of the last hidden layer's units zeroed")
    axis.set_ylabel(f"test {_pretty(summary.metric)}")
    axis.legend(ncols=2 if len(summary.groups) > 6 else 1)
    return _plot(figure, "ablation curves")


#: Human names of dropkit.analysis's co-adaptation measurements, with what "better" means.
CO_ADAPTATION_LABELS = {
    "mean_abs_correlation": "mean |correlation| between units\n(lower: less co-adapted)",
    "effective_rank": "effective rank of the activations\n(higher: more independent directions)",
    "dead_units": "dead units\n(constant over the test set)",
    "fraction_inactive": "fraction of activations at zero",
    "mean_activation": "mean activation",
}


@_styled
def co_adaptation(summary: ExperimentSummary) -> Optional[Plot]:
    """Every numeric co-adaptation measurement against p, per variant, ±1 s.e. over seeds."""
    names: list[str] = []
    for run in summary.all_runs:
        value = run.measurements.get("co_adaptation", {})
        if isinstance(value, dict) and "not_measured" not in value:
            names += [k for k, v in value.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in names]
    if not names:
        return None
    known = list(CO_ADAPTATION_LABELS)
    names.sort(key=lambda n: (known.index(n), "") if n in known else (len(known), n))

    def measured(name: str) -> Callable[[GroupSummary], Optional[Stat]]:
        def value(group: GroupSummary) -> Optional[Stat]:
            numbers = [r.measurements.get("co_adaptation", {}).get(name) for r in group.runs]
            return Stat.of([float(v) for v in numbers if isinstance(v, (int, float))])
        return value

    figure, cells = _grid(len(names), (340, 260))
    for (axis,), name in zip(cells, names, strict=True):
        _errorbar_by_variant(axis, summary, measured(name))
        axis.set_title(CO_ADAPTATION_LABELS.get(name, _pretty(name)))
        axis.set_xlabel("dropout rate p")
    cells[0][0].legend()
    return _plot(figure, "co-adaptation")


@_styled
def mc_vs_weight_scaling(summary: ExperimentSummary) -> Optional[Plot]:
    """MC average of T passes vs T, with weight scaling and the mean single pass as lines."""
    groups = [g for g in summary.groups
              if any("mc" in r.measurements.get("mc_vs_weight_scaling", {}) for r in g.runs)]
    if not groups:
        return None
    colours = variant_colours(summary)
    figure, cells = _grid(len(groups), (255, 220), sharey=True)
    for (axis,), group in zip(cells, groups, strict=True):
        results = [r.measurements["mc_vs_weight_scaling"] for r in group.runs]
        results = [r for r in results if "mc" in r]
        samples = sorted(int(t) for t in results[0]["mc"])
        mc = [statistics.fmean(r["mc"][str(t)] for r in results) for t in samples]
        axis.plot(samples, mc, marker="o", markersize=4, color=colours[group.variant],
                  label="MC average")
        axis.axhline(statistics.fmean(r["weight_scaling"] for r in results), color="black",
                     linestyle="--", linewidth=1, label="weight scaling")
        axis.axhline(statistics.fmean(r["single_pass_mean"] for r in results), color="tab:grey",
                     linestyle=":", label="single pass")
        axis.set_xscale("log")
        axis.set_xticks(samples)
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(plt.NullFormatter())
        axis.set_xlabel("stochastic passes T")
        axis.set_title(_label(group))
        axis.set_ylabel(f"test {_pretty(summary.metric)}")
    cells[0][0].legend()
    return _plot(figure, "MC averaging vs weight scaling")


@_styled
def time_and_convergence(summary: ExperimentSummary) -> Plot:
    """CPU seconds per epoch and epochs to the common target per (variant, p), ±1 s.e."""
    colours = variant_colours(summary)
    groups = summary.groups
    # About 75 px per bar keeps a label like "elementwise" on one line; more bars turn it.
    width = max(400, min(PAGE_WIDTH // 2, 90 + 75 * len(groups)))
    figure, cells = _grid(2, (width, 300 if len(groups) <= 6 else 380))
    labels = [f"{g.variant}\np={_p(g.p)}" for g in groups]
    # CPU time when recorded: what the timing claim tests, and what machine load leaves alone.
    cpu = any(g.epoch_cpu_time is not None for g in groups)
    timing = ("epoch_cpu_time", "CPU s per epoch (median)") if cpu else (
        "epoch_time", "wall s per epoch (median)")
    for (axis,), attribute, name in ((cells[0], *timing),
                                     (cells[1], "epochs_to_target", "epochs to target")):
        stats = [getattr(g, attribute) for g in groups]
        axis.bar(range(len(groups)), [0.0 if s is None else s.mean for s in stats],
                 yerr=[0.0 if s is None or s.sem is None else s.sem for s in stats], capsize=3,
                 color=[colours[g.variant] for g in groups])
        axis.set_xticks(range(len(groups)), labels, rotation=90 if len(groups) > 6 else 0)
        axis.set_ylabel(name)
    return _plot(figure, "time and convergence")


@_styled
def bn_shift(summary: ExperimentSummary) -> Optional[Plot]:
    """The BatchNorm variance shift (:mod:`.batchnorm`) per layer against p, ±1 s.e."""
    found = batchnorm.layers(summary)
    if not found:
        return None
    figure, cells = _grid(len(found), (400, 290), sharey=True)
    for (axis,), (layer, after) in zip(cells, found, strict=True):
        _errorbar_by_variant(axis, summary, lambda g, n=layer: batchnorm.shift(g, {n}))
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_title(f"BatchNorm {layer}" + (" (after dropout)" if after else ""))
        axis.set_xlabel("dropout rate p")
        axis.set_ylabel(batchnorm.SHORT)
    cells[0][0].legend()
    return _plot(figure, "BatchNorm variance shift")


# --- MC-dropout uncertainty ----------------------------------------------------------


def _uncertainty_groups(summary: ExperimentSummary, key: str) -> list[GroupSummary]:
    # p = 0 has no dropout to sample: its "MC" passes are one network, nothing to show.
    return [g for g in summary.groups if g.p > 0 and any(
        key in r.measurements.get("uncertainty", {}) for r in g.runs)]


@_styled
def reliability_diagram(panels: Sequence[tuple[str, Sequence[ReliabilitySeries]]]) -> Plot:
    """Accuracy against confidence per bin (Guo et al., 2017), one panel per title.

    Each panel draws every series it is given (e.g. "MC dropout" and later
    "after temperature scaling") over the diagonal of perfect calibration;
    a marker's area grows with the number of cases in its bin.
    """
    figure, cells = _grid(len(panels), (340, 300 + 20 * max(len(s) for _, s in panels)),
                          sharey=True)
    for (axis,), (title, series) in zip(cells, panels, strict=True):
        axis.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle="--",
                  label="perfectly calibrated")
        for index, line in enumerate(series):
            filled = [(c, a, n) for c, a, n in
                      zip(line.confidence, line.accuracy, line.count, strict=True) if n > 0]
            total = sum(n for _, _, n in filled) or 1
            colour = line.colour or f"C{index}"
            axis.plot([c for c, _, _ in filled], [a for _, a, _ in filled], color=colour,
                      linestyle=line.style, linewidth=1.2, label=line.label)
            axis.scatter([c for c, _, _ in filled], [a for _, a, _ in filled], color=colour,
                         s=[12 + 300 * n / total for _, _, n in filled], alpha=0.7, zorder=3)
        axis.set_xlim(0, 1.02)
        axis.set_ylim(0, 1.02)
        axis.set_aspect("equal")
        axis.set_title(title)
        axis.set_xlabel("confidence (top-class probability)")
        axis.set_ylabel("accuracy")
        # Below the panel: any corner of the unit square may hold the points that matter.
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    return _plot(figure, "reliability diagram")


def _pooled_bins(group: GroupSummary, after_temperature: bool = False
                 ) -> Optional[ReliabilitySeries]:
    """One series per (variant, p): the bins of all seeds pooled, weighted by their counts.

    ``after_temperature``: the bins after temperature scaling fitted on the validation
    split (``uncertainty.after_temperature.reliability``), labelled with the seeds' T.
    """
    def bins_of(run) -> Optional[dict]:
        uncertainty = run.measurements.get("uncertainty", {})
        if after_temperature:
            return uncertainty.get("after_temperature", {}).get("reliability")
        return uncertainty.get("reliability")

    records = [b for b in map(bins_of, group.runs) if b is not None]
    if not records:
        return None
    bins = len(records[0]["count"])
    count = [sum(r["count"][b] for r in records) for b in range(bins)]

    def pooled(key: str) -> list[float]:
        return [sum(r["count"][b] * r[key][b] for r in records if r["count"][b]) / count[b]
                if count[b] else math.nan for b in range(bins)]

    seeds = f"{len(records)} seed{'s' if len(records) > 1 else ''} pooled"
    label = f"MC dropout ({seeds})"
    if after_temperature:
        temperatures = [r.measurements["uncertainty"]["temperature"] for r in group.runs
                        if "temperature" in r.measurements.get("uncertainty", {})]
        label = f"after temperature scaling (T = {statistics.median(temperatures):.2f}, median)"
    return ReliabilitySeries(label, pooled("confidence"), pooled("accuracy"), count)


def reliability(summary: ExperimentSummary) -> Optional[Plot]:
    """The reliability diagram of every (variant, p > 0) with recorded bins, ``None`` if none;
    each panel also draws the bins after temperature scaling where they were recorded."""
    colours = variant_colours(summary)
    panels = []
    for group in _uncertainty_groups(summary, "reliability"):
        series = _pooled_bins(group)
        if series is not None:
            lines = [ReliabilitySeries(series.label, series.confidence, series.accuracy,
                                       series.count, colours[group.variant])]
            scaled = _pooled_bins(group, after_temperature=True)
            if scaled is not None:
                lines.append(ReliabilitySeries(scaled.label, scaled.confidence,
                                               scaled.accuracy, scaled.count, "black", ":"))
            panels.append((_label(group), lines))
    return reliability_diagram(panels) if panels else None


@_styled
def referral_curves(summary: ExperimentSummary) -> Optional[Plot]:
    """Accuracy on the cases kept vs the fraction referred, most uncertain first, ±1 s.e."""
    groups = _uncertainty_groups(summary, "referral")
    if not groups:
        return None
    colours, styles = variant_colours(summary), _rate_styles(summary)
    figure, ((axis,),) = _grid(1, (620, 360))
    for group in groups:
        curves = [r.measurements["uncertainty"]["referral"] for r in group.runs
                  if "referral" in r.measurements.get("uncertainty", {})]
        referred = curves[0]["referred"]
        stats = [Stat.of([c["accuracy"][i] for c in curves]) for i in range(len(referred))]
        x = [100 * r for r in referred]
        mean = [s.mean for s in stats]
        sem = [s.sem or 0.0 for s in stats]
        colour = colours[group.variant]
        axis.plot(x, mean, color=colour, linestyle=styles[group.p], marker="o", markersize=3,
                  label=f"{_label(group)} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        axis.fill_between(x, [m - s for m, s in zip(mean, sem, strict=True)],
                          [m + s for m, s in zip(mean, sem, strict=True)], color=colour,
                          alpha=0.15, linewidth=0)
    axis.set_xlabel("% of cases referred (most uncertain first, by predictive entropy)")
    axis.set_ylabel("accuracy on the cases kept")
    axis.legend(ncols=2 if len(groups) > 6 else 1)
    return _plot(figure, "referral curve")
