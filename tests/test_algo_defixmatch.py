"""DeFixMatch: the debiased loss on known logits (and its sign), the labeled mask, the one concatenated
pass over [x, weak(u), strong(u), strong(x)], switches, and 1-epoch runs (finite, reproducible)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sslzoo.algorithm import Batch, ForwardOutput, StepContext
from sslzoo.algorithms.defixmatch import DeFixMatch, forward_with_labeled_views
from sslzoo.policies import build_policy
from sslzoo.policy import ThresholdPolicy
from sslzoo.trainer import train
from tests.conftest import TinyNet
from tests.test_algo_adamatch import _no_host_reads

CTX = StepContext(epoch=0, iteration=0, step=0, total_steps=10, iters_per_epoch=10, num_classes=2)
log = lambda rows: torch.log(torch.tensor(rows))


def _known():
    """Labeled: y = (0, 1); weak q_l rows (0.97, 0.03) trusted -> pseudo 0, (0.6, 0.4) not.
    Unlabeled: weak (0.98, 0.02) trusted -> pseudo 0, (0.5, 0.5) not."""
    out = ForwardOutput(log([[0.97, 0.03], [0.6, 0.4]]), torch.zeros(2, 3),
                        [log([[0.98, 0.02], [0.5, 0.5]]), log([[0.8, 0.2], [0.3, 0.7]])], [torch.zeros(2, 3)] * 2)
    batch = Batch(torch.zeros(2, 3, 2, 2), torch.tensor([0, 1]), [], torch.arange(2), torch.tensor([0, 1]))
    strong_l = log([[0.25, 0.75], [0.5, 0.5]])
    return out, batch, strong_l


def test_debiased_loss_on_known_logits_goes_negative_and_is_not_clamped():
    out, batch, strong_l = _known()
    res = DeFixMatch(2, build_policy("fixed:0.95")).losses(out, batch, CTX, strong_l)
    sup = 0.5 * ((-math.log(0.97) - math.log(0.4)) / 2 + (-math.log(0.25) - math.log(0.5)) / 2)
    unsup = 0.5 * -math.log(0.8) / 2                   # lambda = 0.5, one trusted of 2 unlabeled
    debias = -0.5 * -math.log(0.25) / 2                # the same loss on labeled image 0 (pseudo 0, not y)
    assert res.losses["sup"].item() == pytest.approx(sup, rel=1e-6)
    assert res.losses["unsup"].item() == pytest.approx(unsup, rel=1e-6)
    assert res.losses["debias"].item() == pytest.approx(debias, rel=1e-6)
    # the labeled strong view pays more than the unlabeled one: lambda (L_u - L_deb) < 0, kept as is
    assert res.losses["unsup"].item() + res.losses["debias"].item() == pytest.approx(0.25 * math.log(0.25 / 0.8))
    assert res.losses["unsup"].item() + res.losses["debias"].item() < 0
    assert res.stats["mask_ratio"].item() == 0.5 and res.stats["mask_ratio_labeled"].item() == 0.5
    assert res.stats["pseudo_label_acc_labeled"].item() == 100.0          # labeled image 0: pseudo 0 == y 0


def test_the_total_loss_itself_can_be_negative():
    """A labeled image confidently predicted as the wrong class: -lambda CE(wrong, strong) is unbounded below."""
    weak_l = log([[0.99, 0.01]])                                            # y = 1, pseudo 0, trusted
    strong_l = torch.tensor([[-20.0, 0.0]], requires_grad=True)            # p(0 | strong) ~ 2e-9
    out = ForwardOutput(weak_l, torch.zeros(1, 3), [log([[0.5, 0.5]]), log([[0.5, 0.5]])], [torch.zeros(1, 3)] * 2)
    batch = Batch(torch.zeros(1, 3, 2, 2), torch.tensor([1]), [], torch.arange(1), torch.tensor([-1]))
    res = DeFixMatch(2, build_policy("fixed:0.95")).losses(out, batch, CTX, strong_l)
    total = sum(res.losses.values())
    ce_wrong = F.cross_entropy(strong_l.detach(), torch.tensor([0])).item()    # ~ 20
    expected = 0.5 * (-math.log(0.01) + F.cross_entropy(strong_l.detach(), torch.tensor([1])).item()) - 0.5 * ce_wrong
    assert total.item() == pytest.approx(expected, rel=1e-5) and total.item() < -5
    total.backward()
    assert strong_l.grad[0, 0] > 0      # the gradient pushes f(strong(x)) further from the wrong pseudo-label


def test_correct_trusted_labeled_images_cancel_on_the_strong_view():
    """With lambda = 1/2, a trusted labeled image whose pseudo-label is y contributes nothing through its
    strong view: 1/(2B) CE(y, strong) - 1/(2B) CE(y, strong) = 0 (gradient included)."""
    weak_l = log([[0.97, 0.03]])
    strong_l = torch.tensor([[0.3, -0.4]], requires_grad=True)
    out = ForwardOutput(weak_l, torch.zeros(1, 3), [log([[0.5, 0.5]]), log([[0.5, 0.5]])], [torch.zeros(1, 3)] * 2)
    batch = Batch(torch.zeros(1, 3, 2, 2), torch.tensor([0]), [], torch.arange(1), torch.tensor([-1]))
    res = DeFixMatch(2, build_policy("fixed:0.95")).losses(out, batch, CTX, strong_l)
    (res.losses["sup"] + res.losses["debias"]).backward()
    assert torch.allclose(strong_l.grad, torch.zeros_like(strong_l), atol=1e-7)
    assert (res.losses["sup"] + res.losses["debias"]).item() == pytest.approx(-0.5 * math.log(0.97), rel=1e-5)


class _Recorder(ThresholdPolicy):
    name = "recorder"

    def __init__(self, first: bool):
        self.update_first, self.calls = first, []

    def weights(self, inp, ctx):
        self.calls.append(("weights", inp.index is None))
        return torch.ones(inp.probs.shape[0])

    def update(self, inp, ctx):
        self.calls.append(("update", inp.index is None))


@pytest.mark.parametrize("first", [False, True])
def test_labeled_batch_is_weighed_with_the_same_state_and_never_updates_it(first):
    out, batch, strong_l = _known()
    policy = _Recorder(first)
    DeFixMatch(2, policy).losses(out, batch, CTX, strong_l)
    # (name, index is None): the unlabeled call has the pool index, the labeled one has none
    expected = [("weights", False), ("weights", True), ("update", False)]
    assert policy.calls == ([expected[2]] + expected[:2] if first else expected)


def test_stateful_policy_memory_only_sees_unlabeled_samples():
    out, batch, strong_l = _known()
    policy = build_policy("flexmatch")
    policy.setup(2, 5)
    DeFixMatch(2, policy).losses(out, batch, CTX, strong_l)
    assert policy.memory.tolist() == [0, -1, -1, -1, -1]                  # unlabeled sample 0 only


def test_relative_policy_masks_both_sides_with_the_labeled_confidence():
    out, batch, strong_l = _known()                  # labeled mean max (0.97 + 0.6) / 2 = 0.785; tau 0.5
    res = DeFixMatch(2, build_policy("relative:0.5")).losses(out, batch, CTX, strong_l)
    assert res.stats["mask_ratio"].item() == 1.0 and res.stats["mask_ratio_labeled"].item() == 1.0


def _step_batch(n_l=2, n_u=3):
    g = torch.Generator().manual_seed(1)
    img = lambda n: torch.randn(n, 3, 6, 6, generator=g)
    return Batch(img(n_l), torch.tensor([0, 2]), [img(n_u), img(n_u)], torch.arange(n_u), torch.full((n_u,), -1),
                 l_views=[img(n_l)])


def test_one_concatenated_pass_in_the_declared_order_and_separate_mode():
    torch.manual_seed(0)
    net = TinyNet(3).eval()                          # eval: the same image gives the same logits in any batch
    batch = _step_batch()
    sizes = []
    hook = net.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    out, l_logits, l_feats = forward_with_labeled_views(net, batch, "concat")
    assert sizes == [2 + 3 + 3 + 2]
    assert torch.allclose(l_logits[0], net(batch.l_views[0])[0], atol=1e-6)
    assert torch.allclose(out.u_logits[1], net(batch.u_views[1])[0], atol=1e-6)
    assert l_feats[0].shape == (2, 4)
    sizes.clear()
    sep, sep_l, _ = forward_with_labeled_views(net, batch, "separate")
    assert sizes == [2, 3, 3, 2] and torch.allclose(sep_l[0], l_logits[0], atol=1e-6)
    hook.remove()
    with pytest.raises(ValueError, match="forward_mode"):
        forward_with_labeled_views(net, batch, "interleaved")
    # the step uses that pass: its terms equal losses() on the same logits
    algo = DeFixMatch(3, build_policy("fixed:0.5"))
    res = algo.step(net, batch, StepContext(0, 0, 0, 10, 10, 3))
    ref = DeFixMatch(3, build_policy("fixed:0.5")).losses(out, batch, StepContext(0, 0, 0, 10, 10, 3), l_logits[0])
    for key in ("sup", "unsup", "debias"):
        assert res.losses[key].item() == pytest.approx(ref.losses[key].item(), rel=1e-5)


def test_step_reads_nothing_on_the_host():
    torch.manual_seed(0)
    net = TinyNet(3)
    algo = DeFixMatch(3, build_policy("relative:0.5"))
    with _no_host_reads():
        res = algo.step(net, _step_batch(), StepContext(0, 0, 0, 10, 10, 3))
        sum(res.losses.values()).backward()
    assert all(math.isfinite(v.item()) for v in res.losses.values())


def test_switches_and_validation():
    out, batch, strong_l = _known()
    no_debias = DeFixMatch(2, build_policy("fixed:0.95"), debias=False).losses(out, batch, CTX, strong_l)
    assert set(no_debias.losses) == {"sup", "unsup"} and "mask_ratio_labeled" not in no_debias.stats
    weak_only = DeFixMatch(2, build_policy("fixed:0.95"), sup_strong=False, debias=False)
    assert weak_only.extra_labeled_views == ()                             # nothing reads a strong labeled view
    res = weak_only.losses(out, batch, CTX)
    assert res.losses["sup"].item() == pytest.approx((-math.log(0.97) - math.log(0.4)) / 2, rel=1e-6)
    assert DeFixMatch(2, build_policy("fixed:0.95")).extra_labeled_views == ("strong",)
    with pytest.raises(ValueError, match="strong view"):
        DeFixMatch(2, build_policy("fixed:0.95")).losses(out, batch, CTX)
    subset = DeFixMatch(2, build_policy("fixed:0.95"), unsup_norm="subset").losses(out, batch, CTX, strong_l)
    assert subset.losses["debias"].item() == pytest.approx(0.5 * math.log(0.25), rel=1e-6)   # / 1 trusted
    for bad in ({"unsup_norm": "all"}, {"lambda_u": -1.0}, {"temperature": 0.0}):
        with pytest.raises(ValueError):
            DeFixMatch(2, build_policy("fixed:0.95"), **bad)
    assert DeFixMatch.hyperparameters()["lambda_u"] == 0.5


def test_one_epoch_smoke_is_finite_and_reproducible(tiny, tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = tiny(tmp_path / name, algo="defixmatch", policy="fixed:0.3")
        assert train(cfg)["status"] == "finished"
        runs.append(json.loads((Path(cfg["out"]) / "metrics.json").read_text()))
    entry = runs[0]["history"][0]
    assert set(entry["losses"]) == {"total", "sup", "unsup", "debias"}
    assert all(math.isfinite(v) for v in entry["losses"].values()) and entry["losses"]["debias"] <= 0
    assert "mask_ratio_labeled" in entry["stats"]
    strip = lambda m: [{k: v for k, v in e.items() if k not in ("time_s", "img_per_s")} for e in m["history"]]
    assert strip(runs[0]) == strip(runs[1])


def test_separate_forward_mode_and_relative_policy_train(tiny, tmp_path):
    result = train(tiny(tmp_path, algo="defixmatch", policy="relative", forward_mode="separate"))
    assert result["status"] == "finished" and "relative_threshold" in result["history"][0]["policy_stats"]
