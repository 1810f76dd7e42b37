"""dropkit lab: train with and without dropout on real tasks, record every run, report the claims.

Layers (each its own module): ``tasks`` (data + model), ``train`` (the loop),
``store`` (persistence), ``sweep`` (the grid), ``measure`` (end-of-run
measurements and the adapter to optional dropkit modules), ``summary``
(aggregation), ``report`` (HTML), ``cli`` (command line).
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
