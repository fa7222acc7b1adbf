"""What a fit is made of, as params and metrics: Trainer settings, optimizers and their param groups, LR
schedulers, EarlyStopping (settings and outcome), the quantities the callbacks monitor, the model summary and
parameter counts.

Read from public Trainer attributes only. EarlyStopping is recognised by its attributes, so the
``lightning.pytorch`` and the ``pytorch_lightning`` classes (and subclasses) are both found.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.model_summary.model_summary import ModelSummary

from lightning_mlflow_ext.trainer.namespaces import model_checkpoint_types

#: Param-group entries that are not settings (the tensors themselves, bookkeeping).
_NOT_SETTINGS = {"params", "param_names", "initial_lr"}


def trainer_callbacks(trainer: pl.Trainer) -> list[Any]:
    """``trainer.callbacks`` (an attribute Lightning sets at init, which its type hints do not declare)."""
    return list(trainer.callbacks)  # type: ignore[attr-defined]


def trainer_settings(trainer: pl.Trainer) -> dict[str, Any]:
    """The settings that decide how a fit runs, under ``trainer/``."""
    settings: dict[str, Any] = {
        "max_epochs": trainer.max_epochs,
        "max_steps": trainer.max_steps,
        "min_epochs": trainer.min_epochs,
        "precision": trainer.precision,
        "strategy": type(trainer.strategy).__name__,
        "accelerator": type(trainer.accelerator).__name__,
        "devices": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "gradient_clip_val": trainer.gradient_clip_val,
        "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
        "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
        "val_check_interval": trainer.val_check_interval,
        "log_every_n_steps": trainer.log_every_n_steps,  # type: ignore[attr-defined]
    }
    return {f"trainer/{key}": value for key, value in settings.items() if value is not None}


def optimizer_settings(optimizers: Iterable[Any]) -> dict[str, Any]:
    """Every optimizer's class and every param group's settings (lr, betas, weight decay, ...)."""
    params: dict[str, Any] = {}
    for index, optimizer in enumerate(optimizers):
        prefix = f"optimizer/{index}"
        params[f"{prefix}/name"] = type(optimizer).__name__
        for group_index, group in enumerate(optimizer.param_groups):
            for key, value in group.items():
                if key not in _NOT_SETTINGS:
                    params[f"{prefix}/group/{group_index}/{key}"] = value
            params[f"{prefix}/group/{group_index}/num_params"] = sum(p.numel() for p in group["params"])
    return params


def scheduler_settings(trainer: pl.Trainer) -> dict[str, Any]:
    """Each LR scheduler's class, when it steps, and its own scalar settings (step_size, gamma, T_max, ...)."""
    params: dict[str, Any] = {}
    for index, config in enumerate(trainer.lr_scheduler_configs):
        prefix = f"lr_scheduler/{index}"
        scheduler = config.scheduler
        params[f"{prefix}/name"] = type(scheduler).__name__
        params[f"{prefix}/interval"] = config.interval
        params[f"{prefix}/frequency"] = config.frequency
        if config.monitor:
            params[f"{prefix}/monitor"] = config.monitor
        for key, value in scheduler.state_dict().items():
            if not key.startswith("_") and key not in ("last_epoch", "base_lrs", "last_lr") and _scalar(value):
                params[f"{prefix}/{key}"] = value
    return params


def learning_rates(trainer: pl.Trainer) -> dict[str, float]:
    """The learning rate of every param group now, named like Lightning's LearningRateMonitor
    (``lr-SGD``, ``lr-Adam/pg1``, ``lr-Adam-1`` for a second Adam)."""
    rates: dict[str, float] = {}
    seen: dict[str, int] = {}
    for optimizer in trainer.optimizers:
        name = f"lr-{type(optimizer).__name__}"
        count = seen.get(name, 0)
        seen[name] = count + 1
        if count:
            name = f"{name}-{count}"
        groups = optimizer.param_groups
        for index, group in enumerate(groups):
            key = name if len(groups) == 1 else f"{name}/pg{index + 1}"
            rates[key] = float(group["lr"])
    return rates


def is_early_stopping(callback: Any) -> bool:
    return any(cls.__name__ == "EarlyStopping" for cls in type(callback).__mro__) and hasattr(callback, "monitor")


def early_stopping_settings(callbacks: Iterable[Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for index, callback in enumerate(cb for cb in callbacks if is_early_stopping(cb)):
        prefix = "early_stopping" if index == 0 else f"early_stopping/{index}"
        for key in ("monitor", "mode", "patience", "min_delta", "stopping_threshold", "divergence_threshold"):
            value = getattr(callback, key, None)
            if value is not None:
                params[f"{prefix}/{key}"] = abs(value) if key == "min_delta" else value  # stored negated for "min"
    return params


def early_stopping_outcome(callbacks: Iterable[Any]) -> dict[str, float]:
    """Metrics at the end of a fit: whether and when each EarlyStopping stopped it, and its best score."""
    metrics: dict[str, float] = {}
    for index, callback in enumerate(cb for cb in callbacks if is_early_stopping(cb)):
        prefix = "early_stopping" if index == 0 else f"early_stopping/{index}"
        stopped_epoch = int(getattr(callback, "stopped_epoch", 0) or 0)
        metrics[f"{prefix}/stopped"] = 1.0 if stopped_epoch > 0 else 0.0
        metrics[f"{prefix}/stopped_epoch"] = float(stopped_epoch)
        metrics[f"{prefix}/wait_count"] = float(getattr(callback, "wait_count", 0) or 0)
        best = getattr(callback, "best_score", None)
        if best is not None and math.isfinite(float(best)):
            metrics[f"{prefix}/best_score"] = float(best)
    return metrics


def monitored_quantities(callbacks: Iterable[Any]) -> list[tuple[str, str]]:
    """``(monitor, mode)`` of every ModelCheckpoint and EarlyStopping that monitors a quantity (either Lightning
    namespace), in callback order; a quantity monitored twice is listed twice."""
    found: list[tuple[str, str]] = []
    for callback in callbacks:
        if isinstance(callback, model_checkpoint_types()) or is_early_stopping(callback):
            monitor, mode = getattr(callback, "monitor", None), getattr(callback, "mode", "min")
            if isinstance(monitor, str) and monitor and mode in ("min", "max"):
                found.append((monitor, mode))
    return found


def model_summary(module: pl.LightningModule) -> tuple[str, dict[str, int]]:
    """The module's layer table (every depth) as text, and its parameter counts as params."""
    summary = ModelSummary(module, max_depth=-1)
    counts = {
        "model/total_params": int(summary.total_parameters),
        "model/trainable_params": int(summary.trainable_parameters),
        "model/non_trainable_params": int(summary.total_parameters - summary.trainable_parameters),
    }
    return str(summary) + "\n", counts


def _scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str)) or value is None
