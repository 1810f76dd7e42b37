"""dropkit lab: train with and without dropout on real tasks, record every run, report the claims.

Layers (each its own module): ``tasks`` (data + model), ``train`` (the loop),
``store`` (persistence), ``sweep`` (the grid), ``measure`` (end-of-run
measurements and the adapter to optional dropkit modules), ``summary``
(aggregation), ``report`` (HTML), ``cli`` (command line).
"""
