"""The benchmark suite behind ``make bench`` (``python -m bench``).

Modules: ``data`` (the cached benchmark files), ``procs`` (measured subprocesses and the emulator
process), ``baseline`` (a plain-Python importer), ``ideal`` (the ideal client), ``scenarios`` (the
measurements), ``report`` (docs/benchmarks.md and its plots), ``profiling`` (pyinstrument).
"""
