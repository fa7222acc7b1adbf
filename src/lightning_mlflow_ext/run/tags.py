"""Every tag name this package writes, MLflow's limits on values, and the checkpoint-tag encoding.

One place, so a user's ``search_runs`` filter, a dashboard and the code agree on the spelling.
"""

from __future__ import annotations

from mlflow.utils.mlflow_tags import (
    MLFLOW_LOGGED_ARTIFACTS,
    MLFLOW_LOGGED_IMAGES,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
)

__all__ = [
    "BEST_MODEL_ID_TAG",
    "CHANGED_PARAMS_TAG",
    "CHECKPOINTS_ROOT",
    "CHECKPOINTS_SKIPPED_TAG",
    "CHECKPOINT_FIELDS",
    "CHECKPOINT_TAG_PREFIX",
    "ENV_FACTS",
    "ENV_TAG_PREFIX",
    "ENV_VARIABLE_TAG_PREFIX",
    "EPOCH_AXIS_KEYS_TAG",
    "FAILURE_EPOCH_TAG",
    "FAILURE_EXCEPTION_TAG",
    "FAILURE_KIND_TAG",
    "FAILURE_LAST_HEARTBEAT_TAG",
    "FAILURE_MESSAGE_TAG",
    "FAILURE_OUTPUT_FILE",
    "FAILURE_STEP_TAG",
    "FAILURE_TAG_PREFIX",
    "FAILURE_TRACEBACK_FILE",
    "GIT_TAG_PREFIX",
    "HEARTBEAT_TAG",
    "LINEAGE_CHANGED_TAG",
    "LINEAGE_PROBLEMS_TAG",
    "LINEAGE_TAG",
    "LOCKFILE_TAG_PREFIX",
    "MAX_TAG_VALUE",
    "MLFLOW_LOGGED_ARTIFACTS",
    "MLFLOW_LOGGED_IMAGES",
    "MLFLOW_PARENT_RUN_ID",
    "MLFLOW_RUN_NAME",
    "MODEL_CALLBACK_TAG",
    "MODEL_CHECKPOINT_TAG",
    "MODEL_EPOCH_TAG",
    "MODEL_MONITOR_TAG",
    "MODEL_SCORE_TAG",
    "MODEL_SERIALIZATION_TAG",
    "MODEL_STEP_TAG",
    "OWNER",
    "OWNER_TAG",
    "PARTIAL_TAG",
    "REGISTERED_MODEL_TAG",
    "RELEASED",
    "RESUMED_AT_STEP_TAG",
    "RESUMED_FROM_RUN_TAG",
    "STEP_AXIS_TAG",
    "SWEEP_BEST_PARAM_PREFIX",
    "SWEEP_BEST_RUN_TAG",
    "SWEEP_BEST_TRIAL_METRIC",
    "SWEEP_BEST_TRIAL_TAG",
    "SWEEP_BEST_VALUE_METRIC",
    "SWEEP_ID_TAG",
    "SWEEP_KIND_TAG",
    "SWEEP_NAME_TAG",
    "SWEEP_OVERRIDES_TAG",
    "SWEEP_TRIAL_STATE_TAG",
    "SWEEP_TRIAL_TAG",
    "TAG_PREFIX",
    "checkpoint_tag",
    "env_tag",
    "env_variable_tag",
    "lockfile_tag",
    "parse_checkpoint_tag",
]

#: Every tag this package writes starts with this (MLflow's own ``mlflow.*`` tags excepted).
TAG_PREFIX = "lightning_mlflow_ext."

#: MLflow's tag-value limit is 8000 characters on every store we write to.
MAX_TAG_VALUE = 8000

# ---- who owns the run, and whether its process lives ------------------------------------------------
#: Set on runs this package created, so another process can tell who ends the run.
OWNER_TAG = TAG_PREFIX + "owner"
OWNER = "lightning-mlflow-ext"
#: "<unix time> <host> <pid>" of the process writing into the run, renewed while it runs.
HEARTBEAT_TAG = TAG_PREFIX + "heartbeat"
#: The heartbeat of a run a process left RUNNING on purpose, for the next step of a pipeline.
RELEASED = "released"

