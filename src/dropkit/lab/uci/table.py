"""The published numbers of the benchmark and the table that compares a run with them."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from dropkit.lab.uci.loader import DATASETS, default_uci_root

__all__ = ["PUBLISHED_TYPED_IN", "format_table", "published_results", "summarise"]

# Names used in the reference README's results table.
_README_NAMES = {
    "Boston Housing": "bostonHousing",
    "Concrete Strength": "concrete",
    "Energy Efficiency": "energy",
    "Kin8nm": "kin8nm",
    "Naval Propulsion": "naval-propulsion-plant",
    "Power Plant": "power-plant",
    "Protein Structure": "protein-tertiary-structure",
    "Wine Quality Red": "wine-quality-red",
    "Yacht Hydrodynamics": "yacht",
}

# Typed in from the results table of github.com/yaringal/DropoutUncertaintyExps
# README.md (2018 update): (grid RMSE, SE, grid LL, SE, BayesOpt RMSE, SE,
# BayesOpt LL, SE). Used only when the README copy is not beside the data.
PUBLISHED_TYPED_IN = {
    "bostonHousing": (2.90, 0.18, -2.40, 0.04, 2.83, 0.17, -2.40, 0.04),
    "concrete": (4.82, 0.16, -2.93, 0.02, 4.93, 0.14, -2.97, 0.02),
    "energy": (0.54, 0.06, -1.21, 0.01, 1.08, 0.03, -1.72, 0.01),
    "kin8nm": (0.08, 0.00, 1.14, 0.01, 0.09, 0.00, 0.97, 0.00),
    "naval-propulsion-plant": (0.00, 0.00, 4.45, 0.00, 0.00, 0.00, 3.91, 0.01),
    "power-plant": (4.01, 0.04, -2.80, 0.01, 4.00, 0.04, -2.79, 0.01),
    "protein-tertiary-structure": (4.27, 0.02, -2.87, 0.00, 4.27, 0.01, -2.87, 0.00),
    "wine-quality-red": (0.62, 0.01, -0.93, 0.01, 0.61, 0.01, -0.92, 0.01),
    "yacht": (0.67, 0.05, -1.25, 0.01, 0.70, 0.05, -1.38, 0.01),
}

_CELL = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*±\s*(\d+(?:\.\d+)?)\s*$")


def published_results(readme: Optional[os.PathLike | str] = None) -> dict[str, dict]:
    """Published MC-dropout numbers per data set folder name.

    Parsed from the reference README's table (``uci/README.md`` beside the data),
    else the same table typed in (source: yaringal/DropoutUncertaintyExps
    README.md). Each entry: ``{"rmse": (mean, se), "ll": (mean, se),
    "rmse_bayesopt": ..., "ll_bayesopt": ..., "source": str}``; "rmse"/"ll"
    are the grid-search numbers, the protocol implemented here.
    """
    path = Path(readme) if readme is not None else default_uci_root() / "README.md"
    parsed: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in line.split("|")]
            if len(cells) != 5 or cells[0] not in _README_NAMES:
                continue
            matches = [_CELL.match(c) for c in cells[1:]]
            if not all(matches):
                continue
            values = [(float(m.group(1)), float(m.group(2))) for m in matches]
            parsed[_README_NAMES[cells[0]]] = {
                "rmse_bayesopt": values[0],
                "rmse": values[1],
                "ll_bayesopt": values[2],
                "ll": values[3],
                "source": str(path),
            }
    if parsed:
        return parsed
    source = "typed in from github.com/yaringal/DropoutUncertaintyExps README.md"
    return {
        name: {
            "rmse": (v[0], v[1]),
            "ll": (v[2], v[3]),
            "rmse_bayesopt": (v[4], v[5]),
            "ll_bayesopt": (v[6], v[7]),
            "source": source,
        }
        for name, v in PUBLISHED_TYPED_IN.items()
    }


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    if array.size < 2:
        return float(array.mean()), math.nan
    return float(array.mean()), float(array.std(ddof=1) / math.sqrt(array.size))


def summarise(records: Sequence[dict], published: Optional[dict] = None) -> list[dict]:
    """Per data set: mean +- standard error (sample std / sqrt(n)) beside the published numbers."""
    published = published if published is not None else published_results()
    rows = []
    names = [n for n in DATASETS if any(r["dataset"] == n for r in records)]
    names += sorted({r["dataset"] for r in records} - set(names))
    for name in names:
        mine = [r for r in records if r["dataset"] == name]
        rmse = _mean_se([r["test_rmse"] for r in mine])
        ll = _mean_se([r["test_ll"] for r in mine])
        reference = published.get(name, {})
        row = {
            "dataset": name,
            "splits": len(mine),
            "rmse": rmse,
            "ll": ll,
            "rmse_standard": _mean_se([r["test_rmse_standard"] for r in mine]),
            "published_rmse": reference.get("rmse"),
            "published_ll": reference.get("ll"),
            "seconds": float(sum(r["seconds"] for r in mine)),
        }
        row["rmse_ok"] = _agrees(rmse, reference.get("rmse"), lower_is_better=True)
        row["ll_ok"] = _agrees(ll, reference.get("ll"), lower_is_better=False)
        rows.append(row)
    return rows


def _agrees(
    mine: tuple[float, float], reference: Optional[tuple[float, float]], lower_is_better: bool
) -> Optional[bool]:
    """Better than published, or within two standard errors of the difference.

    The SE of the difference is sqrt(se_mine^2 + se_published^2); the published
    numbers are rounded to 0.01, so half a unit of rounding is added to it.
    """
    if reference is None or math.isnan(mine[1]):
        return None
    difference = mine[0] - reference[0]
    if (difference <= 0) if lower_is_better else (difference >= 0):
        return True
    tolerance = 2.0 * math.sqrt(mine[1] ** 2 + reference[1] ** 2) + 0.005
    return abs(difference) <= tolerance


def _fmt(pair: Optional[tuple[float, float]], digits: int = 3) -> str:
    if pair is None:
        return "n/a"
    mean, se = pair
    se_text = "n/a" if math.isnan(se) else f"{se:.{digits}f}"
    return f"{mean:.{digits}f} ± {se_text}"


def format_table(rows: Sequence[dict]) -> str:
    """A Markdown table of :func:`summarise` rows."""
    lines = [
        "| dataset | splits | MC RMSE (ours) | RMSE (published) | test LL (ours) | LL (published) "
        "| within 2 SE (RMSE / LL) | weight-scaling RMSE | train+eval time |",
        "|---|---:|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for row in rows:
        verdict = "/".join(
            "n/a" if ok is None else ("yes" if ok else "no")
            for ok in (row["rmse_ok"], row["ll_ok"])
        )
        lines.append(
            f"| {row['dataset']} | {row['splits']} | {_fmt(row['rmse'])} | "
            f"{_fmt(row['published_rmse'], 2)} | {_fmt(row['ll'])} | "
            f"{_fmt(row['published_ll'], 2)} "
            f"| {verdict} | {_fmt(row['rmse_standard'])} | {row['seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


