"""dropkit lab: train with and without dropout on real tasks, record every run, report the claims.

Layers (each its own module): ``tasks`` (data + model), ``config`` (experiment
and run configs), ``train`` (the loop), ``store`` (persistence), ``pipeline``
(plan, claim, train, measure, finish), driven by ``run`` (the grid), ``ddp``
(data-parallel) and ``sweep`` (Optuna), ``measure`` (end-of-run measurements,
the seam to the library), ``summary`` (aggregation), ``report`` (HTML), ``cli``
(command line), ``uci`` (the UCI benchmark).
"""


def main() -> None:
    """Entry point of the ``dropkit`` command and ``python -m dropkit``."""
    try:
        from dropkit.lab.cli import main as cli_main
    except ModuleNotFoundError as error:
        # The core library needs only torch; the command line comes with the lab extra.
        raise SystemExit(
            f"the dropkit command line needs the lab extra ({error.name} is missing): "
            "pip install 'dropkit[lab]'"
        ) from None
    cli_main()
