"""Benchmarks of lazyfs on this machine: ``scripts/bench [PART]`` runs ``python -m bench.PART``.

Each part prints a table and saves it (markdown and JSON) under ``bench/results/``.
Benchmarks measure and report; they assert nothing about timings.
"""
