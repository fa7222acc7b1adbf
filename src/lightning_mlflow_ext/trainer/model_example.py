"""The input example of the model a fit trains, and the model's output on it: what gives a logged model its
signature and its input example.

The input is the module's ``example_input_array`` when it is a tensor, else the first rows of the first training
batch's input. MLflow's PyTorch flavor takes one tensor in and gives one tensor out, so only such a model gets an
example; any other gets none, with one info-level message saying why.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: How many rows of the first training batch are kept: enough to show the batch dimension, small to store.
EXAMPLE_ROWS = 2


def batch_input(batch: Any) -> torch.Tensor | None:
    """The model's input in a training batch: the batch itself when it is a tensor, else the first item of a tuple
    or list (``(x, y)``, ``[x, y, w]``) when that is a tensor. A dict batch does not say which entry the model
    takes: None (set ``example_input_array``)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    return None


class InputExample:
    """What the first training batch of a fit gives as the model's input example (kept on the CPU, a few rows)."""

    def __init__(self) -> None:
        self._first: torch.Tensor | None = None
        self._why_none = "the fit ran no training batch"
        self._seen = False

    def start_fit(self) -> None:
        """A new fit: its own first batch."""
        self._first, self._why_none, self._seen = None, "the fit ran no training batch", False

    def note_batch(self, batch: Any) -> None:
        """A training batch was used; the first one of the fit is kept (``EXAMPLE_ROWS`` rows)."""
        if self._seen:
            return
        self._seen = True
        found = batch_input(batch)
        if found is None:
            self._why_none = (
                f"a training batch of type {type(batch).__name__} has no single input tensor (a tensor, or one first "
                "in a tuple or list)"
            )
            return
        rows = found[:EXAMPLE_ROWS] if found.dim() > 0 else found
        self._first = rows.detach().cpu().clone()

    def pair(self, module: Any, declared: Any = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(input, output)`` of ``module`` in eval mode, without gradients, on ``declared`` (the trained
        module's ``example_input_array``) if set, else on the first batch's input; None (and one info message)
        when there is no such tensor pair."""
        import torch

        if declared is not None:
            if not isinstance(declared, torch.Tensor):
                return self._none(
                    f"example_input_array is a {type(declared).__name__}; MLflow's PyTorch models take one tensor"
                )
            example = declared.detach().cpu()
        elif self._first is not None:
            example = self._first
        else:
            return self._none(self._why_none)
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        training = module.training
        try:
            module.eval()
            with torch.no_grad():
                output = module(example.to(device))
        except Exception as exc:
            return self._none(f"the model's forward failed on it: {exc!r}")
        finally:
            module.train(training)
        if not isinstance(output, torch.Tensor):
            return self._none(f"the model returned a {type(output).__name__}; MLflow's PyTorch models give one tensor")
        return example, output.detach().cpu()

    @staticmethod
    def _none(why: str) -> None:
        log.info(
            "The best model is logged without a signature or input example: %s. Set the LightningModule's "
            "example_input_array to a tensor to give it one.",
            why,
        )
        return None
