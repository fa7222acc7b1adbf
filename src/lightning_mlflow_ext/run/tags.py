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
    "CHECKPOINT_FIELDS",
    "CHECKPOINT_TAG_PREFIX",
    "EPOCH_AXIS_KEYS_TAG",
    "GIT_TAG_PREFIX",
    "HEARTBEAT_TAG",
    "LINEAGE_CHANGED_TAG",
    "LINEAGE_PROBLEMS_TAG",
    "LINEAGE_TAG",
    "MAX_TAG_VALUE",
    "MLFLOW_LOGGED_ARTIFACTS",
    "MLFLOW_LOGGED_IMAGES",
    "MLFLOW_PARENT_RUN_ID",
    "MLFLOW_RUN_NAME",
    "MODEL_CHECKPOINT_TAG",
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
    "TAG_PREFIX",
    "checkpoint_tag",
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
BEST_MODEL_ID_TAG = TAG_PREFIX + "best_model_id"
REGISTERED_MODEL_TAG = TAG_PREFIX + "registered_model"
#: On a logged model: the checkpoint artifact it was built from, and the global step of that checkpoint.
MODEL_CHECKPOINT_TAG = TAG_PREFIX + "checkpoint"
MODEL_STEP_TAG = TAG_PREFIX + "step"
#: On a logged model: how its module is stored (``mlflow.pytorch``'s ``serialization_format``: ``pickle``).
MODEL_SERIALIZATION_TAG = TAG_PREFIX + "serialization_format"


def checkpoint_tag(callback_key: str, field: str) -> str:
    """The run tag holding ``field`` (one of `CHECKPOINT_FIELDS`) of the callback ``callback_key``."""
    return f"{CHECKPOINT_TAG_PREFIX}{callback_key}.{field}"


def parse_checkpoint_tag(tag: str) -> tuple[str, str] | None:
    """``(callback key, field)`` of a checkpoint tag, else None."""
    if not tag.startswith(CHECKPOINT_TAG_PREFIX):
        return None
    key, _, field = tag[len(CHECKPOINT_TAG_PREFIX) :].rpartition(".")
    return (key, field) if key else None
