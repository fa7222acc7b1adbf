"""Gradient and weight L2 norms as metrics (``MLflowLogger(log_norms=...)``), at the Trainer's logging cadence.

What ``wandb.watch(log="all")`` shows, as metrics a runs table can sort. Every norm of a logging step is computed
on the device as a tensor; the values come back in one transfer, so a step costs one device sync, not one per
layer (Lightning's ``grad_norm`` utility turns each norm into a number on its own). Other steps cost one modulo.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["GRAD_NORM", "WEIGHT_NORM", "NormRecorder", "NormsOption"]

NormsOption = Literal["grad", "weights", "all"]
#: Metric name prefixes: ``grad_norm/<parameter name>``, ``grad_norm/total``; the same for weights.
GRAD_NORM = "grad_norm"
WEIGHT_NORM = "weight_norm"


def _l2_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each tensor, as one float32 vector on the first tensor's device; no device sync."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault((tensor.device, tensor.dtype), []).append(index)
    device = tensors[0].device
    parts: list[torch.Tensor] = []
    order: list[int] = []
    for (_, dtype), indices in groups.items():
        # float32 accumulation: a bf16 norm of a large layer is off in its third digit.
        wide = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        norms = torch._foreach_norm([tensors[i] for i in indices], 2, dtype=wide)
        parts.append(torch.stack(norms).to(device=device, dtype=torch.float32))
        order.extend(indices)
    if len(parts) == 1:
        return parts[0]
    values = torch.cat(parts)
    return values[torch.tensor(order, device=device).argsort()]  # back in the tensors' order


class NormRecorder:
    """Reads a module's norms before an optimizer step, on the logging steps of global rank 0."""

    def __init__(self, what: NormsOption | Literal[False] | None, per_layer: bool) -> None:
        if what not in (None, False, "grad", "weights", "all"):
            raise ValueError(f"log_norms must be 'grad', 'weights', 'all' or False, got {what!r}")
        if not isinstance(per_layer, bool):
            raise ValueError(f"norms_per_layer must be True or False, got {per_layer!r}")
        self._grads = what in ("grad", "all")
        self._weights = what in ("weights", "all")
        self._per_layer = per_layer
        self._last_step = -1  # several optimizers step once each per global step: one reading

    def read(self, trainer: pl.Trainer, module: torch.nn.Module) -> dict[str, float]:
        """The norms at this step (before the optimizer changes the weights, after AMP unscaled the gradients,
        before gradient clipping), or nothing when this is not a logging step."""
        if not (self._grads or self._weights) or trainer.global_rank != 0:
            return {}
        every: int = trainer.log_every_n_steps  # type: ignore[attr-defined]
        step = trainer.global_step
        if every <= 0 or step % every or step == self._last_step:
            return {}
        self._last_step = step
        names: list[str] = []
        parts: list[torch.Tensor] = []
        with torch.no_grad():
            if self._grads:
                with_grads = [(n, p.grad) for n, p in module.named_parameters() if p.grad is not None]
                self._add(GRAD_NORM, with_grads, names, parts)
            if self._weights:
                self._add(WEIGHT_NORM, [(n, p.detach()) for n, p in module.named_parameters()], names, parts)
            if not parts:
                return {}
            device = parts[0].device
            values = torch.cat([part.to(device) for part in parts]).tolist()  # the one device sync
        return dict(zip(names, values, strict=True))

    def _add(
        self,
        kind: str,
        named: Iterable[tuple[str, torch.Tensor]],
        names: list[str],
        parts: list[torch.Tensor],
    ) -> None:
        named = list(named)
        if not named:
            return
        norms = _l2_norms([tensor for _, tensor in named])
        total = torch.linalg.vector_norm(norms).reshape(1)
        if self._per_layer:
            names.extend(f"{kind}/{name}" for name, _ in named)
            parts.append(norms)
        names.append(f"{kind}/total")
        parts.append(total)
