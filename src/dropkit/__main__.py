"""``python -m dropkit``: the same command line as the ``dropkit`` console script."""

from dropkit.lab.cli import main

main()
