"""backbone.pretrained=imagenet with small images (<= 64 px, e.g. FER2013's 48 px).

resnet18's small-input stem is a 3x3 stride-1 conv1 (no max-pool), so ImageNet's 7x7
conv1 cannot load into it; everything else can. No network: torchvision's download
(``load_state_dict_from_url``) is replaced by a state dict shaped like ImageNet's.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torchvision.models import _api

from sslzoo.models.build import build_backbone


@pytest.fixture
def imagenet_state(monkeypatch) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()       # ImageNet's shapes (7x7 conv1, 1000-way fc)

    def fake_download(url: str, *args, **kwargs) -> dict[str, torch.Tensor]:
        assert "resnet18" in url
        return {k: v.clone() for k, v in state.items()}
    monkeypatch.setattr(_api, "load_state_dict_from_url", fake_download)
    return state


def _build(image_size: int, **extra) -> torch.nn.Module:
    cfg = {"name": "resnet18", "pretrained": "imagenet", **extra}
    return build_backbone(cfg, num_classes=7, image_size=image_size)


def test_small_input_loads_all_but_the_stem_and_says_so(imagenet_state):
    with pytest.warns(UserWarning) as record:
        model = _build(48)
    msgs = [str(w.message) for w in record if "conv1.weight" in str(w.message)]
    assert len(msgs) == 1
    assert "48" in msgs[0] or "small" in msgs[0]
    assert "small_input=false" in msgs[0]            # how to keep the ImageNet stem instead
    body = model.body.state_dict()
    assert body["conv1.weight"].shape == (64, 3, 3, 3)   # the small-input stem, freshly initialised
    for k, v in imagenet_state.items():
        if k.startswith("fc.") or k == "conv1.weight":
            continue
        assert torch.equal(body[k], v), k                # every other ImageNet tensor was loaded
    assert model(torch.zeros(2, 3, 48, 48))[0].shape[0] == 2


def test_full_size_or_imagenet_stem_loads_everything_silently(imagenet_state):
    for image_size, extra in ((224, {}), (48, {"small_input": False})):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model = _build(image_size, **extra)
        assert torch.equal(model.body.state_dict()["conv1.weight"], imagenet_state["conv1.weight"])
