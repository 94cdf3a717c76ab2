"""CUDA paths (marked ``cuda``; skipped without a GPU). ``benchmarks/gpu_check.sh`` runs them.

Each has a CPU twin elsewhere in the suite; here the GPU must give the same thing:
views built on the GPU equal the CPU's bit for bit (every operation is integer, lookup-table
or float32 arithmetic in separate kernels), a training step reads nothing back to the host,
and a bf16 + channels_last run finishes.
"""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_views_on_the_gpu_equal_views_on_the_cpu():
    from sslzoo.data import augment as A
    from sslzoo.data.views import AugmentConfig, Views
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for cfg in (AugmentConfig(randaugment_n=3), AugmentConfig(crop_padding_mode="zeros", crop_prob=0.5),
                AugmentConfig(randaugment_first=True)):
        views = Views(32, cfg)
        for view in ("weak", "strong"):
            params = views.sample(view, 12, torch.Generator().manual_seed(1))
            cpu = views.apply(view, x, params)
            gpu = views.apply(view, x.cuda(), A.to_device(params, torch.device("cuda")))
            assert torch.equal(cpu, gpu.cpu()), (cfg, view)


@pytest.mark.parametrize("algo", ["fixmatch", "adacm", "flexmatch", "freematch"])
def test_steps_make_no_host_sync(tmp_path, algo):
    from sslzoo.meter import EpochMeter
    from sslzoo.trainer import Trainer
    trainer = Trainer(tiny_config(tmp_path, algo=algo, device="cuda", iters_per_epoch=8))
    trainer.setup()
    assert trainer.views_on_device
    trainer.algorithm.on_epoch_start(trainer.epoch_context(0))
    raws = [trainer.batches[s] for s in range(5)]
    for r in raws:   # what the loader's pin_memory does
        r.update(torch.utils.data._utils.pin_memory.pin_memory(r))
    meter = EpochMeter()
    trainer.train_step(trainer.to_batch(raws[0]), 0, meter)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 5):
            trainer.train_step(trainer.to_batch(raws[step]), step, meter)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert meter.read() is None


def test_bf16_channels_last_run_on_the_gpu(tmp_path):
    from sslzoo.trainer import train
    metrics = train(tiny_config(tmp_path, algo="adacm", device="cuda", amp="bf16", channels_last=True, epochs=2))
    assert metrics["status"] == "finished" and metrics["final_acc"] is not None
