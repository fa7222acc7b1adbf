"""MLflowLogger: Lightning's ``Logger`` contract, recorded into one MLflow run.

A facade: each part of the work is a module of its own under ``trainer/`` (``metrics``, ``hyperparams``,
``media``, ``checkpoint_uploads``, ``best_model``, ``resume``, ``distributed``, ``stages``); the bridge callback
talks to it through ``protocol.TrainerHooks``. Everything goes through a ``RunSession``; nothing calls MLflow.
"""

from __future__ import annotations

import logging
import os
from argparse import Namespace
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers.logger import Logger
from typing_extensions import override

from lightning_mlflow_ext.lineage.fingerprint import Fingerprint
from lightning_mlflow_ext.run.models import save_trained_model
from lightning_mlflow_ext.run.session import RunSession
from lightning_mlflow_ext.run.tracking import local_store_path, resolve_tracking_uri
from lightning_mlflow_ext.trainer.best_model import BestModelExport
from lightning_mlflow_ext.trainer.checkpoint_policy import CheckpointUploadPolicy
from lightning_mlflow_ext.trainer.checkpoint_uploads import CheckpointUploads
from lightning_mlflow_ext.trainer.compat_writes import CompatWrites
from lightning_mlflow_ext.trainer.distributed import is_global_rank_zero
from lightning_mlflow_ext.trainer.environment import EnvironmentRecorder
from lightning_mlflow_ext.trainer.failures import FailureForensics
from lightning_mlflow_ext.trainer.fit_summary import STATE_KEY, FitMoment, FitSummary
from lightning_mlflow_ext.trainer.hyperparams import HyperparamRecorder, changed_data_tags, lineage_tags, run_tags
from lightning_mlflow_ext.trainer.media import MediaRecorder
from lightning_mlflow_ext.trainer.metrics import MetricPipeline
from lightning_mlflow_ext.trainer.namespaces import FollowsNamespace
from lightning_mlflow_ext.trainer.norms import NormRecorder, NormsOption
from lightning_mlflow_ext.trainer.protocol import CHECKPOINT_KEY
from lightning_mlflow_ext.trainer.resume import RunContinuity
from lightning_mlflow_ext.trainer.run_notice import RunLinks
from lightning_mlflow_ext.trainer.saved_config import SavedConfig
from lightning_mlflow_ext.trainer.stages import NO_BRIDGE_WARNING, end_stage, final_status, mute_mlflow_autolog
from lightning_mlflow_ext.trainer.sweep_trial import TrialRecorder, sweep_trial
from lightning_mlflow_ext.values.axes import StepAxis
from lightning_mlflow_ext.values.redaction import Redactor, RedactPatterns
from lightning_mlflow_ext.warn_once import WarnOnce

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from mlflow import MlflowClient

__all__ = ["CHECKPOINT_KEY", "DEFAULT_SAVE_DIR", "MLflowLogger"]

#: ``save_dir`` unless one is given (or the store is a ``file:`` folder), under the working directory. Not the
#: working directory itself: Lightning's SaveConfigCallback writes config.yaml into ``save_dir``, and refuses to
#: start when one is there (the user's own --config file, in the working directory).
DEFAULT_SAVE_DIR = "lightning_logs"

log = logging.getLogger(__name__)


