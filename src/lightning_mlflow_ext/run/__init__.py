"""One MLflow run: which run, where it is tracked, its lifecycle, and what is read back from it.

Knows MLflow, not Lightning; hands every write to ``delivery``.
"""
