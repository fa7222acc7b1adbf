"""One of the concurrent training processes of tests/test_team_server.py (run as a real subprocess).

    python tests/team_train.py --tracking-uri URI --experiment NAME --run-name NAME --steps 300

Trains tests/tiny.py's model for ``--steps`` optimizer steps (one epoch, no validation) with
``MLflowLogger`` as ``logger=``, logging 11 metrics every step: ``loss`` and ``m0`` .. ``m9``, where
``m<i>`` at global step ``s`` is ``16 * s + i`` (exact in float32), so the test can check every point's
value as well as its step. Prints the run id as its last line.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger

N_EXTRA = 10  # m0 .. m9, beside loss: 11 metrics a step
BATCH_SIZE = 2


def expected_value(key: str, step: int) -> float:
    """The value ``team_train.py`` logs for ``m<i>`` at global step ``step``."""
    return float(16 * step + int(key[1:]))


class ElevenMetrics(TinyModel):
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("loss", loss, on_step=True, on_epoch=False)
        for i in range(N_EXTRA):
            self.log(f"m{i}", expected_value(f"m{i}", self.global_step), on_step=True, on_epoch=False)
        return loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--run-name", required=True)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    torch.set_num_threads(1)  # several of these share two cores
    logger = MLflowLogger(experiment_name=args.experiment, run_name=args.run_name, tracking_uri=args.tracking_uri)
    trainer = make_trainer(logger, max_epochs=1, max_steps=args.steps, limit_val_batches=0)
    trainer.fit(ElevenMetrics(lr=0.01), TinyData(batch_size=BATCH_SIZE, n_train=BATCH_SIZE * args.steps))
    print(logger.run_id, flush=True)


if __name__ == "__main__":
    main()
