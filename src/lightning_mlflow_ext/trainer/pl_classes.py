"""This package's Lightning classes as ``pytorch_lightning`` classes too: each subclasses the
``lightning.pytorch`` class and ``pytorch_lightning``'s ``Logger`` / ``Callback``, so a Trainer of either
namespace (and the LightningCLI of either) accepts it.

Imported only once the program imported ``pytorch_lightning`` (``namespaces.variant``). Creating
``lightning_mlflow_ext.MLflowLogger(...)`` (or ``MLflowCallback``, ...) then makes an instance of the class here;
the names are public as ``lightning_mlflow_ext.pytorch_lightning`` for LightningCLI class paths.
"""

from __future__ import annotations

from pytorch_lightning.callbacks import Callback as PLCallback
from pytorch_lightning.loggers import Logger as PLLogger

from lightning_mlflow_ext.trainer import autolog, bridge, callback, logger

# The ignores: each hook's parameters are typed with the Trainer of its own namespace in either base class.

class MLflowLogger(logger.MLflowLogger, PLLogger):  # type: ignore[misc]
    __doc__ = logger.MLflowLogger.__doc__


class MLflowCallback(callback.MLflowCallback, PLCallback):  # type: ignore[misc]
    __doc__ = callback.MLflowCallback.__doc__


class MLflowAutologCallback(autolog.MLflowAutologCallback, MLflowCallback):  # type: ignore[misc]
    __doc__ = autolog.MLflowAutologCallback.__doc__


class MLflowTrainerBridge(bridge.MLflowTrainerBridge, PLCallback):  # type: ignore[misc]
    __doc__ = bridge.MLflowTrainerBridge.__doc__


#: The ``lightning.pytorch`` class -> its class here.
VARIANTS: dict[type, type] = {
    logger.MLflowLogger: MLflowLogger,
    callback.MLflowCallback: MLflowCallback,
    autolog.MLflowAutologCallback: MLflowAutologCallback,
    bridge.MLflowTrainerBridge: MLflowTrainerBridge,
}

__all__ = ["VARIANTS", "MLflowAutologCallback", "MLflowCallback", "MLflowLogger", "MLflowTrainerBridge"]