# ---- why a run failed (run/forensics.py) ------------------------------------------------------------
FAILURE_TAG_PREFIX = TAG_PREFIX + "failure."
#: exception | cuda_oom | interrupted | terminated | heartbeat_stopped
FAILURE_KIND_TAG = FAILURE_TAG_PREFIX + "kind"
#: The exception's type (``RuntimeError``, ``torch.OutOfMemoryError``) and message (secrets hidden, cut to the limit).
FAILURE_EXCEPTION_TAG = FAILURE_TAG_PREFIX + "exception"
FAILURE_MESSAGE_TAG = FAILURE_TAG_PREFIX + "message"
#: The Trainer's global step and epoch when the exception was raised.
FAILURE_STEP_TAG = FAILURE_TAG_PREFIX + "global_step"
FAILURE_EPOCH_TAG = FAILURE_TAG_PREFIX + "epoch"
#: On a run closed by ``lightning-mlflow runs close-stale``: when its writer's heartbeat was last renewed.
FAILURE_LAST_HEARTBEAT_TAG = FAILURE_TAG_PREFIX + "last_heartbeat"
#: The artifacts of a failure: the traceback, and the process's last output lines.
FAILURE_TRACEBACK_FILE = "failure/traceback.txt"
FAILURE_OUTPUT_FILE = "failure/output_tail.txt"

# ---- how metrics were recorded ----------------------------------------------------------------------
STEP_AXIS_TAG = TAG_PREFIX + "step_axis"
EPOCH_AXIS_KEYS_TAG = TAG_PREFIX + "epoch_axis_keys"
#: Hyperparameters whose value changed after the first log (MLflow params cannot change).
CHANGED_PARAMS_TAG = TAG_PREFIX + "changed_params"

# ---- data and code lineage, resume ------------------------------------------------------------------
LINEAGE_TAG = TAG_PREFIX + "lineage"
LINEAGE_PROBLEMS_TAG = LINEAGE_TAG + ".problems"
LINEAGE_CHANGED_TAG = LINEAGE_TAG + ".changed_since_checkpoint"
RESUMED_AT_STEP_TAG = TAG_PREFIX + "resumed_at_step"
RESUMED_FROM_RUN_TAG = TAG_PREFIX + "resumed_from_run"
GIT_TAG_PREFIX = "mlflow.source.git."

# ---- sweeps (Optuna studies, Hydra multiruns): one parent run per sweep, a child run per trial -------------
SWEEP_TAG_PREFIX = TAG_PREFIX + "sweep."
#: On the parent: what finds it again (the study's name, a hash of Hydra's sweep dir), unique in its experiment.
SWEEP_ID_TAG = SWEEP_TAG_PREFIX + "id"
#: On the parent and every trial: ``optuna`` or ``hydra``; the study's name, or Hydra's sweep dir.
SWEEP_KIND_TAG = SWEEP_TAG_PREFIX + "kind"
SWEEP_NAME_TAG = SWEEP_TAG_PREFIX + "name"
#: On a trial: its number in the sweep (Optuna's ``trial.number``, Hydra's ``job.num``).
SWEEP_TRIAL_TAG = SWEEP_TAG_PREFIX + "trial"
#: On a trial: COMPLETE, PRUNED (stopped early by the pruner: the run is FINISHED, not FAILED), FAIL or KILLED.
SWEEP_TRIAL_STATE_TAG = SWEEP_TAG_PREFIX + "trial_state"
#: On a Hydra job: its command-line overrides (``lr=0.1,model=big``).
SWEEP_OVERRIDES_TAG = SWEEP_TAG_PREFIX + "overrides"
#: On the parent: the best trial so far, its run and its params (``...best_params.<name>``: tags, since a
#: param cannot change), and as metrics the runs table can sort, its value and number.
SWEEP_BEST_TRIAL_TAG = SWEEP_TAG_PREFIX + "best_trial"
SWEEP_BEST_RUN_TAG = SWEEP_TAG_PREFIX + "best_run_id"
SWEEP_BEST_PARAM_PREFIX = SWEEP_TAG_PREFIX + "best_params."
SWEEP_BEST_VALUE_METRIC = "best_value"
SWEEP_BEST_TRIAL_METRIC = "best_trial"

