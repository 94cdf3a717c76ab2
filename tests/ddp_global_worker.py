"""N processes = one process with the N x batch, checked with real gloo collectives.

Run by the tests under ``torch.distributed.run --nproc_per_node=2`` (each rank writes
``OUT/rank<k>.pt``) and in the test process itself as the 1-process reference. Both feed
the same global batches (a pure function of the step); rank r takes rows
[r B/N, (r+1) B/N) of each, so the ranks' slices together are exactly the 1-process batch.

* Policies (FlexMatch, Dash, FreeMatch, SoftMatch) get fixed probabilities, pool indices and
  labeled losses, and are called through their real collectives (``ctx.dist``).
* Algorithm steps (Ada-CM with the subset-normalised L_u and InfoNCE, FreeMatch with its
  fairness term, FixMatch with ``unsup_norm=subset``, MarginMix's margin term)
  train a small MLP (no batch norm, no augmentation: the two documented per-rank effects are
  left out) wrapped in DistributedDataParallel, with SGD, for a few steps.

One launch serves every test that needs it (``two_process_results`` is cached per session).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:   # run as a script by torch.distributed.run
    sys.path.insert(0, str(REPO))

from sslzoo.algorithm import Batch, PolicyInput, StepContext  # noqa: E402
from sslzoo.distributed import DistContext, init_from_env, shutdown  # noqa: E402
from sslzoo.policies import build_policy  # noqa: E402
from sslzoo.registry import ALGORITHMS  # noqa: E402

CLASSES, POOL, DIM, HIDDEN = 4, 24, 6, 5
B_L, B_U, STEPS = 4, 8, 4          # GLOBAL batch sizes (2 ranks: 2 labeled and 4 unlabeled rows each)
WORLD = 2

POLICIES: dict[str, dict[str, Any]] = {
    "flexmatch": {"warmup": False},                  # thresholds up to 0.95 from the first record
    "dash": {"warmup": 0.5, "num_wait": 1},          # 2 warm-up steps (rho_hat), then stages
    "freematch": {"momentum": 0.5},                  # large steps, so every batch moves the EMAs
    "softmatch": {"momentum": 0.5},
}
# name -> (algorithm, policy spec, policy parameters, algorithm parameters)
ALGOS: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "adacm": ("adacm", "fixed:0.4", {}, {"unsup_norm": "subset", "lambda_c": 1.0, "temperature": 0.5}),
    "freematch": ("freematch", "freematch", {"momentum": 0.5}, {"lambda_f": 1.0}),
    "fixmatch_subset": ("fixmatch", "fixed:0.4", {}, {"unsup_norm": "subset"}),   # masked_ce without ctx.dist
    "marginmix": ("marginmix", "", {}, {"mixup_alpha": 0.0, "lambda_margin": 1.0, "lambda_u": 1.0}),
}


def global_batch(step: int) -> dict[str, Any]:
    """Everything a step sees, for the whole (global) batch; the same on every rank."""
    g = torch.Generator().manual_seed(1000 + step)
    return {
        "probs": torch.softmax(torch.randn(B_U, CLASSES, generator=g) * 3, dim=1),
        "index": torch.randperm(POOL, generator=g)[:B_U],
        # multiples of 1/16: Dash's warm-up sums are exact in any order
        "labeled_loss": torch.randint(1, 16, (B_L,), generator=g).double() / 16,
        "x_l": torch.randn(B_L, DIM, generator=g),
        "y_l": torch.randint(0, CLASSES, (B_L,), generator=g),
        "l_index": torch.randperm(POOL, generator=g)[:B_L],
        "u_views": [torch.randn(B_U, DIM, generator=g) for _ in range(3)],
        "u_true": torch.randint(0, CLASSES, (B_U,), generator=g),
    }


def labeled_set_loss() -> Tensor:
    """StepContext.labeled_loss: per-sample CE over the whole labeled set, the same on every rank (the
    trainer gathers it); multiples of 1/16, so Dash's rho_hat is exact in any summation order."""
    return torch.randint(1, 16, (POOL,), generator=torch.Generator().manual_seed(7)).double() / 16


def rank_rows(t: Tensor, dist: DistContext) -> Tensor:
    rows = t.shape[0] // dist.world_size
    return t[dist.rank * rows:(dist.rank + 1) * rows]


