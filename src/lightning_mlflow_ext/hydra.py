"""Hydra multiruns in MLflow: a logger made inside a job of ``python train.py -m lr=0.1,0.01`` records a child
run of the sweep's parent run, named after the job, with its overrides; nothing to pass.

The parent is found by a hash of the sweep's folder (``hydra.sweep.dir``: every job of one multirun shares it)
in the run's experiment, else created. Hydra stays optional: it is asked only when it is already imported.
"""

from __future__ import annotations

import os
import sys

from lightning_mlflow_ext.run.sweeps import Sweep, SweepTrial
from lightning_mlflow_ext.run.tags import MAX_TAG_VALUE, SWEEP_OVERRIDES_TAG, SWEEP_TRIAL_TAG

__all__ = ["current_job"]


def current_job() -> SweepTrial | None:
    """The Hydra multirun job this process runs now, else None (no Hydra, a single run, no job running)."""
    if "hydra" not in sys.modules:
        return None
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None
    job = hydra.job
    number = int(job.num)
    # Relative to where the multirun was started: every job of one multirun names the same folder.
    sweep_dir = os.path.normpath(os.path.join(hydra.runtime.cwd, str(hydra.sweep.dir)))
    overrides = ",".join(str(override) for override in hydra.overrides.task)
    tags = {SWEEP_TRIAL_TAG: str(number)}
    if overrides:
        tags[SWEEP_OVERRIDES_TAG] = overrides[:MAX_TAG_VALUE]
    return SweepTrial(
        sweep=Sweep.of("hydra", str(hydra.sweep.dir), identity=sweep_dir),
        number=number,
        run_name=str(job.override_dirname) or f"{job.name}#{number}",
        tags=tags,
    )
