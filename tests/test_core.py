"""Registry, splits, backbones and checkpoint loading of backbone weights."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision

from sslzoo.data.splits import make_split, per_class_counts
from sslzoo.errors import SSLZooError
from sslzoo.models import build_backbone
from sslzoo.registry import ALGORITHMS, BACKBONES, POLICIES, Registry


def test_unknown_names_list_known_ones_with_close_match():
    with pytest.raises(SSLZooError) as err:
        ALGORITHMS.get("fixmach")
    assert "Did you mean 'fixmatch'" in str(err.value) and "adacm" in str(err.value)


def test_register_twice_with_different_objects_fails():
    reg: Registry = Registry("thing")
    reg.register("a")(type("A", (), {}))
    with pytest.raises(SSLZooError, match="registered twice"):
        reg.register("a")(type("B", (), {}))


def test_core_components_registered():
    assert {"supervised", "fixmatch", "adacm"} <= set(ALGORITHMS.names())
    assert {"fixed", "adacm"} <= set(POLICIES.names())
    assert {"smallcnn", "resnet18", "wrn28_2"} <= set(BACKBONES.names())


def test_balanced_split_is_seeded_disjoint_and_complete():
    labels = np.repeat(np.arange(7), 20)
    s1 = make_split(labels, 70, seed=3, num_classes=7)
    s2 = make_split(labels, 70, seed=3, num_classes=7)
    s3 = make_split(labels, 70, seed=4, num_classes=7)
    assert np.array_equal(s1.labeled, s2.labeled) and not np.array_equal(s1.labeled, s3.labeled)
    assert np.bincount(labels[s1.labeled]).tolist() == [10] * 7
    assert len(np.intersect1d(s1.labeled, s1.unlabeled)) == 0
    assert len(s1.labeled) + len(s1.unlabeled) == len(labels)


def test_validation_split_is_removed_from_labeled_and_unlabeled():
    labels = np.repeat(np.arange(3), 10)
    s = make_split(labels, 6, seed=0, num_classes=3, val_per_class=2)
    assert np.bincount(labels[s.val]).tolist() == [2, 2, 2]
    assert len(set(s.val) & set(s.labeled)) == 0 and len(set(s.val) & set(s.unlabeled)) == 0
    assert len(s.val) + len(s.labeled) + len(s.unlabeled) == 30


def test_too_many_labels_for_a_class_names_the_class_and_counts():
    labels = np.array([0] * 10 + [1] * 2)
    with pytest.raises(SSLZooError, match=r"Class 'b' has 2 training images, but 3 labels"):
        make_split(labels, 6, seed=0, num_classes=2, class_names=("a", "b"))


def test_adacm_rafdb_protocol_counts():
    assert per_class_counts(np.repeat(np.arange(7), 700), 4000, 7, "adacm_rafdb").tolist() == \
        [625, 250, 625, 625, 625, 625, 625]
    assert per_class_counts(np.repeat(np.arange(7), 700), 100, 7, "adacm_rafdb").tolist() == \
        [15, 10, 15, 15, 15, 15, 15]
    with pytest.raises(SSLZooError, match="official Ada-CM RAF-DB split"):
        per_class_counts(np.repeat(np.arange(7), 700), 70, 7, "adacm_rafdb")


@pytest.mark.parametrize("name,size", [("smallcnn", 32), ("wrn28_2", 32), ("resnet18", 32)])
def test_backbones_return_logits_and_unit_norm_features(name, size):
    model = build_backbone({"name": name}, 7, size).eval()
    logits, feats = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 7)
    assert torch.allclose(feats.norm(dim=1), torch.ones(2), atol=1e-5)


def test_backbone_options_a_factory_does_not_take_are_named_not_swallowed():
    with pytest.warns(UserWarning, match=r"'smallcnn' ignores option\(s\) 'widht' \(did you mean 'width'\?\)"):
        model = build_backbone({"name": "smallcnn", "widht": 8}, 7, 32)
    default = build_backbone({"name": "smallcnn"}, 7, 32)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in default.parameters())
    with pytest.warns(UserWarning, match="'wrn28_2' ignores option\\(s\\) 'weights'"):
        build_backbone({"name": "wrn28_2", "weights": "ms.pth"}, 7, 32)   # one --set for a mixed suite
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_backbone({"name": "smallcnn", "width": 8, "dropout": 0.1}, 7, 32)
        build_backbone({"name": "resnet18", "small_input": None}, 7, 32)  # None: the factory's default


def _msceleb_like_checkpoint(path, prefix="module.", drop=None):
    net = torchvision.models.resnet18(weights=None, num_classes=1000)
    state = {f"{prefix}{k}": v for k, v in net.state_dict().items() if k != drop}
    torch.save({"state_dict": state, "epoch": 3}, path)
    return net


def test_resnet18_loads_msceleb_style_checkpoint_with_module_prefix(tmp_path):
    net = _msceleb_like_checkpoint(tmp_path / "ms.pth")
    model = build_backbone({"name": "resnet18", "weights": str(tmp_path / "ms.pth")}, 7, 224)
    assert torch.equal(model.body.conv1.weight, net.conv1.weight)


def test_resnet18_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(SSLZooError, match="does not exist"):
        build_backbone({"name": "resnet18", "weights": str(tmp_path / "none.pth")}, 7, 224)
    _msceleb_like_checkpoint(tmp_path / "bad.pth", drop="layer1.0.conv1.weight")
    with pytest.raises(SSLZooError, match="missing key"):
        build_backbone({"name": "resnet18", "weights": str(tmp_path / "bad.pth")}, 7, 224)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SSLZooError, match="could not read"):
        build_backbone({"name": "resnet18", "weights": str(tmp_path / "junk.pth")}, 7, 224)


def test_policy_call_order_follows_update_first():
    from sslzoo.algorithm import PolicyInput, StepContext, ThresholdPolicy

    class Recorder(ThresholdPolicy):
        def __init__(self):
            self.calls = []

        def weights(self, inp, ctx):
            self.calls.append("weights")
            return torch.ones(len(inp.probs))

        def update(self, inp, ctx):
            self.calls.append("update")

    class UpdateFirst(Recorder):
        update_first = True

    inp, ctx = PolicyInput(torch.full((2, 3), 1 / 3)), StepContext(0, 0, 0, 1, 1, 1)
    late, early = Recorder(), UpdateFirst()
    late(inp, ctx), early(inp, ctx)
    assert late.calls == ["weights", "update"] and early.calls == ["update", "weights"]
    assert POLICIES.get("freematch").update_first and POLICIES.get("softmatch").update_first
    assert not POLICIES.get("flexmatch").update_first


def test_list_names_every_registry_entry_in_aligned_columns(capsys):
    from sslzoo import cli
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    section = lines[lines.index("data sets:") + 1: lines.index("backbones:")]
    assert any(line.split()[0] == "synthfer_faces" for line in section)
    starts = {len(line) - len(line.lstrip()[len(line.split()[0]):].lstrip()) for line in section}
    assert len(starts) == 1   # every description starts in the same column
