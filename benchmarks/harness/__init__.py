"""The benchmark harness behind ``benchmarks/bench.py``: one module per responsibility.

common (paths, constants, processes, /proc), data (generated test files), hubrepo (the static
Hub of case F), tls (the test CA), nginx (its config), servers (nginx + delay proxy),
runner (timed runs through the launcher), checks (content checks), cases (A-C tool lists),
https (E), pull (F), proxycheck (the delay proxy self-check), limiter (D), report and targets.
"""
