"""Which step a metric point is recorded at: the epoch for epoch-level metrics, else the global step.

Each key keeps the axis it was first recorded on for its whole history.
"""

from __future__ import annotations

from typing import Literal

StepAxis = Literal["epoch", "global_step"]
EPOCH_KEY = "epoch"


class StepAxes:
    """Chooses a step per metric point and remembers each key's axis.

    ``step_axis="epoch"``: a metric logged at an epoch end (validation/test metrics, ``on_epoch=True``)
    is recorded at step = epoch, provided its stage gives at most one point an epoch; everything else at
    the step Lightning passes (the global step in training). ``step_axis="global_step"``: Lightning's
    behaviour, every point at the step Lightning passes.
    """

    def __init__(self, step_axis: StepAxis = "epoch") -> None:
        if step_axis not in ("epoch", "global_step"):
            raise ValueError(f"step_axis must be 'epoch' or 'global_step', got {step_axis!r}")
        self.step_axis: StepAxis = step_axis
        self.reset()

    def reset(self) -> None:
        """Forget every key (a new run)."""
        self._axis: dict[str, StepAxis] = {}
        self._last_epoch: dict[str, int] = {}
        #: Keys that got a second point at an epoch they already had (a validate() or test() repeated
        #: at the same epoch): MLflow keeps both, ordered by time.
        self.repeated: set[str] = set()
        self._last_epoch_step: int | None = None

    @property
    def epoch_keys(self) -> list[str]:
        """Keys recorded at step = epoch, in the order they first appeared."""
        return [key for key, axis in self._axis.items() if axis == "epoch"]

    def seed(self, epoch_keys: list[str]) -> None:
        """Keys a resumed run already records at step = epoch keep that axis in this process too."""
        for key in epoch_keys:
            self._axis.setdefault(key, "epoch")

    def step_for(self, key: str, *, epoch_level: bool, epoch: int | None, step: int) -> int:
        axis = self._axis.get(key)
        if axis is None:
            axis = "epoch" if epoch_level and epoch is not None and self.step_axis == "epoch" else "global_step"
            self._axis[key] = axis
        if axis == "epoch" and epoch is not None:
            last = self._last_epoch.get(key)
            if last is not None and epoch <= last:
                self.repeated.add(key)
            self._last_epoch[key] = epoch
            return epoch
        return step

    def on_step_axis(self, key: str) -> bool:
        """True once ``key`` is recorded at the step it is logged with, for good."""
        return self._axis.get(key) == "global_step"

    def keep_epoch_point(self, step: int) -> bool:
        """Lightning adds ``epoch`` to every logging call, step- and epoch-level: keep one point a step."""
        if self._last_epoch_step is not None and step <= self._last_epoch_step:
            return False
        self._last_epoch_step = step
        return True
