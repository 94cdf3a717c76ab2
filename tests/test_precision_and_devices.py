"""Mixed precision, memory layout, devices and launching, exercised on the CPU (the CUDA twins are
in tests/test_cuda.py, run by benchmarks/gpu_check.sh)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import tiny_config
from sslzoo.meter import EpochMeter
from sslzoo.trainer import Trainer


def test_bf16_autocast_and_channels_last_train_end_to_end(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, algo="adacm", amp="bf16", channels_last=True, epochs=2))
    trainer.setup()
    assert trainer.amp_dtype == torch.bfloat16 and trainer.channels_last and not trainer.scaler.is_enabled()
    seen = []
    trainer.model.register_forward_hook(lambda m, i, o: seen.append((i[0].is_contiguous(
        memory_format=torch.channels_last), o[0].dtype)))
    metrics = trainer.fit()
    assert metrics["status"] == "finished" and len(metrics["history"]) == 2
    assert seen and all(cl for cl, _ in seen)                       # every input in channels_last
    assert {dtype for _, dtype in seen} == {torch.bfloat16}         # every forward under bf16 autocast
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_auto_precision_is_fp32_on_the_cpu(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    trainer.setup()
    assert trainer.amp_dtype is None and not trainer.channels_last


def test_a_skipped_gradscaler_step_advances_neither_the_schedule_nor_the_ema(tmp_path):
    """fp16 with a scale so large that the gradients overflow: GradScaler skips the optimizer
    step, and the learning-rate schedule and the EMA must not count it either."""
    trainer = Trainer(tiny_config(tmp_path, algo="fixmatch", amp="fp16", iters_per_epoch=6))
    trainer.setup()
    assert trainer.scaler.is_enabled() and trainer.amp_dtype == torch.float16
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 120)
    trainer.algorithm.on_epoch_start(trainer.epoch_context(0))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    sched, ema = trainer.scheduler.last_epoch, trainer.ema.updates
    trainer.train_step(trainer.batch(0), 0, EpochMeter())
    assert trainer.scaler.get_scale() < 2.0 ** 120                   # the step was skipped ...
    assert trainer.scheduler.last_epoch == sched and trainer.ema.updates == ema      # ... and not counted
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    trainer.train_step(trainer.batch(1), 1, EpochMeter())
    assert trainer.scheduler.last_epoch == sched + 1 and trainer.ema.updates == ema + 1


def test_pretraining_follows_the_runs_device_and_the_hash_covers_it(tmp_path, tiny, monkeypatch):
    """A --device cpu run on a machine with a GPU fine-tunes CPU-built weights, and runs whose
    weights were built on different device types never share a config hash."""
    from sslzoo import factory
    from sslzoo.config import config_hash
    seen = []
    monkeypatch.setattr(factory, "resolve_pretrained",
                        lambda backbone, size, device_type: seen.append(device_type) or
                        {k: v for k, v in backbone.items() if k != "pretrained"})
    cfg = tiny(tmp_path, backbone={"name": "smallcnn", "width": 8, "pretrained": "simclr_faces"}, device="cpu")
    factory.build_model(cfg, 7, 32)
    assert seen == ["cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # the same config on a machine with a GPU
    auto = {**cfg, "device": "auto"}
    assert config_hash(auto) != config_hash(cfg)                      # auto now means cuda-built weights
    assert config_hash({**cfg, "device": "cpu"}) == config_hash(cfg)


def test_bench_children_get_their_gpu_before_anything_imports_torch():
    """The run process's entry point imports no torch before its environment is in place, and
    --jobs N on G GPUs gives job slot s the GPU s mod G (round-robin)."""
    from sslzoo.bench.runner import child_env
    code = "import sys, sslzoo.bench.runner; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    envs = [child_env({}, jobs=4, slot=s, device="auto", gpus=["0", "1"]) for s in range(4)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0", "1"]
    assert "CUDA_VISIBLE_DEVICES" not in child_env({}, jobs=2, slot=0, device="cpu", gpus=["0", "1"])


def test_the_bench_launches_plain_subprocesses():
    from sslzoo.bench import runner
    source = open(runner.__file__).read()
    assert "forkserver" not in source and "get_preparation_data" not in source   # no multiprocessing internals
    assert isinstance(runner.BenchRunner([], "x").launcher, runner.SubprocessLauncher)


@pytest.mark.parametrize("word,expected", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("off", None),
                                           ("auto", None), (False, None)])
def test_amp_words_on_the_cpu(word, expected):
    from sslzoo.device import amp_dtype
    assert amp_dtype(word, torch.device("cpu")) == expected
