"""Identity pretraining (synthfer_faces) and backbone weights from checkpoints (smallcnn, resnet18)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sslzoo.data.synthfaces import (IDENTITY_KEYS, SynthFacesOptions, generate, identity_labels, photo_params)
from sslzoo.data.synthfer import nuisance_params
from sslzoo.errors import SSLZooError
from sslzoo.models import build_backbone
from sslzoo.models.smallcnn import SmallCNN
from sslzoo.registry import DATASETS


def test_identity_labels_cover_every_person():
    who = identity_labels(30, 12, np.random.default_rng(0))
    assert sorted(set(who.tolist())) == list(range(12)) and len(who) == 30


def test_a_person_keeps_identity_parameters_and_photos_vary_the_rest():
    people = nuisance_params(4, np.random.default_rng(1))
    params, who = photo_params(40, people, np.random.SeedSequence(2))
    for person in range(4):
        rows = np.flatnonzero(who == person)
        assert len(rows) >= 2
        for key in IDENTITY_KEYS:
            assert np.array_equal(params[key][rows], np.repeat(people[key][person:person + 1], len(rows), axis=0))
        assert len(set(params["yaw"][rows].tolist())) == len(rows)           # pose is per photo
        assert len(set(params["mouth_curve"][rows].tolist())) == len(rows)   # so is the expression


def test_synthfer_faces_is_deterministic_and_distinct_from_synthfer():
    opts = SynthFacesOptions(n_identities=3, n_train=12, n_test=7, image_size=16)
    a, b = generate(opts), generate(opts)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["train_images"].shape == (12, 16, 16, 3) and set(a["test_labels"].tolist()) == {0, 1, 2}
    other = generate(SynthFacesOptions(n_identities=3, n_train=12, n_test=7, image_size=16, data_seed=1))
    assert not np.array_equal(a["train_images"], other["train_images"])
    synth = DATASETS.get("synthfer")(n_train=12, n_test=7, image_size=16)
    assert not any(np.array_equal(img, s) for img in a["train_images"] for s in synth.train.images)


def test_synthfer_faces_loader_checks_options():
    bundle = DATASETS.get("synthfer_faces")(n_identities="4", n_train=8, n_test=7, image_size=16)
    assert bundle.classes == ("person0", "person1", "person2", "person3") and len(bundle.train) == 8
    assert bundle.info["train_images_per_identity"]["min"] >= 1
    with pytest.raises(SSLZooError, match="n_train and n_test >= n_identities and >= 7"):
        DATASETS.get("synthfer_faces")(n_identities=10, n_train=8, n_test=10)
    with pytest.raises(SSLZooError, match="Did you mean 'n_identities'"):
        DATASETS.get("synthfer_faces")(n_identity=10)


def _sslzoo_checkpoint(path, width: int, num_classes: int):
    """An sslzoo checkpoint.pt whose EMA and raw model differ, as after training."""
    ema, raw = SmallCNN(num_classes, width), SmallCNN(num_classes, width)
    torch.save({"format": "sslzoo-checkpoint-v1", "model": raw.state_dict(),
                "ema": {"module": ema.state_dict(), "updates": 5}}, path)
    return ema


def test_smallcnn_loads_the_ema_features_of_an_sslzoo_checkpoint_and_keeps_a_new_head(tmp_path):
    ema = _sslzoo_checkpoint(tmp_path / "checkpoint.pt", width=8, num_classes=200)
    model = build_backbone({"name": "smallcnn", "width": 8, "weights": str(tmp_path / "checkpoint.pt")}, 7, 32)
    for (name, got), want in zip(model.features.state_dict().items(), ema.features.state_dict().values()):
        assert torch.equal(got, want), name
    assert model.head.fc.out_features == 7


def test_smallcnn_loads_a_plain_state_dict_with_module_prefix(tmp_path):
    net = SmallCNN(3, 8)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w.pth")
    model = build_backbone({"name": "smallcnn", "width": 8, "weights": str(tmp_path / "w.pth")}, 7, 32)
    assert torch.equal(model.features[0][0].weight, net.features[0][0].weight)


def test_checkpoints_without_batch_norm_counters_load(tmp_path):
    net = SmallCNN(3, 8)
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, tmp_path / "old.pth")
    model = build_backbone({"name": "smallcnn", "width": 8, "weights": str(tmp_path / "old.pth")}, 7, 32)
    assert torch.equal(model.features[1][1].running_var, net.features[1][1].running_var)


def test_smallcnn_weight_errors_name_the_problem(tmp_path):
    _sslzoo_checkpoint(tmp_path / "w16.pt", width=16, num_classes=7)
    with pytest.raises(SSLZooError, match="another backbone.width.*shape mismatch"):
        build_backbone({"name": "smallcnn", "width": 8, "weights": str(tmp_path / "w16.pt")}, 7, 32)
    with pytest.raises(SSLZooError, match="does not exist"):
        build_backbone({"name": "smallcnn", "weights": str(tmp_path / "none.pt")}, 7, 32)
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "resnet.pth")   # not a smallcnn
    with pytest.raises(SSLZooError, match="missing key"):
        build_backbone({"name": "smallcnn", "weights": str(tmp_path / "resnet.pth")}, 7, 32)
    torch.save({"state_dict": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(SSLZooError, match="holds no state dict"):
        build_backbone({"name": "smallcnn", "weights": str(tmp_path / "list.pth")}, 7, 32)


def test_resnet18_takes_an_sslzoo_checkpoint_of_a_resnet18_run(tmp_path):
    source = build_backbone({"name": "resnet18"}, 5, 32)
    torch.save({"format": "sslzoo-checkpoint-v1", "model": source.state_dict(),
                "ema": {"module": source.state_dict(), "updates": 1}}, tmp_path / "checkpoint.pt")
    model = build_backbone({"name": "resnet18", "weights": str(tmp_path / "checkpoint.pt")}, 7, 32)
    assert torch.equal(model.body.layer4[1].conv2.weight, source.body.layer4[1].conv2.weight)


def test_pretrain_on_synthfer_faces_then_fine_tune_on_synthfer(tmp_path, tiny):
    """The documented two-step recipe, tiny: identity pretraining, then its checkpoint as weights."""
    from sslzoo.trainer import train
    pre = tiny(tmp_path, algo="supervised", dataset="synthfer_faces", labels=60, split="stratified",
                      data={"n_identities": 5, "n_train": 60, "n_test": 20}, out=str(tmp_path / "pre"))
    train(pre)
    ckpt = torch.load(tmp_path / "pre" / "checkpoint.pt", map_location="cpu", weights_only=True)
    fine = tiny(tmp_path, algo="fixmatch", backbone={"name": "smallcnn", "width": 8,
                                                            "weights": str(tmp_path / "pre" / "checkpoint.pt")})
    model = build_backbone(fine["backbone"], 7, 32)
    assert torch.equal(model.features[2][3].weight, ckpt["ema"]["module"]["features.2.3.weight"])
    result = train(fine)
    assert np.isfinite(result["final_acc"])


def test_linear_probe_separates_informative_from_uninformative_features(capsys):
    from benchmarks.linear_probe import main, probe_accuracy
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    informative = np.eye(3)[y] + 0.1 * rng.standard_normal((120, 3))
    noise = rng.standard_normal((120, 3))
    assert probe_accuracy(informative[::2], y[::2], informative[1::2], y[1::2]) == 100.0
    assert probe_accuracy(noise[::2], y[::2], noise[1::2], y[1::2]) < 60.0
    args = ["--seeds", "0", "--set", "data.n_train=140", "--set", "data.n_test=70", "--set", "backbone.width=8"]
    assert main(args) == 0
    assert "random init (seed 0):" in capsys.readouterr().out
    assert main([*args, "--weights", "/nonexistent.pt"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*args, "--plugin", "/nonexistent.py"]) == 2
    assert "Plugin file '/nonexistent.py' does not exist" in capsys.readouterr().err
