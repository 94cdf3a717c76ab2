"""The EMA model's batch-norm statistics: copied (USB) or averaged (official Ada-CM, timm), by hand."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sslzoo.ema import ModelEMA
from sslzoo.errors import SSLZooError


def _bn_model() -> nn.Module:
    """Linear(2, 2) -> BatchNorm1d(2) with known weights; the EMA is made from this state."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.zero_()
    return model


def _move(model: nn.Module) -> None:
    """The training model after some steps: new weights and running statistics, 7 batches counted."""
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.copy_(torch.tensor([1.0, 2.0]))
        model[1].running_var.copy_(torch.tensor([3.0, 5.0]))
        model[1].num_batches_tracked.fill_(7)


def test_average_mixes_float_buffers_with_the_weight_decay_and_keeps_integer_ones():
    model = _bn_model()
    ema = ModelEMA(model, decay=0.9, warmup=False, buffers="average")
    _move(model)
    ema.update(model)
    bn = ema.module[1]
    assert torch.allclose(ema.module[0].weight, torch.full((2, 2), 0.1))              # 0.9 * 0 + 0.1 * 1
    assert torch.allclose(bn.running_mean, torch.tensor([0.1, 0.2]))                  # 0.9 * 0 + 0.1 * (1, 2)
    assert torch.allclose(bn.running_var, torch.tensor([1.2, 1.4]))                   # 0.9 * 1 + 0.1 * (3, 5)
    assert bn.num_batches_tracked.item() == 0                                         # official: float32 entries only
    ema.update(model)
    assert torch.allclose(bn.running_mean, torch.tensor([0.19, 0.38]))                # 0.9 * 0.1 + 0.1 * 1


def test_average_follows_the_warmed_up_decay():
    """With the EMA warm-up, update 0 uses decay 1/10: buffers move 90 % of the way, like the weights."""
    model = _bn_model()
    ema = ModelEMA(model, decay=0.999, warmup=True, buffers="average")
    _move(model)
    ema.update(model)
    assert torch.allclose(ema.module[1].running_mean, torch.tensor([0.9, 1.8]))
    assert torch.allclose(ema.module[1].running_var, torch.tensor([0.1 + 2.7, 0.1 + 4.5]))


def test_copy_takes_every_buffer_as_it_is():
    model = _bn_model()
    ema = ModelEMA(model, decay=0.9, warmup=False)
    _move(model)
    ema.update(model)
    bn = ema.module[1]
    assert torch.equal(bn.running_mean, model[1].running_mean) and torch.equal(bn.running_var, model[1].running_var)
    assert bn.num_batches_tracked.item() == 7
    assert torch.allclose(ema.module[0].weight, torch.full((2, 2), 0.1))


def test_unknown_buffer_mode_is_a_clear_error():
    with pytest.raises(SSLZooError, match="ema.buffers must be 'copy'.*'average'.*got 'mean'"):
        ModelEMA(_bn_model(), buffers="mean")


def test_a_run_with_averaged_buffers_evaluates_other_statistics(tmp_path, tiny):
    """End to end: the config key reaches the EMA; averaged statistics trail the model's, copied ones equal them."""
    from sslzoo.trainer import Trainer

    def final_states(buffers: str):
        trainer = Trainer(tiny(tmp_path / buffers, algo="supervised", ema={"buffers": buffers}))
        trainer.fit()
        return dict(trainer.model.named_buffers()), dict(trainer.ema.module.named_buffers())

    model_b, ema_b = final_states("copy")
    assert all(torch.equal(model_b[k], ema_b[k]) for k in model_b)
    model_b, ema_b = final_states("average")
    means = [k for k in model_b if k.endswith("running_mean")]
    assert means and all(not torch.equal(model_b[k], ema_b[k]) for k in means)
    assert all(torch.equal(ema_b[k], torch.zeros((), dtype=torch.long)) for k in ema_b if k.endswith("tracked"))
