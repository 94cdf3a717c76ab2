"""The built-in offline data sets: synthfer (generated, cached) and digits (scikit-learn)."""
from __future__ import annotations

import numpy as np
import pytest

from sslzoo.data import builtin, synthfer as sf
from sslzoo.data.labels import FER7
from sslzoo.errors import SSLZooError
from sslzoo.registry import DATASETS, describe

SMALL = {"n_train": 350, "n_test": 140}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _load(**options):
    return builtin.synthfer(**{**SMALL, **options})


def test_registered_with_descriptions():
    assert DATASETS._items["synthfer"] is builtin.synthfer
    assert DATASETS._items["digits"] is builtin.digits
    assert describe(builtin.synthfer).startswith("Procedurally generated 7-class")
    assert describe(builtin.digits).startswith("scikit-learn's bundled real handwritten digits")


def test_synthfer_shapes_dtypes_and_ids():
    b = _load()
    assert b.name == "synthfer" and b.classes == FER7 and b.num_classes == 7
    assert b.train.images.shape == (350, 32, 32, 3) and b.test.images.shape == (140, 32, 32, 3)
    assert b.train.images.dtype == np.uint8 and b.train.labels.dtype == np.int64
    assert b.train.ids[123] == "synthfer/train/000123" and b.test.ids[0] == "synthfer/test/000000"
    assert set(np.unique(b.train.labels)) == set(range(7)) == set(np.unique(b.test.labels))
    assert np.asarray(b.train.images).std() > 20          # not blank


@pytest.mark.parametrize("size", [24, 40, 96])
def test_synthfer_other_sizes(size):
    b = builtin.synthfer(image_size=size, n_train=14, n_test=7)
    assert b.train.images.shape == (14, size, size, 3) and b.image_size == size


def test_synthfer_deterministic_and_seeded():
    a, b = sf.generate(sf.SynthFEROptions(**SMALL)), sf.generate(sf.SynthFEROptions(**SMALL))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = sf.generate(sf.SynthFEROptions(**SMALL, data_seed=1))
    assert not np.array_equal(a["train_images"], c["train_images"])
    assert not np.array_equal(a["test_images"], c["test_images"])


def test_test_split_fixed_across_train_options():
    a = sf.generate(sf.SynthFEROptions(n_train=100, n_test=50))
    b = sf.generate(sf.SynthFEROptions(n_train=200, n_test=50, label_noise=0.2))
    np.testing.assert_array_equal(a["test_images"], b["test_images"])
    np.testing.assert_array_equal(a["test_labels"], b["test_labels"])


def test_class_imbalance_follows_rafdb():
    for n, ref in ((4000, sf.RAF_TRAIN_COUNTS), (1200, sf.RAF_TEST_COUNTS), (350, sf.RAF_TRAIN_COUNTS)):
        counts = sf.class_counts(n, ref)
        assert counts.sum() == n and counts.min() >= 1
        np.testing.assert_allclose(counts / n, np.asarray(ref) / sum(ref), atol=1.5 / n + 1e-9)
    b = _load()
    clean = sf.load_arrays(sf.SynthFEROptions(**SMALL))[0]["train_clean_labels"]
    np.testing.assert_array_equal(np.bincount(clean, minlength=7),
                                  sf.class_counts(350, sf.RAF_TRAIN_COUNTS))
    np.testing.assert_array_equal(np.bincount(b.test.labels, minlength=7),
                                  sf.class_counts(140, sf.RAF_TEST_COUNTS))
    assert FER7[int(np.argmax(np.bincount(b.train.labels)))] == "happiness"


def test_label_noise_only_on_train():
    arrays, _ = sf.load_arrays(sf.SynthFEROptions(n_train=1000, n_test=30, label_noise=0.1))
    flipped = arrays["train_labels"] != arrays["train_clean_labels"]
    assert flipped.sum() == 100
    assert set(np.unique(arrays["train_labels"][flipped])) <= set(range(7))
    b = builtin.synthfer(n_train=1000, n_test=30, label_noise=0.1)
    assert b.info["noisy_train_labels"] == 100
    clean = sf.generate(sf.SynthFEROptions(n_train=1000, n_test=30, label_noise=0.0))
    assert (clean["train_labels"] == clean["train_clean_labels"]).all()
    np.testing.assert_array_equal(clean["test_labels"], arrays["test_labels"])
    np.testing.assert_array_equal(clean["train_clean_labels"], arrays["train_clean_labels"])


