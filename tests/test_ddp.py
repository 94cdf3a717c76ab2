"""DDP on CPU (gloo): a 2-process run completes, writes one set of outputs, and all ranks agree.

Every rank dumps its final model, EMA and algorithm state (``SSLZOO_DUMP_STATE=dir`` ->
``dir/rank<k>.pt``); they must be identical: Ada-CM's margin is estimated by every rank
over the whole labeled set with the same (rank 0's batch-norm statistics) EMA model,
gradients are averaged, and the algorithm's own trainable head is averaged too.
"""
from __future__ import annotations

import json
import subprocess

import pytest
import torch
import yaml

from sslzoo import checkpoint, cli
from sslzoo.distributed import DistContext
from sslzoo.errors import SSLZooError
from sslzoo.registry import ALGORITHMS, load_plugin
from sslzoo.trainer import train
from tests.algo_testkit import train_two_processes
from tests.conftest import TINY

# Ada-CM plus a toy auxiliary head owned by the algorithm (outside the DDP-wrapped backbone),
# so the run also covers the trainer's gradient averaging of algorithm modules.
PLUGIN = '''
import torch.nn.functional as F
from torch import nn
from sslzoo.registry import register_algorithm
from sslzoo.algorithms.adacm import AdaCM


@register_algorithm("adacm_aux_ddp_test")
class AdaCMAux(AdaCM):
    """Ada-CM + a linear auxiliary classifier on the labeled features (test only)."""

    name = "adacm_aux_ddp_test"

    def __init__(self, num_classes, policy=None, **kw):
        super().__init__(num_classes, policy, **kw)
        self.aux = nn.ModuleDict({"head": nn.Linear(32, num_classes)})

    def extra_modules(self):
        return self.aux

    def losses(self, out, batch, ctx):
        result = super().losses(out, batch, ctx)
        result.losses["aux"] = 0.1 * F.cross_entropy(self.aux["head"](out.feats_l), batch.y_l)
        return result
'''


def test_two_process_gloo_run_agrees_across_ranks(tmp_path, monkeypatch):
    plugin = tmp_path / "aux_plugin.py"
    plugin.write_text(PLUGIN)
    config = tmp_path / "ddp.yaml"
    settings = {**TINY, "algo": "adacm_aux_ddp_test", "policies": {"adacm": {"floor": None}}, "epochs": 2,
                "device": "cpu", "backbone": {"name": "smallcnn", "width": 8}}
    config.write_text(yaml.safe_dump(settings))
    out, dump = tmp_path / "run", tmp_path / "dump"
    proc = train_two_processes(config, out, dump, plugin=plugin)

    # one set of outputs, written by rank 0; one report on stdout
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.json", "split.json"]
    assert proc.stdout.count("final test accuracy") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["world_size"] == 2 and metrics["epochs_done"] == 2
    assert set(metrics["history"][-1]["losses"]) == {"total", "sup", "unsup", "contrast", "aux"}

    ranks = [checkpoint.load(dump / f"rank{k}.pt") for k in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    margin = [r["algorithm"]["policy"]["margin"] for r in ranks]
    assert torch.equal(margin[0], margin[1])
    assert not torch.allclose(margin[0], torch.full_like(margin[0], 0.8))   # estimated, not the start value
    for part in ("model",):
        for key, value in ranks[0][part].items():
            assert torch.equal(value, ranks[1][part][key]), f"{part}.{key} differs between ranks"
    for key, value in ranks[0]["ema"]["module"].items():
        assert torch.equal(value, ranks[1]["ema"]["module"][key]), f"ema.{key} differs between ranks"
    aux = [r["algorithm"]["modules"] for r in ranks]
    assert aux[0].keys() == aux[1].keys() == {"head.weight", "head.bias"}
    assert all(torch.equal(aux[0][k], aux[1][k]) for k in aux[0])
    # the checkpoint is rank 0's state
    ckpt = checkpoint.load(out / "checkpoint.pt")
    assert ckpt["world_size"] == 2
    assert all(torch.equal(v, ranks[0]["model"][k]) for k, v in ckpt["model"].items())

    # resuming a 2-process run with 1 process would change every batch: refused, nothing touched
    monkeypatch.setattr(ALGORITHMS, "_items", dict(ALGORITHMS._items))   # the test algorithm: this test only
    load_plugin(plugin)
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(SSLZooError, match=r"2 process\(es\).*--nproc 2"):
        cfg = cli.config_layers(cli.build_parser().parse_args(
            ["train", "--plugin", str(plugin), "--config", str(config), "--out", str(out)]))
        from sslzoo.config import resolve
        train(resolve(cfg), resume=True)
    assert (out / "metrics.json").read_bytes() == before


def test_nproc_relaunches_the_same_command_under_torchrun(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    argv = ["train", "--algo", "fixmatch", "--nproc", "2", "--out", "x", "--set", "epochs=1"]
    assert cli.main(argv) == 0
    assert cli.main(["train", "--nproc=3", "--out", "y"]) == 0
    assert calls[0][1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sslzoo",
                            "train", "--algo", "fixmatch", "--out", "x", "--set", "epochs=1"]
    assert calls[1][4:] == ["--nproc_per_node=3", "-m", "sslzoo", "train", "--out", "y"]


def test_dist_context_is_the_identity_in_one_process():
    ctx = DistContext()
    t = torch.arange(6.0).reshape(3, 2)
    assert ctx.gather(t) is t and ctx.gather_uneven(t) is t and ctx.all_reduce(t, "mean") is t
    assert ctx.any(True) and not ctx.any(False)
    assert ctx.gather_local_grad(t) is t and ctx.sum_local_grad(t) is t and ctx.replicated(t) is t
    assert ctx.global_ratio(torch.tensor(3.0), torch.tensor(0.0), 0.5).item() == 6.0   # 3 / max(0, 0.5)
    assert not DistContext.from_process_group().enabled   # no process group in this test process
    assert ctx.broadcast_object({"a": 1}) == {"a": 1}
    ctx.broadcast_([t])
    ctx.barrier()
    assert not ctx.enabled and ctx.is_main
