"""The built-in pretraining recipes (``sslzoo list`` shows them under "pretrained backbones")."""
from __future__ import annotations

from .simclr import simclr
from .store import PretrainRecipe, register_pretrained

# The FER papers' MS-Celeb-1M backbone, made offline: 18,000 synthetic faces of 200 people
# (synthfer_faces), learnt without their labels. Pretraining to recognise those people instead
# made every method worse (docs/pretraining.md: identity features keep little expression).
register_pretrained("simclr_faces", PretrainRecipe(
    description="SimCLR (NT-Xent) on the 18,000 synthfer_faces images, labels unused; ~3 min on 2 CPU cores",
    dataset="synthfer_faces", method=simclr,
    params={"epochs": 6, "batch_size": 256, "lr": 2e-3, "temperature": 0.2},
    # The weights behind the README's numbers: smallcnn of width 16 (configs/datasets/synthfer.yaml)
    # at 32 px, built on the CPU (the same file from an empty and from a warm cache).
    reference_sha256={"dca67ffbeb03fe89": "1e568ad8a08933d6d8c38358ba9ad3b5b611393a001dc0adbecc491a75c6db13"}))
