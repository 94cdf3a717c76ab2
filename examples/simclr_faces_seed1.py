"""A pretraining recipe in one file: the built-in simclr_faces, pretrained from another seed.

    sslzoo bench --suite default --plugin examples/simclr_faces_seed1.py \
        --set backbone.pretrained=simclr_faces_seed1 --out bench/default_seed1 --jobs 2

Why: every method of the default suite starts from one pretraining run; this checks how much
a comparison depends on it (docs/pretraining.md has the numbers). A recipe is a data set, a
method (``method(model, images, seed=, device=, log=, **params)``, training the backbone in
place) and its hyperparameters; its weights are built on first use and cached.
"""
import dataclasses

from sslzoo.pretrain import register_pretrained
from sslzoo.registry import PRETRAINED

register_pretrained("simclr_faces_seed1", dataclasses.replace(
    PRETRAINED.get("simclr_faces"), seed=1,
    description="simclr_faces pretrained from seed 1 instead of 0 (examples/simclr_faces_seed1.py)"))
