"""``python -m dropkit``: the same command line as the ``dropkit`` console script."""

from dropkit.lab import main

main()
