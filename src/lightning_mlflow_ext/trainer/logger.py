"""MLflowLogger: Lightning's ``Logger`` contract, recorded into one MLflow run.

Metrics, hyperparameters and the run's lifecycle go through a ``RunSession``; nothing here calls MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
import weakref
from argparse import Namespace
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lightning_mlflow_ext.delivery.uploader import snapshot
from lightning_mlflow_ext.delivery.writer import TAIL_POINTS, MetricPoint
from lightning_mlflow_ext.errors import LightningMLflowError
from lightning_mlflow_ext.lineage.fingerprint import Fingerprint
from lightning_mlflow_ext.run.models import BEST_ALIAS, save_best_model
from lightning_mlflow_ext.run.session import PARK_RESERVE_S, FinalStatus, RunSession
from lightning_mlflow_ext.run.tags import (
    CHANGED_PARAMS_TAG,
    EPOCH_AXIS_KEYS_TAG,
    LINEAGE_CHANGED_TAG,
    LINEAGE_PROBLEMS_TAG,
    LINEAGE_TAG,
    MAX_TAG_VALUE,
    MLFLOW_LOGGED_ARTIFACTS,
    MLFLOW_LOGGED_IMAGES,
    PARTIAL_TAG,
    REGISTERED_MODEL_TAG,
    RESUMED_AT_STEP_TAG,
    RESUMED_FROM_RUN_TAG,
    STEP_AXIS_TAG,
)
from lightning_mlflow_ext.run.tracking import local_store_path, resolve_tracking_uri
from lightning_mlflow_ext.trainer.checkpoints import CheckpointMirror
from lightning_mlflow_ext.trainer.coexist import mute_mlflow_autolog_metrics
from lightning_mlflow_ext.trainer.summaries import trainer_callbacks
from lightning_mlflow_ext.values.axes import EPOCH_KEY, StepAxes, StepAxis
from lightning_mlflow_ext.values.hparams import render_hparams, render_value
from lightning_mlflow_ext.values.media import Tables, artifact_path, dict_text, figure_bytes, image_array, write_table
from lightning_mlflow_ext.values.names import NameMapper, truncate_value
from lightning_mlflow_ext.values.redaction import Redactor, RedactPatterns, redact_secrets
from lightning_mlflow_ext.values.urls import strip_url_credentials
from lightning_mlflow_ext.warn_once import WarnOnce

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX_SEPARATOR = "-"  # Lightning's LOGGER_JOIN_CHAR, so prefixed keys match its MLFlowLogger
#: The key under which a Lightning checkpoint records the run it was trained in.
CHECKPOINT_KEY = "lightning_mlflow_ext"
HPARAMS_ARTIFACT = "hparams.json"
#: +-inf become the largest finite doubles: the sign survives every store (a server turns -inf into +max).
FLOAT_MAX = sys.float_info.max


def _is_global_rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


class MLflowLogger(Logger):
    """Records a Lightning training into one MLflow run.

    Example::

        from lightning import Trainer
        from lightning_mlflow_ext import MLflowLogger

        logger = MLflowLogger(experiment_name="cifar", run_name="resnet18-lr3e-4")
        trainer = Trainer(logger=logger, max_epochs=3)
        trainer.fit(model, datamodule)
        print(logger.run_id)

    Takes the arguments of Lightning's ``MLFlowLogger``, so migrating is an import change.

    Args:
        experiment_name: experiment of a new run; default ``MLFLOW_EXPERIMENT_NAME``, else ``"lightning_logs"``.
        run_name: name of the run; applied to an existing run too when attaching.
        tracking_uri: where to track; default MLflow's own choice (``mlflow.set_tracking_uri``,
            ``MLFLOW_TRACKING_URI``, else the embedded SQLite store ``./mlflow.db``), resolved now.
        tags: tags set on the run (values rendered as text, secret-looking values redacted).
        save_dir: local folder for this logger's files (checkpoints go to ``save_dir/name/version``);
            default the folder of a ``file:`` store, else the working directory.
        log_model: Lightning's modes: ``True`` uploads the checkpoints of every ``ModelCheckpoint`` at the end
            of training (and every one as it is saved when ``save_top_k=-1``), ``"all"`` uploads each as it is
            saved, ``False`` none. Uploads run in the background, under ``checkpoints/<callback key>/``.
        prefix: put in front of every metric key, joined with ``-``.
        artifact_location: artifact root of a newly created experiment.
        run_id: log into this existing run. An unknown id is an error, never a new run.
        synchronous: ``True`` sends every write before returning (debugging); default: in the background.
        parent_run_id: create the run nested under this run.
        step_axis: ``"epoch"`` records epoch-level metrics at step = epoch; ``"global_step"`` is Lightning's way.
        server_wait: seconds to wait for an HTTP tracking server before failing with a clear error.
        log_best_model: at the end of a successful fit, the best checkpoint's model as an MLflow Model of this
            run (in its experiment), with the checkpoint, step and metrics recorded on it.
        registered_model_name: also register that model under this name, with the alias ``best``.
        flush_timeout: seconds the end of each stage waits for the store to take every queued write; what it
            has not taken by then stays in the journal under ``save_dir`` (``lightning-mlflow sync``).
        end_run: who ends the run when the work succeeds. ``None``: the runs this logger owns (created, reopened,
            resumed from their own checkpoint). ``True``: the run, whoever opened it (the last step of a
            pipeline). ``False``: nobody, it stays RUNNING for the next step (the first step of a pipeline).
            A failure ends the run FAILED (KILLED on Ctrl-C / SIGTERM) either way, except a user's own active run.
        redact: your own patterns for hyperparameter and tag keys whose values are recorded as ``[redacted]``,
            on top of the built-in ones (password, token, api_key, ...): words matched as whole segments of
            the key (``"wandb_key"``) or regular expressions (``r"^internal/"``); see ``redaction.Redactor``.
            A pattern that cannot work raises ValueError here, before any run is touched.

    Run resolution, first that applies: ``run_id`` -> ``mlflow.active_run()`` -> ``MLFLOW_RUN_ID`` -> the run a
    checkpoint being resumed (``fit(ckpt_path=...)``, SLURM requeue) was trained in -> a new run. The logger
    ends the runs it owns: FINISHED on success, FAILED on an exception, KILLED on Ctrl-C / SIGTERM. A run
    found RUNNING (a ``with mlflow.start_run()`` block, a pipeline step) is left open on success.
    """

    def __init__(
        self,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        save_dir: str | os.PathLike[str] | None = None,
        log_model: bool | Literal["all"] = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
        *,
        parent_run_id: str | None = None,
        step_axis: StepAxis = "epoch",
        server_wait: float = 30.0,
        flush_timeout: float = 60.0,
        log_best_model: bool = False,
        registered_model_name: str | None = None,
        end_run: bool | None = None,
        redact: RedactPatterns | None = None,
    ) -> None:
        super().__init__()
        if log_model not in (True, False, "all"):
            raise ValueError(f"log_model must be True, False or 'all', got {log_model!r}")
        self._redactor = Redactor.of(redact)
        uri = resolve_tracking_uri(tracking_uri)
        self._tag_names = NameMapper()
        run_tags = redact_secrets(
            {
                self._tag_names.map(str(key)): truncate_value(
                    strip_url_credentials(render_value(value)), MAX_TAG_VALUE
                )[0]
                for key, value in (tags or {}).items()
            },
            self._redactor,
        )
        self._save_dir = os.path.abspath(save_dir or local_store_path(uri) or os.getcwd())
        self._session = RunSession(
            uri,
            experiment_name=experiment_name,
            run_name=run_name,
            run_id=run_id,
            parent_run_id=parent_run_id,
            tags=run_tags,
            artifact_location=artifact_location,
            synchronous=bool(synchronous),
            server_wait=server_wait,
            save_dir=self._save_dir,
            flush_timeout=flush_timeout,
            may_create=_is_global_rank_zero,
            end_run=end_run,
        )
        self._log_model = log_model
        self._log_best_model = log_best_model or registered_model_name is not None
        self._registered_model_name = registered_model_name
        self._prefix = prefix
        self._axes = StepAxes(step_axis)
        self._metric_names = NameMapper()
        self._param_names = NameMapper()
        self._warn_once = WarnOnce(log)
        self._mirror: CheckpointMirror | None = None
        self._trainer: pl.Trainer | None = None
        self._at_epoch_end = False
        self._epoch_axis_allowed = True
        self._interrupted = False
        self._images_tagged = False
        self._tables: Tables | None = None  # what log_table wrote, per file (MLflow appends rows)
        self._axis_tags_sent: tuple[str, ...] | None = None
        self._auto_steps: dict[str, int] = {}
        self._changed_params: dict[str, str] = {}
        self._fit_ended = False
        self._axes_seeded = False
        self._dataset_digests: dict[str, str] = {}
        self._resume_floor: dict[str, int] = {}  # key -> last step the run held when this fit resumed
        self._unpickled = False  # a copy in another process (ddp_spawn): the run may hold points it never saw
        self._driven_by_lightning = False  # a Trainer called log_graph: it runs a stage with this logger
        self._fitted_module: weakref.ReferenceType[pl.LightningModule] | None = None
        self._last_train_step: int | None = None  # the step a running fit is expected to end at, when known
        self._step_axis_names: dict[str, str] = {}  # logged key -> name, for keys recorded at the logged step
        self._epoch_name: str | None = None  # the name Lightning's `epoch` key is recorded under, once seen

    # ---- identity -------------------------------------------------------------------------

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        """The ``MlflowClient`` of this logger's tracking store. Touching it does not create the run."""
        return self._session.client

    @property
    @override
    def name(self) -> str:
        """The name of the run's experiment."""
        return self._session.experiment_name

    @property
    @override
    def version(self) -> str:
        """The run id."""
        return self._session.run_id

    @property
    def run_id(self) -> str:
        return self._session.run_id

    @property
    def experiment_id(self) -> str:
        return self._session.experiment_id

    @property
    def tracking_uri(self) -> str:
        return self._session.tracking_uri

    @property
    @override
    def save_dir(self) -> str:
        os.makedirs(self._save_dir, exist_ok=True)
        return self._save_dir

    @property
    @override
    def root_dir(self) -> str:
        return os.path.join(self._save_dir, self.name)

    @property
    @override
    def log_dir(self) -> str:
        """``save_dir/<experiment name>/<run id>``, the folder Lightning's ModelCheckpoint also uses; created."""
        path = os.path.join(self._save_dir, self.name, self.version)
        os.makedirs(path, exist_ok=True)
        return path

    @property
    def owns_run(self) -> bool:
        """True when this logger ends the run (it created it, or reopened a run that had ended)."""
        return self._session.owns_run

    @property
    def step_axis(self) -> StepAxis:
        return self._axes.step_axis

    # ---- metrics ----------------------------------------------------------------------------

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        # This runs on the training thread for every logging step: keys already known to be recorded at the
        # step they are logged with (most of them) take a dict lookup, and finite floats skip any conversion.
        timestamp = int(time.time() * 1000)
        at_step = None if step is None else int(step)
        known = self._step_axis_names
        epoch_name = self._epoch_name
        floor = self._resume_floor
        points: list[MetricPoint] = []
        for key, raw in metrics.items():
            name = None if at_step is None else known.get(key)
            if name is None and epoch_name and at_step is not None and key == EPOCH_KEY and type(raw) is int:
                # Lightning adds the current epoch to every call: one point a step.
                if self._axes.keep_epoch_point(at_step) and not (floor and at_step <= floor.get(epoch_name, -1)):
                    points.append((epoch_name, float(raw), timestamp, at_step))
                continue
            value = raw if type(raw) is float and raw - raw == 0.0 else self._metric_value(key, raw)
            if value is None:
                continue
            if name is not None and at_step is not None:
                if not floor or at_step > floor.get(name, -1):
                    points.append((name, value, timestamp, at_step))
                continue
            point = self._first_time_point(key, value, timestamp, at_step)
            if point is not None and not (floor and point[3] <= floor.get(point[0], -1)):
                points.append(point)  # (a resumed fit replays steps the run already holds: the first point stays)
        if points:
            last = self._last_train_step
            if last is not None and at_step is not None and (left := (last - at_step) * len(points)) <= TAIL_POINTS:
                self._session.stage_ends_soon(left)
            self._session.log_metrics(points)

    def _first_time_point(self, logged: str, value: float, timestamp: int, step: int | None) -> MetricPoint | None:
        """The point for a key not (yet) known to stay on the logged step: name it, choose its axis."""
        key = logged
        is_epoch = key == EPOCH_KEY
        if self._prefix:
            key = f"{self._prefix}{PREFIX_SEPARATOR}{key}"
        name = self._metric_names.map(key)
        if name != key:
            self._warn_once(key, f"Metric {key!r} is not a valid MLflow name; it is recorded as {name!r}.")
        point_step = step if step is not None else self._step(name, None)
        if is_epoch:
            self._epoch_name = name
            if not self._axes.keep_epoch_point(point_step):
                return None
        else:
            trainer = self._trainer
            point_step = self._axes.step_for(
                name,
                epoch_level=self._at_epoch_end and self._epoch_axis_allowed,
                epoch=trainer.current_epoch if trainer is not None else None,
                step=point_step,
            )
            if step is not None and self._axes.on_step_axis(name):
                self._step_axis_names[logged] = name
        return (name, value, timestamp, point_step)

    def _step(self, key: str, step: int | None) -> int:
        if step is not None:
            return int(step)
        # step=None is not step 0: the trainer's global step, else one past this key's last point.
        if self._trainer is not None:
            return int(self._trainer.global_step)
        nxt = self._auto_steps.get(key, 0)
        self._auto_steps[key] = nxt + 1
        return nxt

    def _metric_value(self, key: str, raw: Any) -> float | None:
        value = raw
        if hasattr(value, "item") and callable(value.item):
            with contextlib.suppress(ValueError, RuntimeError):  # a tensor or array with several elements
                value = value.item()
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, (int, float)):
            self._warn_once(
                f"type:{key}",
                f"Metric {key!r} has a non-numeric value of type {type(raw).__name__}; it is not logged.",
            )
            return None
        value = float(value)
        if math.isinf(value):
            self._warn_once(
                f"inf:{key}",
                f"Metric {key!r} is {value}; it is recorded as {'-' if value < 0 else ''}{FLOAT_MAX:.4g} "
                "(the largest finite value), which every MLflow store keeps with its sign.",
            )
            return math.copysign(FLOAT_MAX, value)
        return value

    # ---- hyperparameters ----------------------------------------------------------------------

    @override
    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace | Any, *args: Any, **kwargs: Any) -> None:
        rendered = render_hparams(params, self._redactor)
        if not rendered:
            return
        logged = self._session.logged_params()
        new: dict[str, str] = {}
        changed: dict[str, str] = {}
        truncated: list[str] = []
        for key, text in rendered.items():
            name = self._param_names.map(key)
            value, cut = truncate_value(text, note=f", full value in {HPARAMS_ARTIFACT}")
            if cut:
                truncated.append(name)
            if name not in logged:
                new[name] = value
            elif logged[name] != value:
                changed[name] = value
        self._session.log_params(new)
        if changed:
            self._record_changed_params(changed)
        if truncated:
            self._warn_once(
                "truncated:" + ",".join(truncated),
                f"Hyperparameters {truncated} are longer than MLflow's 6000-character limit; the params hold "
                f"their start and the full values are in the artifact {HPARAMS_ARTIFACT}.",
            )
            # In the background like every other artifact: the training thread never waits on an upload.
            self._session.uploader.upload_text(json.dumps(rendered, indent=2, sort_keys=True), HPARAMS_ARTIFACT)

    def _record_changed_params(self, changed: dict[str, str]) -> None:
        # MLflow params are write-once. The first value stays; the new ones are kept in a tag, and the fit goes on.
        self._changed_params.update(changed)
        text = json.dumps(self._changed_params, sort_keys=True)
        self._session.set_tags({CHANGED_PARAMS_TAG: truncate_value(text, MAX_TAG_VALUE)[0]})
        self._warn_once(
            "changed:" + ",".join(sorted(changed)),
            f"Hyperparameters {sorted(changed)} differ from the values this run already holds; MLflow keeps the "
            f"first value of a param, so the new values are recorded in the tag {CHANGED_PARAMS_TAG!r}.",
        )

    # ---- lifecycle ----------------------------------------------------------------------------

    # ---- data lineage -------------------------------------------------------------------------

    def log_datasets(self, splits: Mapping[str, str | os.PathLike[str] | Fingerprint]) -> dict[str, Fingerprint]:
        """Record ``{"train": path, ...}`` as the run's dataset inputs (git/DVC sources); rank 0 only."""
        if not _is_global_rank_zero():
            return {}
        fingerprints = self._session.log_datasets(splits)
        self._dataset_digests.update({split: fp.digest for split, fp in fingerprints.items()})
        return fingerprints

    @rank_zero_only
    def set_lineage_tags(self, state: str, problems: list[str]) -> None:
        """``lightning_mlflow_ext.lineage`` = reproducible | incomplete, and what is missing."""
        tags = {LINEAGE_TAG: state}
        if problems:
            tags[LINEAGE_PROBLEMS_TAG] = truncate_value("; ".join(problems), MAX_TAG_VALUE)[0]
        self._session.set_tags(tags)

    @rank_zero_only
    def record_resumed_on_changed_data(self, changed: dict[str, tuple[str, str]]) -> None:
        """Tag a run whose fit resumed from a checkpoint trained on other data: split -> [then, now]."""
        text = json.dumps({split: list(pair) for split, pair in changed.items()}, sort_keys=True)
        self._session.set_tags({LINEAGE_CHANGED_TAG: truncate_value(text, MAX_TAG_VALUE)[0]})

    # ---- figures and media (uploaded in the background; names are checked here) ------------------

    @rank_zero_only
    def log_figure(self, figure: Any, key: str, step: int | None = None, *, close: bool = True) -> None:
        """A matplotlib or plotly figure, at ``figures/<key>.png`` or, with a step, ``figures/<key>/step_<n>.png``.

        The figure is rendered now and (``close=True``) closed, so thousands of calls leak nothing.
        """
        artifact_path(key, what="figure key")
        data, suffix = figure_bytes(figure, close=close)
        name = f"figures/{key}{suffix}" if step is None else f"figures/{key}/step_{int(step):06d}{suffix}"
        self._session.uploader.upload_bytes(data, name)

    @rank_zero_only
    def log_image(self, image: Any, key: str, step: int | None = None) -> None:
        """A numpy array, PIL image or tensor: with a step, MLflow's step-keyed images; else ``images/<key>.png``."""
        artifact_path(key, what="image key")
        pixels = image_array(image)
        if step is None:
            self._session.uploader.log_image(pixels, None, None, f"images/{key}.png")
        else:
            self._session.uploader.log_image(pixels, key, int(step), None)
            if not self._images_tagged:  # what MLflow's UI looks for to show the run's image grid
                self._session.set_tags({MLFLOW_LOGGED_IMAGES: "True"})
                self._images_tagged = True

    @rank_zero_only
    def log_table(self, data: Any, artifact_file: str) -> None:
        """A dict of columns or a pandas DataFrame, as MLflow's table ``artifact_file`` (.json or .parquet);
        logged again to the same file, the rows are appended, as ``mlflow.log_table`` does."""
        name = artifact_path(artifact_file, what="table")
        if self._tables is None:
            self._tables = Tables(self._session.initial_tags.get(MLFLOW_LOGGED_ARTIFACTS))
        frame, listed = self._tables.add(data, name)
        self._session.uploader.log_table(lambda path: write_table(frame, path), name)
        if listed is not None:
            self._session.set_tags({MLFLOW_LOGGED_ARTIFACTS: listed})

    @rank_zero_only
    def log_text(self, text: str, artifact_file: str) -> None:
        self._session.uploader.upload_text(str(text), artifact_path(artifact_file, what="text"))

    @rank_zero_only
    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """As JSON, or YAML when ``artifact_file`` ends in .yaml/.yml."""
        name = artifact_path(artifact_file, what="dict")
        self._session.uploader.upload_text(dict_text(data, name), name)

    @rank_zero_only
    def log_artifact(self, local_path: str | os.PathLike[str], artifact_dir: str | None = None) -> None:
        """A local file, snapshotted now (so it may change or go away), uploaded into ``artifact_dir``."""
        folder = None if artifact_dir is None else artifact_path(artifact_dir, what="artifact folder")
        self._session.uploader.upload_snapshot(snapshot(local_path, self._session.uploader.staging), folder)

    @override
    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._mirror_checkpoints([checkpoint_callback])

    def _mirror_checkpoints(self, callbacks: list[ModelCheckpoint]) -> None:
        if self._mirror is None:
            self._mirror = CheckpointMirror(self._session.uploader, self._session.set_tags)
        trainer = self._trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        step = trainer.global_step if trainer is not None else 0
        for callback in callbacks:
            self._mirror.sync(callback, epoch, step, dataset_digests=dict(self._dataset_digests))

    @property
    def redactor(self) -> Redactor:
        """Which keys' values this logger records as redacted: the built-in words plus ``redact=``."""
        return self._redactor

    @override
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        # Lightning calls this at the start of every stage (after setup): proof that a Trainer drives the logger.
        self._driven_by_lightning = True

    @override
    def save(self) -> None:
        # Lightning calls this after every log_metrics call; the writer sends in the background.
        pass

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every queued write and upload is done; return how many points or uploads did not land."""
        report = self._session.flush(timeout)
        uploads = self._session.uploader.flush(timeout) if self._session.has_uploader else None
        failed_uploads = len(uploads.failed) + uploads.pending if uploads is not None else 0
        return report.rejected + report.pending + failed_uploads

    @override
    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        self._expect_last_train_step(None)  # also when the fit failed before on_train_end
        if not self._session.resolved:
            return
        if self._trainer is None and self._driven_by_lightning:
            # Lightning ran a stage with this logger, but the bridge's setup never handed it the Trainer.
            self._warn_once(
                "no-bridge",
                "MLflowLogger never saw the Trainer: Lightning did not load this package's callbacks_factory "
                "entry point (is lightning-mlflow-ext pip-installed?). Epoch-level metrics were recorded at the "
                "global step; add lightning_mlflow_ext.trainer.bridge.MLflowTrainerBridge() to the Trainer's "
                "callbacks.",
            )
        elif self._trainer is not None and self._trainer.state.fn == "fit":
            self._fit_ended = True
            self._resume_floor = {}
        if self._axes.repeated:
            self._warn_once(
                "repeated:" + ",".join(sorted(self._axes.repeated)),
                f"Metrics {sorted(self._axes.repeated)} got a second point at an epoch they already had (validate() "
                "or test() run again at the same epoch); MLflow keeps both, in time order. "
                "step_axis='global_step' records them at the global step instead.",
            )
        self._send_axis_tags()
        final: FinalStatus
        if status in ("success", "finished"):
            final = "FINISHED"
        elif self._interrupted:
            final = "KILLED"
        else:
            final = "FAILED"
        self._finish_checkpoints(final)
        if final == "FINISHED" and self._log_best_model:
            self._record_best_model()
        deadline = time.monotonic() + self._session.flush_timeout  # the end of a stage waits this long at most
        self._wait_for_uploads(deadline)
        report = self._session.end(final, max(deadline - time.monotonic(), PARK_RESERVE_S))
        message = report.undelivered_message(self._session.run_id)
        if message:
            log.warning(message)
        if report.rejected:
            log.warning(
                "MLflow run %s: the store refused %d writes: %s",
                self._session.run_id,
                report.rejected,
                "; ".join(report.errors[:3]),
            )
        self._interrupted = False

    def _finish_checkpoints(self, final: FinalStatus) -> None:
        """Upload what the checkpoint callbacks hold now (log_model=True), and wait for every upload."""
        trainer = self._trainer
        if not self._log_model or trainer is None or trainer.state.fn != "fit":
            return
        self._mirror_checkpoints([cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)])
        if final != "FINISHED":
            self._session.set_tags({PARTIAL_TAG: "true"})  # a failed fit: what was saved, not a full set

    def _record_best_model(self) -> None:
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return
        best = next(
            (cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.best_model_path),
            None,
        )
        if best is None:
            self._warn_once("no-best", "log_best_model: no ModelCheckpoint saved a checkpoint; no model logged.")
            return
        try:
            module = type(trainer.lightning_module).load_from_checkpoint(best.best_model_path, map_location="cpu")
            metrics = {
                k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1
            }
            # The checkpoint in the run when checkpoints are uploaded (log_model), else the local file it came from.
            checkpoint = (
                f"checkpoints/{self._mirror.key_for(best)}/{os.path.basename(best.best_model_path)}"
                if self._mirror is not None
                else Path(os.path.abspath(best.best_model_path)).as_uri()
            )
            folder = self._session.uploader.model_folder()
            details = save_best_model(
                module,
                folder,
                experiment_id=self._session.experiment_id,
                checkpoint_artifact=checkpoint,
                step=trainer.global_step,
                metrics=metrics,
                registered_model_name=self._registered_model_name,
            )
        except Exception as exc:  # the fit succeeded; a model that could not be saved must not undo that
            log.warning("Could not save the best checkpoint %s as an MLflow Model: %s", best.best_model_path, exc)
            return
        # Logged and registered in the background, like every write; the model's id reaches the run's tags then.
        self._session.uploader.log_model(folder, details)
        if self._registered_model_name:
            self._session.set_tags({REGISTERED_MODEL_TAG: f"{self._registered_model_name}@{BEST_ALIAS}"})

    def _wait_for_uploads(self, deadline: float) -> None:
        if not self._session.has_uploader:
            return
        # Uploads get most of the wait, never all of it: the run's final status must still be sent.
        report = self._session.uploader.flush(max((deadline - time.monotonic()) * 0.8, 0.0))
        if report.failed or report.pending:
            log.warning(
                "MLflow run %s: %d uploads failed and %d are still running: %s",
                self._session.run_id,
                len(report.failed),
                report.pending,
                "; ".join(report.failed[:3]),
            )

    def _send_axis_tags(self) -> None:
        keys = tuple(self._axes.epoch_keys)
        if keys == self._axis_tags_sent:
            return
        self._axis_tags_sent = keys
        tags: dict[str, str] = {STEP_AXIS_TAG: self._axes.step_axis}
        if keys:
            tags[EPOCH_AXIS_KEYS_TAG] = truncate_value(",".join(keys), MAX_TAG_VALUE)[0]
        self._session.set_tags(tags)

    # ---- without a Trainer (a pipeline step that does not train) --------------------------------

    def __enter__(self) -> MLflowLogger:
        """``with MLflowLogger(...) as logger:`` records into the run and ends the block the way a fit ends:
        the run's status follows the block (an exception: FAILED, Ctrl-C: KILLED), ``end_run`` applies."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self._note_exception(exc)
        self.finalize("success" if exc is None else "failed")

    # ---- called by the bridge callback (lightning_mlflow_ext.trainer.bridge) ----------------------------

    def _bind_trainer(self, trainer: pl.Trainer) -> None:
        self._trainer = trainer
        self._at_epoch_end = False
        if trainer.state.fn == "fit" and self._fit_ended and trainer.ckpt_path is None:
            # A new fit from scratch, or of another model (a notebook cell fixed and the fit cell run again on
            # the same Trainer); the same model fitted further on the same Trainer continues the run.
            module = trainer.lightning_module
            if trainer.global_step == 0 or self._fitted_module is None or self._fitted_module() is not module:
                self._start_over()
        if trainer.state.fn == "fit":
            self._fitted_module = weakref.ref(trainer.lightning_module)
        self._mute_mlflow_autolog(trainer)
        # Rank 0 resolves the run; every other rank takes its identity instead of resolving on its own.
        self._session.adopt(self._from_rank_zero(trainer, lambda: self._session.identity), replace=True)
        if trainer.global_rank == 0:
            self._begin_stage(trainer)

    def _mute_mlflow_autolog(self, trainer: pl.Trainer) -> None:
        muted = mute_mlflow_autolog_metrics(trainer_callbacks(trainer))
        if muted is None:
            return
        self._warn_once(
            "mlflow-autolog",
            "mlflow.pytorch.autolog() is on as well: lightning_mlflow_ext records the metrics (once per key and "
            "step) and MLflow's autolog callback no longer does for this Trainer"
            + ("." if muted else ", but it could not be muted: its points may be stored twice.")
            + " Call mlflow.pytorch.autolog(disable=True) to record with lightning_mlflow_ext alone.",
        )

    def _begin_stage(self, trainer: pl.Trainer) -> None:
        self._session.ensure_running()
        if self._unpickled:
            # A ddp_spawn worker starts from the trainer state of the main process (global step 0 for a test()
            # after a spawned fit): what the run holds at the steps it replays is not sent again.
            self._unpickled = False
            self._resume_floor = self._from_store(self._session.metric_steps, {})
        if trainer.state.fn == "fit":
            self._session.begin_fit()
        self._seed_axes()
        self._send_axis_tags()

    def _from_rank_zero(self, trainer: pl.Trainer, compute: Callable[[], T]) -> T:
        """``compute()`` on global rank 0, its result handed to every rank. When it fails there, every rank
        raises (rank 0 the error itself) instead of the others waiting for rank 0 in the next collective."""
        outcome: tuple[bool, Any] = (True, None)
        error: Exception | None = None
        if trainer.global_rank == 0:
            try:
                outcome = (True, compute())
            except Exception as exc:
                error, outcome = exc, (False, f"{type(exc).__name__}: {exc}")
        if trainer.world_size > 1:
            outcome = trainer.strategy.broadcast(outcome, src=0)
        if error is not None:
            raise error
        ok, value = outcome
        if not ok:
            raise LightningMLflowError(f"Global rank 0 could not set up the MLflow run: {value}")
        return value  # type: ignore[no-any-return]

    def _checkpoint_info(self) -> dict[str, str] | None:
        """What a Lightning checkpoint records about the run (written by the bridge's on_save_checkpoint)."""
        if not self._session.resolved:
            return None
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": self.tracking_uri}

    def _resume_from(self, trainer: pl.Trainer, info: Mapping[str, Any], global_step: int) -> None:
        """A fit restores a checkpoint: continue the run it was trained in, from the step it was saved at."""
        if trainer.state.fn != "fit":
            return
        before = self._session.identity if self._session.resolved else None
        run_id = info.get("run_id")

        def resume() -> tuple[str, str, str]:
            if isinstance(run_id, str):
                self._session.resume_from_checkpoint(run_id)  # looked up in this logger's store
            return self._session.identity

        identity = self._from_rank_zero(trainer, resume)
        self._session.adopt(identity, replace=True)
        if before is not None and before[0] != identity[0]:
            self._move_checkpoint_folders(trainer, before)
            self._forget_run_state()
        if trainer.global_rank != 0:
            return
        self._begin_stage(trainer)
        self._resume_floor = self._from_store(self._session.metric_steps, {})
        tags = {RESUMED_AT_STEP_TAG: str(global_step)}
        if isinstance(run_id, str) and run_id != identity[0]:
            tags[RESUMED_FROM_RUN_TAG] = run_id
        self._session.set_tags(tags)

    def _from_store(self, read: Callable[[], T], fallback: T) -> T:
        try:
            return read()
        except Exception as exc:  # the store is down: training goes on, the journal keeps what is sent
            log.warning("Could not read the MLflow run %s back (%s); resuming without it.", self._session.run_id, exc)
            return fallback

    def _move_checkpoint_folders(self, trainer: pl.Trainer, before: tuple[str, str, str]) -> None:
        """ModelCheckpoint chose its folder from the run created before the checkpoint was read: use the folder
        of the run being continued (where its top-k already are)."""
        old = os.path.join(self._save_dir, before[2], before[0])
        new = os.path.join(self._save_dir, self.name, self.version)
        for callback in [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]:
            dirpath = callback.dirpath
            if dirpath is not None and os.path.realpath(dirpath) == os.path.realpath(os.path.join(old, "checkpoints")):
                callback.dirpath = os.path.join(new, "checkpoints")
        with contextlib.suppress(OSError):
            os.rmdir(old)  # only if empty

    def _start_over(self) -> None:
        """A fresh fit after a finished one: a new run if this logger created the last one, else one warning."""
        self._fit_ended = False
        if self._session.origin == "created":
            self._session.start_new_run()
            self._forget_run_state()
        else:
            self._warn_once(
                "refit",
                f"A new fit from step 0 logs into run {self._session.run_id}, which already holds a fit: points at "
                "the same steps are stored twice. Create a new MLflowLogger (or end the run) for a separate run.",
            )

    def _forget_run_state(self) -> None:
        """What this logger knew of a run it no longer writes into (axes read from its tags, changed params)."""
        self._axes.reset()
        self._step_axis_names = {}
        self._epoch_name = None
        self._axes_seeded = False
        self._axis_tags_sent = None
        self._changed_params = {}
        self._tables = None
        self._images_tagged = False

    def _seed_axes(self) -> None:
        if not self._axes_seeded:
            self._axes_seeded = True
            keys = self._session.initial_tags.get(EPOCH_AXIS_KEYS_TAG, "")
            self._axes.seed([key for key in keys.split(",") if key])

    def _expect_last_train_step(self, step: int | None) -> None:
        """The global step this fit's training ends at (None: unknown, or training is over)."""
        self._last_train_step = step

    def _set_epoch_end(self, at_epoch_end: bool, *, epoch_axis_allowed: bool = True) -> None:
        self._at_epoch_end = at_epoch_end
        self._epoch_axis_allowed = epoch_axis_allowed

    def _note_exception(self, exception: BaseException) -> None:
        self._interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))

    # ---- helpers ------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_trainer"] = None  # the trainer holds this logger; it binds again at setup
        state["_mirror"] = None
        state["_fitted_module"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._unpickled = True