def policy_trace(name: str, dist: DistContext) -> dict[str, Any]:
    """The policy's weights at every step (this rank's rows) and its state after the last."""
    policy = build_policy(name, POLICIES[name])
    policy.setup(CLASSES, POOL)
    weights = []
    for step in range(STEPS):
        g = global_batch(step)
        inp = PolicyInput(rank_rows(g["probs"], dist), rank_rows(g["index"], dist), rank_rows(g["labeled_loss"], dist))
        ctx = StepContext(0, step, step, STEPS, STEPS, CLASSES, dist=dist, labeled_loss=labeled_set_loss)
        weights.append(policy(inp, ctx))
    return {"weights": weights, "state": policy.state_dict()}


class MLP(nn.Module):
    """(logits, features) like every backbone; no batch norm, no dropout."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(DIM, HIDDEN), nn.Linear(HIDDEN, CLASSES)
        self.feature_dim = HIDDEN

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = torch.tanh(self.body(x))
        return self.head(feats), feats


def algorithm_trace(name: str, dist: DistContext) -> dict[str, Any]:
    """STEPS SGD steps of an algorithm; per step the loss terms (mean over ranks, as logged) and the
    averaged gradients; at the end the parameters and the algorithm's state."""
    algo_name, spec, policy_params, kwargs = ALGOS[name]
    cls = ALGORITHMS.get(algo_name)
    algo = cls(CLASSES, build_policy(spec, policy_params) if spec else None, **kwargs)
    torch.manual_seed(0)
    model = MLP()
    algo.bind_backbone(HIDDEN)
    algo.setup(POOL, torch.device("cpu"), num_labeled=POOL)
    train_model = nn.parallel.DistributedDataParallel(model) if dist.enabled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, grads = [], []
    for step in range(STEPS):
        g = global_batch(step)
        views = [rank_rows(v, dist) for v in g["u_views"][:len(algo.unlabeled_views)]]
        batch = Batch(rank_rows(g["x_l"], dist), rank_rows(g["y_l"], dist), views, rank_rows(g["index"], dist),
                      rank_rows(g["u_true"], dist), rank_rows(g["l_index"], dist))
        ctx = StepContext(0, step, step, STEPS, STEPS, CLASSES, dist=dist, model=train_model)
        out = algo.step(train_model, batch, ctx)
        total = torch.stack(list(out.losses.values())).sum()
        optimizer.zero_grad()
        total.backward()
        losses.append({k: dist.all_reduce(v.detach().float(), op="mean") for k, v in out.losses.items()})
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
        optimizer.step()
    return {"losses": losses, "grads": grads, "params": model.state_dict(), "state": algo.state_dict()}


def run(dist: DistContext) -> dict[str, Any]:
    return {"policies": {name: policy_trace(name, dist) for name in POLICIES},
            "algorithms": {name: algorithm_trace(name, dist) for name in ALGOS}}


@functools.lru_cache(maxsize=None)
def two_process_results() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(every rank's results of one 2-process gloo launch, the 1-process results on the whole batches)."""
    out = Path(tempfile.mkdtemp(prefix="sslzoo-ddp-global-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={WORLD}", __file__, str(out)],
                          env=env, capture_output=True, text=True, timeout=240)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        ranks = [torch.load(out / f"rank{k}.pt", weights_only=True) for k in range(WORLD)]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return ranks, run(DistContext())


def assert_policy_matches_one_process(name: str) -> None:
    """After every step, each rank's weights are its rows of the 1-process weights, and after the last
    its state is the 1-process state, bit for bit: the gathered rows are exactly the 1-process batch,
    and the reductions are sums of numbers that are exact in any order (Dash: multiples of 1/16)."""
    ranks, single = two_process_results()
    ref = single["policies"][name]
    assert any(bool((w < 1).any()) for w in ref["weights"]) and any(bool((w > 0).any()) for w in ref["weights"])
    for rank, result in enumerate(ranks):
        got = result["policies"][name]
        for step, (w_ref, w) in enumerate(zip(ref["weights"], got["weights"])):
            rows = w_ref.shape[0] // WORLD
            assert torch.equal(w, w_ref[rank * rows:(rank + 1) * rows]), f"rank {rank}, step {step}"
        assert ref["state"].keys() == got["state"].keys()
        for key, value in ref["state"].items():
            assert torch.equal(got["state"][key], value), f"rank {rank}: {key}"


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist = init_from_env("cpu")
    try:
        results = run(dist)
        torch.save(results, Path(out) / f"rank{dist.rank}.pt")
    finally:
        shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
