"""The two Lightning namespaces: ``lightning.pytorch`` and ``pytorch_lightning``, separate copies of Lightning
with classes of their own.

A ``pytorch_lightning.Trainer`` takes its callbacks from the ``pytorch_lightning.callbacks_factory`` entry point,
its ``ModelCheckpoint`` is ``pytorch_lightning.callbacks.ModelCheckpoint``, and its LightningCLI (jsonargparse)
accepts only subclasses of its own ``Callback`` and ``Logger``. So:

* every check of a Lightning class here accepts the class of either namespace (``model_checkpoint_types``,
  ...); ``pytorch_lightning`` counts only once the user's program imported it (it is never imported here);
* ``MLflowLogger``, ``MLflowCallback``, the autolog callback and the bridge are ``FollowsNamespace``: once
  ``pytorch_lightning`` is imported, creating one makes an instance of its subclass in ``pl_classes``, which
  is also a ``pytorch_lightning`` ``Logger`` / ``Callback``, and so is accepted by a Trainer of either namespace.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, TypeVar

LIGHTNING = "lightning.pytorch"
PYTORCH_LIGHTNING = "pytorch_lightning"

T = TypeVar("T")


def pytorch_lightning_imported() -> bool:
    """True once the program imported ``pytorch_lightning`` (a ``pytorch_lightning.Trainer`` implies it)."""
    return PYTORCH_LIGHTNING in sys.modules


def _classes(module: str, name: str) -> tuple[type[Any], ...]:
    """``module.name`` of ``lightning.pytorch`` (always) and of ``pytorch_lightning`` (when imported)."""
    found: list[type[Any]] = [getattr(importlib.import_module(f"{LIGHTNING}.{module}"), name)]
    if pytorch_lightning_imported():
        found.append(getattr(importlib.import_module(f"{PYTORCH_LIGHTNING}.{module}"), name))
    return tuple(found)


def model_checkpoint_types() -> tuple[type[Any], ...]:
    return _classes("callbacks", "ModelCheckpoint")


def learning_rate_monitor_types() -> tuple[type[Any], ...]:
    return _classes("callbacks", "LearningRateMonitor")


def sigterm_exception_types() -> tuple[type[Any], ...]:
    return _classes("utilities.exceptions", "SIGTERMException")


def save_config_callback_types() -> tuple[type[Any], ...]:
    """Lightning's ``SaveConfigCallback`` of each namespace whose LightningCLI module is loaded (none is imported
    here: that would import jsonargparse)."""
    return tuple(
        module.SaveConfigCallback
        for module in (sys.modules.get(f"{LIGHTNING}.cli"), sys.modules.get(f"{PYTORCH_LIGHTNING}.cli"))
        if module is not None and hasattr(module, "SaveConfigCallback")
    )


def variant(cls: type[T]) -> type[T]:
    """``cls``, or once ``pytorch_lightning`` is imported, its subclass that is also of ``pytorch_lightning``
    (``pl_classes``; a class of the user's own keeps its bases)."""
    if not pytorch_lightning_imported():
        return cls
    from lightning_mlflow_ext.trainer import pl_classes  # imports pytorch_lightning, already imported

    found: type[T] = pl_classes.VARIANTS.get(cls, cls)
    return found


class FollowsNamespace:
    """Instances are of ``variant(cls)``: accepted by a Trainer of either namespace once both are imported."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return super().__new__(variant(cls))
