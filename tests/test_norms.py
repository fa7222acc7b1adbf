"""log_norms: gradient and weight norms as metrics a user finds in the run, at the Trainer's logging steps."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger


class NormsByHand(Callback):
    """The norms of every step, computed here the plain way, to compare with what the run holds."""

    def __init__(self) -> None:
        self.at: dict[int, dict[str, float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = dict(pl_module.named_parameters())
        norms = {f"grad_norm/{n}": p.grad.double().norm().item() for n, p in params.items()}
        norms |= {f"weight_norm/{n}": p.detach().double().norm().item() for n, p in params.items()}
        for kind in ("grad_norm", "weight_norm"):
            parts = [v for k, v in norms.items() if k.startswith(kind + "/")]
            norms[f"{kind}/total"] = sum(v * v for v in parts) ** 0.5
        self.at[trainer.global_step] = norms


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    # Norms are computed on this side; the store only receives metrics. One store for the module (each test has
    # its own run): creating a SQLite store is most of a test's time.
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def test_grad_and_weight_norms_are_logged_at_the_logging_steps(tracking_uri, client):
    logger = MLflowLogger(tracking_uri=tracking_uri, log_norms="all", norms_per_layer=True)
    by_hand = NormsByHand()
    make_trainer(logger, max_epochs=1, log_every_n_steps=3, callbacks=[by_hand]).fit(TinyModel(), TinyData())

    keys = {k for k in client.get_run(logger.run_id).data.metrics if "norm" in k}
    layers = [n for n, _ in TinyModel().named_parameters()]
    expected = {f"{kind}/{n}" for kind in ("grad_norm", "weight_norm") for n in [*layers, "total"]}
    assert keys == expected
    assert sorted(by_hand.at) == list(range(8))  # 64 samples, batches of 8
    for key in expected:
        history = client.get_metric_history(logger.run_id, key)
        assert [m.step for m in history] == [0, 3, 6]  # log_every_n_steps=3: no other step pays for it
        for point in history:
            assert point.value == pytest.approx(by_hand.at[point.step][key], rel=1e-5)


def test_only_totals_unless_per_layer_and_none_by_default(tracking_uri, client):
    logger = MLflowLogger(tracking_uri=tracking_uri, log_norms="grad")
    make_trainer(logger, max_steps=2).fit(TinyModel(), TinyData())
    keys = {k for k in client.get_run(logger.run_id).data.metrics if "norm" in k}
    assert keys == {"grad_norm/total"}

    plain = MLflowLogger(tracking_uri=tracking_uri)
    make_trainer(plain, max_steps=2).fit(TinyModel(), TinyData())
    assert not [k for k in client.get_run(plain.run_id).data.metrics if "norm" in k]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"log_norms": "grads"}, "'grad', 'weights', 'all'"),
        ({"log_norms": "all", "norms_per_layer": "yes"}, "True or False"),
    ],
)
def test_bad_norm_options_fail_at_once(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        MLflowLogger(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", **options)


def test_norms_are_float32_accumulated_for_half_precision_and_mixed_dtypes():
    from types import SimpleNamespace

    from lightning_mlflow_ext.trainer.norms import NormRecorder

    module = torch.nn.Sequential(torch.nn.Linear(300, 300).to(torch.bfloat16), torch.nn.Linear(300, 2))
    generator = torch.Generator().manual_seed(0)
    for p in module.parameters():
        p.grad = torch.rand(p.shape, generator=generator).to(p.dtype)
    trainer = SimpleNamespace(global_rank=0, log_every_n_steps=1, global_step=0)
    norms = NormRecorder("grad", per_layer=True).read(trainer, module)

    exact = {n: p.grad.double().norm().item() for n, p in module.named_parameters()}
    assert module[0].weight.grad.norm().item() != pytest.approx(exact["0.weight"], rel=1e-4)  # bf16's own norm
    for name, value in exact.items():
        assert norms[f"grad_norm/{name}"] == pytest.approx(value, rel=1e-5)
    assert norms["grad_norm/total"] == pytest.approx(sum(v * v for v in exact.values()) ** 0.5, rel=1e-5)
