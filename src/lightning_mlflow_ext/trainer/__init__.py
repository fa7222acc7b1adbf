"""Everything that knows Lightning: the logger, the callbacks, autolog and LightningCLI support.

Talks to MLflow only through ``run`` (the session) and reads ``values`` and ``lineage``.
"""
