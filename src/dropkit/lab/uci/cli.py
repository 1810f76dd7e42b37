"""Command line of the benchmark: ``dropkit lab uci`` and its alias ``python -m dropkit.uci``."""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch

from dropkit.lab.uci.loader import DATASETS
from dropkit.lab.uci.protocol import UCIProtocol
from dropkit.lab.uci.runner import _load_results, run_benchmark
from dropkit.lab.uci.table import format_table, published_results, summarise

__all__ = ["main"]

def _parse_splits(text: str) -> Optional[list[int]]:
    if text == "all":
        return None
    splits: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise argparse.ArgumentTypeError(
                f"--splits expects 'all', 'K', 'A-B' or a comma list of those, got {text!r}"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        if last < first:
            raise argparse.ArgumentTypeError(f"--splits range {part!r} runs backwards")
        splits.extend(range(first, last + 1))
    return sorted(set(splits))


def _parse_datasets(text: str) -> list[str]:
    return list(DATASETS) if text == "all" else [d.strip() for d in text.split(",") if d.strip()]


def main(argv: Optional[Sequence[str]] = None, prog: str = "dropkit lab uci") -> int:
    """Command line of the benchmark (also ``dropkit lab uci``); returns the exit code."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="MC dropout on the UCI regression benchmark (Gal & Ghahramani, 2016).",
    )
    parser.add_argument("--datasets", default="all", help="comma list or 'all' (default)")
    parser.add_argument("--splits", default="all", help="'all', '3', '0-4' or '0,2,5'")
    parser.add_argument("--out", required=True, help="folder for results.jsonl (resumable)")
    parser.add_argument(
        "--data-dir", default=None,
        help="UCI folder (default: $DROPKIT_UCI_DIR, $DROPKIT_SHARED_DATA/uci, $DROPKIT_DATA/uci)",
    )
    parser.add_argument("--samples", type=int, default=10000, help="MC samples T on test")
    parser.add_argument("--val-samples", type=int, default=1000, help="MC samples on validation")
    parser.add_argument("--epochs-multiplier", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: the nets are tiny, more threads only contend)",
    )
    parser.add_argument(
        "--report", action="store_true", help="only print the table of what --out holds"
    )
    args = parser.parse_args(argv)
    try:
        splits = _parse_splits(args.splits)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    datasets = _parse_datasets(args.datasets)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, but got {args.threads}")
    torch.set_num_threads(args.threads)
    try:
        protocol = UCIProtocol(
            epochs_multiplier=args.epochs_multiplier,
            samples=args.samples,
            val_samples=args.val_samples,
            seed=args.seed,
        )
    except ValueError as error:
        parser.error(str(error))
    if args.report:
        records = [
            r for r in _load_results(Path(args.out) / "results.jsonl")
            if r.get("protocol") == protocol.key() and r["dataset"] in datasets
        ]
    else:
        started = time.perf_counter()
        try:
            records = run_benchmark(
                datasets, splits, args.out, root=args.data_dir, protocol=protocol,
                log=lambda m: print(m, flush=True),
            )
        except (FileNotFoundError, ValueError) as error:
            # Data problems; splits finished before it stay in results.jsonl.
            parser.error(str(error))
        records = [r for r in records if r["dataset"] in datasets]
        print(f"wall time this invocation: {(time.perf_counter() - started) / 60:.1f} min")
    readme = Path(args.data_dir) / "README.md" if args.data_dir else None
    published = published_results(readme if readme is not None and readme.is_file() else None)
    print(format_table(summarise(records, published)))
    return 0