class MLflowLogger(FollowsNamespace, Logger):
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
        save_dir: local folder for this logger's files: each run's folder ``save_dir/<experiment>/<run id>``
            (``log_dir``: checkpoints, the CLI's config.yaml), the journal, staged uploads; default the folder of
            a ``file:`` store, else ``./lightning_logs``. Lightning's ``Trainer.log_dir`` is this folder: a
            config file Lightning's ``SaveConfigCallback`` writes there is moved into the run's folder and
            recorded as the run's artifact, so the next run in the same folder starts as well.
        log_model: Lightning's modes: ``True`` uploads the checkpoints of every ``ModelCheckpoint`` at the end
            of training (and every one as it is saved when ``save_top_k=-1``), ``"all"`` uploads each as it is
            saved, ``False`` none. Uploads run in the background, under ``checkpoints/<callback key>/``.
        log_model_options: a budget for those uploads, a ``CheckpointUploadPolicy`` (or a dict of its fields):
            weights-only copies, a size limit, glob patterns left out, local copies removed once stored.
        log_norms: ``"grad"``, ``"weights"`` or ``"all"``: L2 norms as the metrics ``grad_norm/total`` and
            ``weight_norm/total``, at the Trainer's ``log_every_n_steps``, read just before each optimizer step
            (gradients unscaled under AMP, not yet clipped); global rank 0. ``False``: none.
        norms_per_layer: with ``log_norms``, each parameter's norm too (``grad_norm/<parameter name>``).
        log_checkpoint_models: each uploaded checkpoint is also a logged model of the run (MLflow 3), with the
            metrics of its epoch linked to it (each on its split's dataset input), so the run's Logged models
            tab lists checkpoints with their scores and ``search_logged_models(order_by=metrics.val_loss)``
            ranks them; a pruned checkpoint's model is deleted. The checkpoint is stored twice (run and model):
            ``False`` keeps it a plain artifact only. An MLflow 2.x server gets plain artifacts, with one warning.
        prefix: put in front of every metric key, joined with ``-``.
        artifact_location: artifact root of a newly created experiment.
        run_id: log into this existing run. An unknown id is an error, never a new run.
        synchronous: ``True`` sends every write before returning (debugging); default: in the background.
        parent_run_id: log into a new run nested under this run (a trial of your own sweep), also when it is the
            active run or ``MLFLOW_RUN_ID``'s: that run is the parent, never the run logged into, and is left as
            it was. The new run goes into the parent's experiment unless ``experiment_name`` is given.
        step_axis: ``"epoch"`` records epoch-level metrics at step = epoch; ``"global_step"`` is Lightning's way.
        server_wait: seconds to wait for an HTTP tracking server before failing with a clear error.
        log_best_model: at the end of a successful fit, the best checkpoint's model as an MLflow Model of this
            run (in its experiment, the module pickled: tag ``serialization_format``), with its checkpoint and step
            as tags and the metrics it was saved with (``val_loss`` of its epoch, ...) linked to it.
        registered_model_name: also register that model under this name, with the alias ``best``.
        model_signature: give that model a signature: its input, the LightningModule's ``example_input_array``
            (a tensor) or else the first 2 rows of the first training batch's input (the batch, or its first item
            when a tuple or list), and its output on that input in eval mode. A model that takes or gives anything
            but one tensor gets none (one info message).
        model_input_example: also save that input as the model's input example (``False``: e.g. private data).
        flush_timeout: seconds the end of each stage waits for the store to take every queued write; what it
            has not taken by then stays in the journal under ``save_dir`` (``lightning-mlflow sync``).
        end_run: who ends the run when the work succeeds. ``None``: the runs this logger owns (created, reopened,
            resumed from their own checkpoint). ``True``: the run, whoever opened it (the last step of a
            pipeline). ``False``: nobody, it stays RUNNING for the next step (the first step of a pipeline).
            A failure ends the run FAILED (KILLED on Ctrl-C / SIGTERM) either way, except a user's own active run.
        redact: your own patterns for hyperparameter and tag keys whose values are recorded as ``[redacted]``,
            on top of the built-in ones (password, token, api_key, ...): words matched as whole segments of
            the key (``"wandb_key"``) or regular expressions (``r"^internal/"``); see ``keys.Redactor``.
            A pattern that cannot work raises ValueError here, before any run is touched.
        trial: an Optuna trial (the ``optuna.Trial`` your objective gets): the run is ``trial-<number>``, a child
            of the study's parent run (the active run, else one per study name in the experiment, created by the
            first trial), with the trial's params. A trial pruned by ``optuna.TrialPruned`` (Optuna's pruning
            callback) ends FINISHED, tagged ``lightning_mlflow_ext.sweep.trial_state=PRUNED``, not FAILED. Add
            ``lightning_mlflow_ext.optuna.record_best_trial`` to ``study.optimize(callbacks=...)`` for the
            best trial on the parent. Inside a Hydra multirun job (``-m``) the same happens with no argument:
            one parent per sweep, a child per job named after its overrides.
        show_run_link: at the end of each fit (validate, test, predict), show the run's link on global rank 0:
            an HTML block in Jupyter, else the line MLflow prints, ``🏃 View run NAME at: URL`` (for a local
            store, with the ``mlflow ui`` command that serves it). Once per run and status. ``False``, or
            MLflow's ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true``, shows none.
        log_environment: record what ran the run, once, from global rank 0, as ``lightning_mlflow_ext.env.*``
            tags (Python, torch, CUDA, cuDNN, the NVIDIA driver and GPUs, CPU, memory, host, OS, container,
            Lightning and MLflow versions, world size, precision, strategy, accelerator, the sha256 of lock files
            such as ``uv.lock`` or ``requirements.txt``) and the artifact ``environment/packages.txt``. Of the
            environment variables, only the values of SLURM's job variables and ``CUDA_VISIBLE_DEVICES``
            (``lightning_mlflow_ext.env.var.<NAME>``), and of the names given here as a list on top of them
            (``["SLURM_JOB_QOS"]``); a secret-looking name (``MY_API_TOKEN``) raises ValueError. ``False``
            records none of it.

    How a fit goes is recorded as it goes, as metrics the runs table sorts: ``best/<monitor>`` (and when),
    ``fit/wall_time_s``, ``fit/samples_per_s``, ... (``trainer/fit_summary.py``).

    Run resolution, first that applies: ``run_id`` -> ``mlflow.active_run()`` -> ``MLFLOW_RUN_ID`` (both skipped
    for a child run: ``parent_run_id``, a sweep's trial) -> the run a checkpoint being resumed
    (``fit(ckpt_path=...)``, SLURM requeue) was trained in -> a new run. The logger
    ends the runs it owns: FINISHED on success, FAILED on an exception, KILLED on Ctrl-C / SIGTERM. A run
    found RUNNING (a ``with mlflow.start_run()`` block, a pipeline step) is left open on success. A stage that
    fails records why in the run: ``lightning_mlflow_ext.failure.*`` tags (kind, exception, message, step, epoch),
    and ``failure/traceback.txt`` and ``failure/output_tail.txt`` (its last 200 lines of output), secrets hidden.
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
        model_signature: bool = True,
        model_input_example: bool = True,
        end_run: bool | None = None,
        redact: RedactPatterns | None = None,
        show_run_link: bool = True,
        log_environment: bool | Sequence[str] = True,
        log_model_options: CheckpointUploadPolicy | Mapping[str, Any] | None = None,
        log_norms: NormsOption | Literal[False] = False,
        norms_per_layer: bool = False,
        trial: Any = None,
        log_checkpoint_models: bool = True,
    ) -> None:
        super().__init__()

        if log_model not in (True, False, "all"):
            raise ValueError(f"log_model must be True, False or 'all', got {log_model!r}")
        upload_policy = CheckpointUploadPolicy.of(log_model_options)
        if upload_policy.changes_uploads and not log_model:
            raise ValueError(
                "log_model_options says how checkpoints are uploaded, but log_model=False uploads none: "
                "set log_model=True or 'all'"
            )
        self._redactor = Redactor.of(redact)
        uri = resolve_tracking_uri(tracking_uri)
        trial_info = sweep_trial(trial)  # trial=, else the Hydra multirun job this process runs
        self._save_dir = os.path.abspath(save_dir or local_store_path(uri) or DEFAULT_SAVE_DIR)
        self._session = RunSession(
            uri,
            experiment_name=experiment_name,
            run_name=run_name or (trial_info.run_name if trial_info else None),
            run_id=run_id,
            parent_run_id=parent_run_id,
            tags=dict(trial_info.tags if trial_info else {}) | run_tags(tags, self._redactor),
            artifact_location=artifact_location,
            synchronous=bool(synchronous),
            server_wait=server_wait,
            save_dir=self._save_dir,
            flush_timeout=flush_timeout,
            may_create=is_global_rank_zero,
            end_run=end_run,
            sweep=trial_info.sweep if trial_info else None,
        )
        self._links = RunLinks(show_run_link)
        self._warn_once = WarnOnce(log)  # one for every part: each warning once per logger
        self._metrics = MetricPipeline(self._session, self._warn_once, prefix=prefix, step_axis=step_axis)
        self._summary = FitSummary(self._metrics, self._warn_once)
        self._best_model = (
            BestModelExport(
                self._session,
                self._warn_once,
                registered_model_name,
                self._metrics,
                signature=model_signature,
                input_example=model_input_example,
            )
            if log_best_model or registered_model_name is not None
            else None
        )
        self._hparams = HyperparamRecorder(self._session, self._warn_once, self._redactor)
        self._trial = TrialRecorder(self._session, self._hparams, trial_info)
        self._media = MediaRecorder(self._session)
        self._saved_config = SavedConfig(self._media, self._redactor, self._warn_once, self._save_dir)
        self._norms = NormRecorder(log_norms, norms_per_layer)
        self._checkpoints = CheckpointUploads(
            self._session, log_model, upload_policy, self._warn_once, as_models=log_checkpoint_models
        )
        if self._checkpoints.models is not None:
            self._metrics.listeners.append(self._checkpoints.models.note_points)
        self._compat = CompatWrites(self._session, self._hparams, self._metrics)
        self._run = RunContinuity(
            self._session, self._metrics, self._hparams, self._media, self._warn_once, self._save_dir
        )
        self._environment = EnvironmentRecorder(self._session, log_environment, self._redactor)
        self._failures = FailureForensics(self._session, self._redactor)
        self._trainer: pl.Trainer | None = None
        self._driven_by_lightning = False  # a Trainer called log_graph: it runs a stage with this logger

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
        return self._metrics.step_axis

    @property
    def redactor(self) -> Redactor:
        """Which keys' values this logger records as redacted: the built-in words plus ``redact=``."""
        return self._redactor

    # ---- metrics and hyperparameters (Lightning's Logger contract) ----------------------------------

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._metrics.log(metrics, step, self._trainer)

    @override
    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace | Any, *args: Any, **kwargs: Any) -> None:
        self._hparams.log(params)

    # ---- tags and models of your own ------------------------------------------------------------

    @rank_zero_only
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags on the run (values rendered as text, secret-looking values redacted)."""
        self._session.set_tags(run_tags(tags, self._redactor))

    def log_model(self, module: Any, name: str = "model", **options: Any) -> str:
        """``module`` as it is now, as the MLflow Model ``name`` of the run (``run.models.save_trained_model``),
        logged in the background; returns what ``logged_model_id`` takes once ``flush`` returned."""
        folder = self._session.uploader.model_folder()
        details = save_trained_model(module, folder, experiment_id=self.experiment_id, name=name, **options)
        self._session.uploader.log_model(folder, details)
        return str(details["change_id"])

    @property
    def mlflow_names(self) -> CompatWrites:
        """The writes ``autolog()`` makes under ``mlflow.pytorch.autolog()``'s names (trainer/autolog_compat.py)."""
        return self._compat

    # ---- data lineage -------------------------------------------------------------------------

    def log_datasets(self, splits: Mapping[str, str | os.PathLike[str] | Fingerprint]) -> dict[str, Fingerprint]:
        """Record ``{"train": path, ...}`` as the run's dataset inputs (git/DVC sources); rank 0 only."""
        if not is_global_rank_zero():
            return {}
        fingerprints = self._session.log_datasets(splits)
        self._checkpoints.note_datasets({split: fp.digest for split, fp in fingerprints.items()})
        return fingerprints

    @rank_zero_only
    def set_lineage_tags(self, state: str, problems: list[str]) -> None:
        """``lightning_mlflow_ext.lineage`` = reproducible | incomplete, and what is missing."""
        self._session.set_tags(lineage_tags(state, problems))

    @rank_zero_only
    def record_resumed_on_changed_data(self, changed: dict[str, tuple[str, str]]) -> None:
        """Tag a run whose fit resumed from a checkpoint trained on other data: split -> [then, now]."""
        self._session.set_tags(changed_data_tags(changed))

    # ---- figures and media (uploaded in the background; names are checked here) ------------------

    @rank_zero_only
    def log_figure(self, figure: Any, key: str, step: int | None = None, *, close: bool = True) -> None:
        """A matplotlib or plotly figure, at ``figures/<key>.png`` or, with a step, ``figures/<key>/step_<n>.png``.

        The figure is rendered now and (``close=True``) closed, so thousands of calls leak nothing.
        """
        self._media.log_figure(figure, key, step, close=close)

    @rank_zero_only
    def log_image(self, image: Any, key: str, step: int | None = None) -> None:
        """A numpy array, PIL image or tensor: with a step, MLflow's step-keyed images; else ``images/<key>.png``."""
        self._media.log_image(image, key, step)

    @rank_zero_only
    def log_table(self, data: Any, artifact_file: str) -> None:
        """A dict of columns or a pandas DataFrame, as MLflow's JSON table ``artifact_file``."""
        self._media.log_table(data, artifact_file)

    @rank_zero_only
    def log_text(self, text: str, artifact_file: str) -> None:
        self._media.log_text(text, artifact_file)

    @rank_zero_only
    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """As JSON, or YAML when ``artifact_file`` ends in .yaml/.yml."""
        self._media.log_dict(data, artifact_file)

    @rank_zero_only
    def log_artifact(self, local_path: str | os.PathLike[str], artifact_dir: str | None = None) -> None:
        """A local file, snapshotted now (so it may change or go away), uploaded into ``artifact_dir``."""
        self._media.log_artifact(local_path, artifact_dir)

    # ---- the rest of Lightning's Logger contract --------------------------------------------------

    @override
    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        self._checkpoints.after_save(checkpoint_callback, self._trainer)
        if self._best_model is not None:
            self._best_model.checkpoint_saved(checkpoint_callback, self._trainer)

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
        self._metrics.expect_last_train_step(None)  # also when the fit failed before on_train_end
        try:
            if self._session.resolved:
                self._end_stage(status)
        finally:
            self._failures.stop()

    def _end_stage(self, status: str) -> None:
        self._environment.record()
        trainer = self._trainer
        if trainer is None and self._driven_by_lightning:
            self._warn_once("no-bridge", NO_BRIDGE_WARNING)
        elif trainer is not None and trainer.state.fn == "fit":
            self._summary.finish(trainer)
            self._run.fit_ended()
        self._metrics.warn_repeated()
        self._metrics.send_axis_tags()
        pruned = self._trial.pruned
        final = self._trial.stage_ended(final_status(status, self._failures.interrupted))
        self._failures.record(final)  # the exception, traceback and last output, ahead of the final status
        self._checkpoints.finish(trainer, final)
        if final == "FINISHED" and self._best_model is not None and not pruned:
            self._best_model.record_best_model(trainer, self._checkpoints.mirror, self._checkpoints.models)
        end_stage(self._session, final, self._links)

    # ---- without a Trainer (a pipeline step that does not train) --------------------------------

    def __enter__(self) -> MLflowLogger:
        """``with MLflowLogger(...) as logger:`` records into the run and ends the block the way a fit ends:
        the run's status follows the block (an exception: FAILED, Ctrl-C: KILLED), ``end_run`` applies."""
        self._failures.watch()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.note_exception(exc)
        self.finalize("success" if exc is None else "failed")

    # ---- protocol.TrainerHooks: called by the bridge callback (trainer/bridge.py) ------------------

    def bind_trainer(self, trainer: pl.Trainer) -> None:
        self._trainer = trainer
        self._failures.watch()
        self._saved_config.new_stage()
        self._metrics.set_epoch_end(False)
        self._summary.start(trainer)
        self._run.note_fit(trainer)  # a fit started over: a new run, or one warning
        if trainer.state.fn == "fit" and self._best_model is not None:
            self._best_model.start_fit()
        mute_mlflow_autolog(trainer, self._warn_once)
        self._run.enter_stage(trainer)
        if trainer.global_rank == 0:
            self._environment.start(trainer)
            self._trial.stage_started()

    def set_epoch_end(self, at_epoch_end: bool, *, epoch_axis_allowed: bool = True) -> None:
        self._metrics.set_epoch_end(at_epoch_end, epoch_axis_allowed=epoch_axis_allowed)
        self._environment.record_when_ready()  # every batch: one check, until it is recorded

    def expect_last_train_step(self, step: int | None) -> None:
        self._metrics.expect_last_train_step(step)

    def train_batch_ended(self, trainer: pl.Trainer, batch: Any) -> None:
        self._summary.batch_ended(trainer, batch)
        if self._best_model is not None and trainer.global_rank == 0:
            self._best_model.note_train_batch(batch)  # the first of a fit gives the model's input example

    def fit_progressed(self, trainer: pl.Trainer, moment: FitMoment) -> None:
        self._summary.progressed(trainer, moment)

    def checkpoint_info(self) -> dict[str, Any] | None:
        if not self._session.resolved:
            return None
        summary = self._summary.state(self._trainer)  # None: nothing to continue (not a fit, not rank 0)
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": self.tracking_uri,
            **({STATE_KEY: summary} if summary is not None else {}),
        }

    def resume_from(self, trainer: pl.Trainer, info: Mapping[str, Any], global_step: int) -> None:
        self._summary.restore(info.get(STATE_KEY), global_step)
        self._run.resume_from(trainer, info, global_step)

    @rank_zero_only
    def config_saved(self, filename: str, inputs: Sequence[str]) -> None:
        self._saved_config.take(filename, inputs, lambda: self.log_dir)

    def before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        norms = self._norms.read(trainer, pl_module)
        if norms:
            self.log_metrics(norms, step=trainer.global_step)

    def note_exception(self, exception: BaseException) -> None:
        self._failures.note(exception, self._trainer)
        self._trial.note_exception(exception)

    # ---- a copy in another process (ddp_spawn) -------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        if is_global_rank_zero():
            # ddp_spawn pickles the Trainer for its workers before any hook of this logger runs here: the copies
            # must all log into one run, which this process knows too, so the run is resolved now.
            self._session.resolve()
        state = self.__dict__.copy()
        state["_trainer"] = None  # the trainer holds this logger; it binds again at setup
        return state
