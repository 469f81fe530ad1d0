"""visual-dr3 benchmarks: ``python -m benchmarks`` runs the suite (see ``benchmarks/__main__.py``)."""
