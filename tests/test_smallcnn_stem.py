"""smallcnn's first stride follows the run's image size (1 up to 64 px, 2 above), as resnet18's stem does.

Why it matters: at 224 px a stride-1 first block keeps 48 full-resolution feature maps per
convolution for backward (1.3 GB on the host for one FixMatch step at B = 16); the built-in
32 px data must keep the network it always had.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from sslzoo.config import resolve
from sslzoo.errors import SSLZooError
from sslzoo.factory import build_model
from sslzoo.models.build import build_backbone
from sslzoo.models.smallcnn import SmallCNN, default_stem_stride


def _first_stride(model: torch.nn.Module) -> int:
    return model.features[0][0].stride[0]


def test_stride_rule_cuts_at_64_px():
    assert [default_stem_stride(s) for s in (32, 48, 64, 65, 112, 224)] == [1, 1, 1, 2, 2, 2]


def test_build_backbone_hands_the_image_size_over_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # image_size is not an "ignored option"
        small = build_backbone({"name": "smallcnn", "width": 4}, 3, 32)
        large = build_backbone({"name": "smallcnn", "width": 4}, 3, 224)
        forced = build_backbone({"name": "smallcnn", "width": 4, "stem_stride": 1}, 3, 224)
        user_size = build_backbone({"name": "smallcnn", "width": 4, "image_size": 32}, 3, 224)
    assert (_first_stride(small), _first_stride(large), _first_stride(forced)) == (1, 2, 1)
    assert _first_stride(user_size) == 2                # the data decides the size, not the section


def test_feature_map_sizes_at_224_px():
    model = build_backbone({"name": "smallcnn", "width": 4}, 3, 224).eval()
    with torch.no_grad():
        assert model.features(torch.zeros(1, 3, 224, 224)).shape[-2:] == (14, 14)   # 224 / 2 / 2^3
        logits, features = model(torch.zeros(2, 3, 224, 224))
    assert logits.shape == (2, 3) and features.shape == (2, 16)


def test_stride_one_at_224_is_the_previous_network():
    """stem_stride=1 gives exactly the former full-resolution block (same init, same outputs)."""
    torch.manual_seed(0)
    before = SmallCNN(3, 4).eval()                  # the class's own default: stride 1
    torch.manual_seed(0)
    after = build_backbone({"name": "smallcnn", "width": 4, "stem_stride": 1}, 3, 224).eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(before(x)[0], after(x)[0])


def test_weights_fit_either_stride():
    """The shapes do not depend on the stride: 32 px pretraining loads into a 224 px network."""
    small = SmallCNN(3, 4, stem_stride=1)
    large = SmallCNN(3, 4, stem_stride=2)
    large.load_state_dict(small.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), large.state_dict().values()))


def test_bad_stride_is_a_clear_error():
    with pytest.raises(SSLZooError, match="stem_stride=3"):
        build_backbone({"name": "smallcnn", "stem_stride": 3}, 3, 224)


def test_a_run_at_224_px_builds_the_strided_network():
    cfg = resolve([{"dataset": "synthfer", "algo": "supervised", "image_size": 224}])
    model = build_model(cfg, num_classes=7, image_size=224)
    assert _first_stride(model) == 2
    cfg32 = resolve([{"dataset": "synthfer", "algo": "supervised"}])
    assert _first_stride(build_model(cfg32, num_classes=7, image_size=32)) == 1