# ---- checkpoints and models -------------------------------------------------------------------------
#: The artifact folder every mirrored ModelCheckpoint lives under: ``checkpoints/<callback key>/``.
CHECKPOINTS_ROOT = "checkpoints"
#: ``lightning_mlflow_ext.checkpoint.<callback key>.<field>``, one of `CHECKPOINT_FIELDS`.
CHECKPOINT_TAG_PREFIX = TAG_PREFIX + "checkpoint."
#: ``best`` / ``latest``: the artifact path of that checkpoint; ``best_score``: the best one's score;
#: ``monitor``: the metric the callback monitors (only on a monitored callback: a periodic one has none).
CHECKPOINT_FIELDS = ("best", "best_score", "latest", "monitor")
#: A failed fit's checkpoints are what was saved, not a full set.
PARTIAL_TAG = TAG_PREFIX + "checkpoints_partial"
#: The checkpoints ``log_model_options`` kept out of the run for their size: one ``<artifact path>: <why>`` a line.
CHECKPOINTS_SKIPPED_TAG = TAG_PREFIX + "checkpoints_skipped"
BEST_MODEL_ID_TAG = TAG_PREFIX + "best_model_id"
REGISTERED_MODEL_TAG = TAG_PREFIX + "registered_model"
#: On a logged model: the checkpoint artifact it was built from, and the global step of that checkpoint.
MODEL_CHECKPOINT_TAG = TAG_PREFIX + "checkpoint"
MODEL_STEP_TAG = TAG_PREFIX + "step"
#: On a checkpoint's logged model: the epoch it was saved at, the ModelCheckpoint it came from (its key under
#: ``checkpoints/``), what that callback monitors and the checkpoint's score.
MODEL_EPOCH_TAG = TAG_PREFIX + "epoch"
MODEL_CALLBACK_TAG = TAG_PREFIX + "callback"
MODEL_MONITOR_TAG = TAG_PREFIX + "monitor"
MODEL_SCORE_TAG = TAG_PREFIX + "score"
#: On a logged model: how its module is stored (``mlflow.pytorch``'s ``serialization_format``: ``pickle``).
MODEL_SERIALIZATION_TAG = TAG_PREFIX + "serialization_format"


# ---- what ran it (run/environment.py, trainer/environment.py) ---------------------------------------
#: ``lightning_mlflow_ext.env.<fact>``, one of `ENV_FACTS`; a fact that does not exist here (no GPU driver, a
#: CPU-only torch has no CUDA version) is left out rather than written as "none".
ENV_TAG_PREFIX = TAG_PREFIX + "env."
ENV_FACTS = (
    # software
    "python",
    "python_implementation",
    "torch",
    "cuda",
    "cudnn",
    "lightning",
    "pytorch_lightning",
    "mlflow",
    "lightning_mlflow_ext",
    # the machine (GPUs: those visible to the process, on global rank 0's node)
    "nvidia_driver",
    "gpu_count",
    "gpu_names",
    "gpu_memory_mib",
    "cpu_model",
    "cpu_count",
    "cpus_available",
    "memory_mib",
    "host",
    "os",
    "platform",
    "container",
    "container_image",
    # the Trainer
    "world_size",
    "num_nodes",
    "precision",
    "strategy",
    "accelerator",
)
#: ``lightning_mlflow_ext.env.var.<NAME>``: the value of an allow-listed environment variable (``SLURM_JOB_ID``).
ENV_VARIABLE_TAG_PREFIX = ENV_TAG_PREFIX + "var."
#: ``lightning_mlflow_ext.env.lockfile.<file name>.sha256``: a lock file's hash (``uv.lock``, ``poetry.lock``...).
LOCKFILE_TAG_PREFIX = ENV_TAG_PREFIX + "lockfile."


def env_tag(fact: str) -> str:
    """The run tag holding ``fact``, one of `ENV_FACTS`."""
    if fact not in ENV_FACTS:
        raise KeyError(f"{fact!r} is not one of the environment facts {ENV_FACTS}")
    return ENV_TAG_PREFIX + fact


def env_variable_tag(name: str) -> str:
    """The run tag holding the value of the environment variable ``name``."""
    return ENV_VARIABLE_TAG_PREFIX + name


def lockfile_tag(filename: str) -> str:
    """The run tag holding the sha256 of the lock file ``filename``."""
    return f"{LOCKFILE_TAG_PREFIX}{filename}.sha256"


def checkpoint_tag(callback_key: str, field: str) -> str:
    """The run tag holding ``field`` (one of `CHECKPOINT_FIELDS`) of the callback ``callback_key``."""
    return f"{CHECKPOINT_TAG_PREFIX}{callback_key}.{field}"


def parse_checkpoint_tag(tag: str) -> tuple[str, str] | None:
    """``(callback key, field)`` of a checkpoint tag, else None."""
    if not tag.startswith(CHECKPOINT_TAG_PREFIX):
        return None
    key, _, field = tag[len(CHECKPOINT_TAG_PREFIX) :].rpartition(".")
    return (key, field) if key else None
