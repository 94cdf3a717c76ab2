"""Optimizer hygiene: no weight decay on 1-d parameters (USB, timm) and global-norm gradient clipping."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sslzoo.errors import SSLZooError
from sslzoo.optim import build_optimizer, clip_gradients, clip_norm, param_groups

SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.5,
       "no_decay_norm_bias": True, "clip_grad": None}


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _names(group: dict, model: nn.Module) -> list[str]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return [ids[id(p)] for p in group["params"]]


def test_norm_and_bias_parameters_are_not_decayed():
    model = _net()
    decayed, plain = param_groups(model.named_parameters(), SGD)
    assert _names(decayed, model) == ["0.weight", "3.weight"] and decayed["weight_decay"] == 0.5
    assert _names(plain, model) == ["0.bias", "1.weight", "1.bias", "3.bias"] and plain["weight_decay"] == 0.0


def test_one_group_without_the_switch_or_without_decay():
    model = _net()
    (only,) = param_groups(model.named_parameters(), {**SGD, "no_decay_norm_bias": False})
    assert len(only["params"]) == 6 and only["weight_decay"] == 0.5
    (only,) = param_groups(model.parameters(), {**SGD, "weight_decay": 0.0})    # unnamed parameters too
    assert len(only["params"]) == 6 and only["weight_decay"] == 0.0


def test_lazy_parameters_are_grouped_by_name():
    lazy = nn.LazyLinear(3)
    decayed, plain = param_groups(lazy.named_parameters(), SGD)
    assert decayed["params"] == [lazy.weight] and plain["params"] == [lazy.bias]


def test_sgd_step_decays_the_weight_and_leaves_the_bias():
    """Zero gradients, lr 0.1, weight decay 0.5: w <- w - 0.1 * 0.5 * w = 0.95 w; the bias stays."""
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(1.0)
    opt = build_optimizer(layer.named_parameters(), SGD)
    layer.weight.grad, layer.bias.grad = torch.zeros(1, 2), torch.zeros(1)
    opt.step()
    assert torch.allclose(layer.weight, torch.full((1, 2), 0.95)) and torch.equal(layer.bias, torch.ones(1))


def test_without_weight_decay_the_switch_changes_nothing():
    """Adam with weight decay 0 (the README's suite): the same parameters, bit for bit, either way."""
    def train(switch: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = _net()
        opt = build_optimizer(model.named_parameters(), {**SGD, "name": "adam", "weight_decay": 0.0,
                                                          "no_decay_norm_bias": switch})
        for step in range(3):
            torch.manual_seed(step)
            loss = model(torch.randn(4, 3, 3, 3)).pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(train(True), train(False)))


def test_clipping_scales_a_known_gradient_to_the_max_norm():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1, 1))
    opt = torch.optim.SGD([a, b], lr=0.1)
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([[4.0]])        # global norm 5
    norm = clip_gradients(opt, 1.0)
    assert norm.item() == pytest.approx(5.0)
    assert a.grad.item() == pytest.approx(0.6, rel=1e-5) and b.grad.item() == pytest.approx(0.8, rel=1e-5)
    clip_gradients(opt, 10.0)                                            # under the limit: unchanged
    assert a.grad.item() == pytest.approx(0.6, rel=1e-5)


@pytest.mark.parametrize("value", [0, -1.0, "five", True, float("inf")])
def test_a_bad_clip_value_is_a_clear_error(value):
    with pytest.raises(SSLZooError, match="optim.clip_grad must be null.*or a positive number"):
        clip_norm({"clip_grad": value})


def test_clip_values():
    assert clip_norm({"clip_grad": None}) is None and clip_norm({"clip_grad": 5}) == 5.0


def _grad_norm(trainer) -> float:
    grads = [p.grad for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_the_trainer_clips_the_true_gradients(tmp_path, tiny, amp):
    """After a step the gradients' global norm is the limit (fp16: unscaled by the GradScaler first)."""
    from sslzoo.meter import EpochMeter
    from sslzoo.trainer import Trainer
    norms = {}
    for clip in (None, 1e-3):
        trainer = Trainer(tiny(tmp_path / str(clip), algo="fixmatch", amp=amp, optim={"clip_grad": clip}))
        trainer.setup()
        trainer.train_step(trainer.batch(0), 0, EpochMeter())
        norms[clip] = _grad_norm(trainer)
    assert norms[None] > 1e-2 and norms[1e-3] == pytest.approx(1e-3, rel=1e-3)


def test_clipping_keeps_the_step_sync_free(tmp_path, monkeypatch):
    from test_sync_free import steps_reads
    assert steps_reads(tmp_path, "fixmatch", monkeypatch, optim={"clip_grad": 1.0}) == []