def test_default_noise_rate():
    assert sf.SynthFEROptions().label_noise == pytest.approx(0.03)
    labels = np.arange(2000) % 7
    noisy = sf.add_label_noise(labels, 0.03, np.random.default_rng(0))
    assert (noisy != labels).sum() == 60
    # wrong labels land on classes in proportion to the RAF prior: rare 'fear' gets few of them
    noisy = sf.add_label_noise(labels, 0.5, np.random.default_rng(0))
    into = np.bincount(noisy[noisy != labels], minlength=7)
    assert into[FER7.index("happiness")] > 4 * into[FER7.index("fear")]


def test_cache_reused_and_memory_mapped(monkeypatch, _cache):
    first = _load()
    entries = list((_cache / "decoded").glob("synthfer-32px-*"))
    assert len(entries) == 1 and not first.info["from_cache"]
    assert not list((_cache / "decoded").glob(".tmp-*"))
    assert first.train.images.is_memory_mapped() and first.test.images.is_memory_mapped()

    def boom(opts, out=None):
        raise AssertionError("regenerated although a valid cache exists")

    monkeypatch.setattr(sf, "generate", boom)
    second = _load()
    assert second.info["from_cache"]
    np.testing.assert_array_equal(first.train.images, second.train.images)
    np.testing.assert_array_equal(first.train.labels, second.train.labels)


def test_cache_key_depends_on_options():
    a = sf.cache_path(sf.SynthFEROptions(**SMALL))
    assert a.name.startswith("synthfer-32px-") and a.parent.name == "decoded"
    assert a != sf.cache_path(sf.SynthFEROptions(**SMALL, data_seed=1))
    assert a != sf.cache_path(sf.SynthFEROptions(**SMALL, image_size=48))


@pytest.mark.parametrize("damage", ["garbage", "truncate", "labels"])
def test_corrupted_cache_regenerated(_cache, damage):
    import json
    first = np.asarray(_load().test.images)   # read now: damaging a mapped file in place would pull it away
    path = sf.cache_path(sf.SynthFEROptions(**SMALL)) / ("meta.json" if damage == "labels" else "images.npy")
    data = path.read_bytes()
    if damage == "labels":   # readable, but a label out of the 7 classes
        meta = json.loads(data)
        meta["labels"][0] = 9
        path.write_text(json.dumps(meta))
    else:
        path.write_bytes(b"not an npy file" if damage == "garbage" else data[: len(data) // 2])
    again = _load()
    assert not again.info["from_cache"]
    np.testing.assert_array_equal(first, again.test.images)
    assert _load().info["from_cache"]         # the rewritten cache file is valid


def test_unknown_and_bad_options():
    with pytest.raises(SSLZooError, match=r"n_trian.*Did you mean 'n_train'.*label_noise"):
        builtin.synthfer(n_trian=10)
    with pytest.raises(SSLZooError, match="label_noise"):
        builtin.synthfer(label_noise=0.9, **SMALL)
    with pytest.raises(SSLZooError, match="image_size"):
        builtin.synthfer(image_size=4, **SMALL)
    with pytest.raises(SSLZooError, match="integer"):
        builtin.synthfer(n_train="many")
    with pytest.raises(SSLZooError, match="'foo'"):
        builtin.digits(foo=1)


def test_string_options_are_coerced():
    b = builtin.synthfer(n_train="30", n_test="14", label_noise="0", data_seed="2", image_size="24")
    assert len(b.train) == 30 and b.image_size == 24


def test_preview_grid(tmp_path):
    from PIL import Image
    out = sf.preview_grid(_load(), tmp_path / "grid.png", per_class=4)
    with Image.open(out) as img:
        assert img.size[1] == 7 * (32 * 3 + 2)


def test_digits():
    b = builtin.digits(image_size=32)
    assert b.name == "digits" and b.classes == tuple("0123456789")
    assert len(b.train) + len(b.test) == 1797
    assert len(b.test) == pytest.approx(0.3 * 1797, abs=2)
    assert b.train.images.shape[1:] == (32, 32, 3) and b.train.images.dtype == np.uint8
    assert b.train.labels.dtype == np.int64 and np.asarray(b.train.images).max() > 200
    assert not set(b.train.ids) & set(b.test.ids)
    counts = np.bincount(b.test.labels, minlength=10)
    assert counts.min() >= 50 and counts.max() <= 56          # stratified
    again = builtin.digits(image_size=16)
    assert again.train.ids == b.train.ids and again.image_size == 16
