"""``python -m dropkit.lab.uci``: the benchmark's command line."""

from dropkit.lab.uci.cli import main

raise SystemExit(main())
