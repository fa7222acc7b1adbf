"""The environment a run ran in (``run/environment.py``) and how the Trainer ran it, recorded once per run by
global rank 0: gathered on a thread of its own at the stage's setup, queued from the training thread once ready.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lightning_mlflow_ext.run.environment import PACKAGES_ARTIFACT, Environment, gather, recorded_variables
from lightning_mlflow_ext.run.tags import ENV_TAG_PREFIX, env_tag
from lightning_mlflow_ext.trainer.summaries import trainer_settings
from lightning_mlflow_ext.values.redaction import Redactor

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_mlflow_ext.run.session import RunSession

log = logging.getLogger(__name__)

#: How long the end of a stage waits for a gathering still under way (``nvidia-smi`` alone may take 5 s).
END_OF_STAGE_WAIT_S = 10.0


def trainer_tags(trainer: pl.Trainer) -> dict[str, str]:
    """World size, nodes, precision, strategy and accelerator, spelled as the ``trainer/...`` params are."""
    settings = trainer_settings(trainer)
    tags = {env_tag("world_size"): str(trainer.world_size), env_tag("num_nodes"): str(trainer.num_nodes)}
    for fact in ("precision", "strategy", "accelerator"):
        tags[env_tag(fact)] = str(settings[f"trainer/{fact}"])
    return tags


class EnvironmentRecorder:
    """Records what ran a run into each run its logger writes into, once, from global rank 0.

    A run found elsewhere (a resumed fit, a pipeline step) keeps the environment it holds: only the facts it
    lacks are added, and its package list is left as it is.
    """

    def __init__(self, session: RunSession, log_environment: bool | Sequence[str], redactor: Redactor) -> None:
        if isinstance(log_environment, str) or not isinstance(log_environment, (bool, Sequence)):
            raise ValueError(
                f"log_environment must be True, False or a list of environment variable names to record as well, "
                f"got {log_environment!r}"
            )
        extra = () if isinstance(log_environment, bool) else log_environment
        self._session = session
        self._variables = recorded_variables(extra, redactor) if log_environment is not False else None
        self._redactor = redactor
        self._gathered: Environment | None = None
        self._ready: threading.Event | None = None  # set once gathering is done; None until it starts
        self._trainer_tags: dict[str, str] = {}
        self._recorded_run: str | None = None

    def start(self, trainer: pl.Trainer) -> None:
        """A stage is set up on global rank 0, its run resolved: gather (once per process) in the background."""
        if self._variables is None:
            return
        self._trainer_tags = trainer_tags(trainer)
        if self._ready is None:
            ready = self._ready = threading.Event()
            variables = self._variables
            threading.Thread(
                target=self._gather, args=(variables, ready), name="lightning-mlflow-environment", daemon=True
            ).start()

    def _gather(self, variables: tuple[str, ...], ready: threading.Event) -> None:
        try:
            self._gathered = gather(variables, self._redactor)
        except Exception as exc:  # a bug here must not cost the fit anything
            log.warning("Could not gather the environment to record in the MLflow run: %r", exc)
        finally:
            ready.set()

    def record_when_ready(self) -> None:
        """Called at every batch and epoch boundary: records once gathering is done, without waiting for it."""
        ready = self._ready
        if ready is not None and ready.is_set() and self._session.known_run_id != self._recorded_run:
            self._record()

    def record(self, wait: float = END_OF_STAGE_WAIT_S) -> None:
        """At the end of a stage: waits (bounded) for a gathering still under way, then records."""
        ready = self._ready
        if ready is not None and self._session.known_run_id != self._recorded_run and ready.wait(wait):
            self._record()

    def _record(self) -> None:
        run_id = self._session.known_run_id
        self._recorded_run = run_id
        if run_id is None or self._gathered is None:
            return
        held = self._session.initial_tags
        tags = {key: value for key, value in (self._gathered.tags | self._trainer_tags).items() if key not in held}
        self._session.set_tags(tags)
        if not any(key.startswith(ENV_TAG_PREFIX) for key in held):
            self._session.uploader.upload_text(self._gathered.packages, PACKAGES_ARTIFACT)

    # ---- a copy in another process (ddp_spawn): it gathers there, on its own thread ---------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_ready"] = None
        state["_gathered"] = None
        return state
