"""``synthfer_faces``: synthfer's faces labeled by *identity*, an offline analog of MS-Celeb-1M.

Why: the Ada-CM paper fine-tunes a ResNet-18 pre-trained for face recognition on MS-Celeb-1M.
This data set lets a backbone be pre-trained the same way on the built-in data: the same
renderer and distributions as :mod:`sslzoo.data.synthfer`, but each image belongs to one of
``n_identities`` people whose identity parameters (face shape, skin, hair, eye and brow
geometry, feature positions, lip colour) are fixed, while expression (drawn with RAF-DB's
class prior, then hidden), pose, scene and camera vary per image. The label is the identity,
so nothing about expressions is supervised. Its random streams are separate from synthfer's
(different seed paths), so no synthfer image reappears here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import SSLZooError
from .base import DataBundle, ImageSet
from .cache import decoded_root
from .synthfer import (GENERATOR_VERSION, RAF_TRAIN_COUNTS, cache_key, check_image_size, draw_labels,
                       expression_params, generated_entry, nuisance_params, options_key, render)

# nuisance_params keys that describe the person, not the photo (pose, scene, camera stay per image).
IDENTITY_KEYS = ("skin", "hair", "iris", "face_a", "face_b", "jaw", "eye_x", "eye_y", "eye_w", "eye_id",
                 "brow_h", "brow_len", "brow_t", "nose_y", "mouth_y", "lip_red", "hair_w", "hair_cut",
                 "hairline", "hair_slant", "bald")
_SEED_PATH = 1001   # SeedSequence([data_seed, 1001, ...]): synthfer itself uses 1, 2 and 3


@dataclass(frozen=True)
class SynthFacesOptions:
    n_identities: int = 200
    n_train: int = 18000
    n_test: int = 2000
    image_size: int = 32
    data_seed: int = 0

    def validate(self) -> None:
        check_image_size("synthfer_faces", self.image_size)
        if self.n_identities < 2:
            raise SSLZooError(f"synthfer_faces needs n_identities >= 2; got {self.n_identities}.")
        if min(self.n_train, self.n_test) < max(7, self.n_identities):
            raise SSLZooError(f"synthfer_faces needs n_train and n_test >= n_identities and >= 7 (every "
                              f"person and every hidden expression in each split); got n_train={self.n_train}, "
                              f"n_test={self.n_test}, n_identities={self.n_identities}.")

    def cache_key(self) -> str:
        return options_key(self)


def identity_labels(n: int, n_identities: int, rng: np.random.Generator) -> np.ndarray:
    """Every person at least once, the rest uniformly at random, in random order."""
    ids = np.concatenate([np.arange(n_identities), rng.integers(0, n_identities, n - n_identities)])
    return rng.permutation(ids).astype(np.int64)


def photo_params(n: int, people: dict[str, np.ndarray], seed: np.random.SeedSequence
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``n`` photos: who is in each (the label) and its rendering parameters.

    Identity parameters come from the person; expression, pose, scene and camera from the photo.
    """
    n_identities = len(people["skin"])
    id_seq, expr_label_seq, expr_seq, photo_seq = seed.spawn(4)
    who = identity_labels(n, n_identities, np.random.default_rng(id_seq))
    expressions = draw_labels(n, RAF_TRAIN_COUNTS, np.random.default_rng(expr_label_seq))
    params = {**expression_params(expressions, np.random.default_rng(expr_seq)),
              **nuisance_params(n, np.random.default_rng(photo_seq))}
    for key in IDENTITY_KEYS:
        params[key] = people[key][who]
    return params, who


def generate(opts: SynthFacesOptions, out: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Both splits: the same people in train and test, different photos of them (rendered into
    ``out``, train rows then test rows, when given)."""
    opts.validate()
    out = np.empty((opts.n_train + opts.n_test, opts.image_size, opts.image_size, 3), np.uint8) if out is None else out
    people_seq, train_seq, test_seq = np.random.SeedSequence([opts.data_seed, _SEED_PATH]).spawn(3)
    people = nuisance_params(opts.n_identities, np.random.default_rng(people_seq))
    arrays: dict[str, np.ndarray] = {}
    rows = {"train": out[:opts.n_train], "test": out[opts.n_train:]}
    for split, n, seq in (("train", opts.n_train, train_seq), ("test", opts.n_test, test_seq)):
        params_seq, render_seq = seq.spawn(2)
        params, who = photo_params(n, people, params_seq)
        arrays[f"{split}_images"] = render(params, opts.image_size, render_seq, rows[split])
        arrays[f"{split}_labels"] = who
    return arrays


def cache_path(opts: SynthFacesOptions) -> Path:
    """The cache entry folder of these options (whether built or not)."""
    return decoded_root() / cache_key("synthfer_faces", opts)


def load_arrays(opts: SynthFacesOptions) -> tuple[dict[str, np.ndarray], bool]:
    """The data set's arrays (images memory-mapped) and whether they came from the cache."""
    opts.validate()
    entry = generated_entry("synthfer_faces", opts, lambda o, out: generate(o, out), opts.n_identities)
    labels = np.asarray(entry.meta["labels"], dtype=np.int64)
    return {"train_images": entry.images[:opts.n_train], "test_images": entry.images[opts.n_train:],
            "train_labels": labels[:opts.n_train], "test_labels": labels[opts.n_train:]}, entry.hit


def load_bundle(opts: SynthFacesOptions) -> DataBundle:
    arrays, from_cache = load_arrays(opts)
    width = len(str(opts.n_identities - 1))
    classes = tuple(f"person{i:0{width}d}" for i in range(opts.n_identities))
    train = ImageSet(arrays["train_images"], arrays["train_labels"],
                     [f"synthfer_faces/train/{i:06d}" for i in range(opts.n_train)])
    test = ImageSet(arrays["test_images"], arrays["test_labels"],
                    [f"synthfer_faces/test/{i:06d}" for i in range(opts.n_test)])
    per_person = np.bincount(arrays["train_labels"], minlength=opts.n_identities)
    info = {"generator": f"synthfer v{GENERATOR_VERSION} (identity labels)", "options": asdict(opts),
            "cache_file": str(cache_path(opts)), "from_cache": from_cache,
            "train_images_per_identity": {"min": int(per_person.min()), "max": int(per_person.max())}}
    return DataBundle(name="synthfer_faces", classes=classes, train=train, test=test, info=info)
