"""Checkpoint files: safe loading, clear errors for bad files, RNG round trips, atomic writes."""
from __future__ import annotations

import pickle
import random
import stat

import numpy as np
import pytest
import torch

from sslzoo import checkpoint
from sslzoo.errors import SSLZooError
from sslzoo.io import atomic_write, write_json


def _payload() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"step": 7, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "history": [{"epoch": 1, "test_acc": 50.0, "val_acc": None, "per": [1.0, None]}],
            "rng": checkpoint.rng_state(), "meter": {"sums": {"loss/total": 1.5}, "counts": {"loss/total": 2}}}


def test_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "checkpoint.pt"
    payload = _payload()
    checkpoint.save(path, payload)
    loaded = checkpoint.load(path)
    assert loaded["format"] == checkpoint.FORMAT and loaded["step"] == 7
    assert all(torch.equal(loaded["model"][k], v) for k, v in payload["model"].items())
    assert loaded["history"] == payload["history"]
    assert torch.load(path, weights_only=True)["step"] == 7   # the file itself needs no unpickling of code


def test_rng_state_round_trip_restores_every_generator():
    state = checkpoint.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(5)       # move on
    # through the file format too: only tensors/numbers/strings survive weights_only
    checkpoint.set_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_rng_state_survives_save_and_load(tmp_path):
    checkpoint.save(tmp_path / "c.pt", {"rng": checkpoint.rng_state()})
    expected = (random.getrandbits(64), np.random.randint(1 << 30), torch.randint(1 << 30, (4,)))
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "c.pt")["rng"])
    assert random.getrandbits(64) == expected[0]
    assert np.random.randint(1 << 30) == expected[1]
    assert torch.equal(torch.randint(1 << 30, (4,)), expected[2])


def test_truncated_checkpoint_gets_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, _payload())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SSLZooError, match=r"could not be read.*truncated, corrupt or not an sslzoo checkpoint"):
        checkpoint.load(path)
    path.write_bytes(b"")
    with pytest.raises(SSLZooError, match="truncated"):
        checkpoint.load(path)


class _Foreign:
    pass


def test_foreign_pickle_is_refused_without_running_it(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"x": _Foreign()}, path)
    with pytest.raises(SSLZooError, match=r"weights_only=True.*not an sslzoo checkpoint"):
        checkpoint.load(path)
    with open(path, "wb") as f:
        pickle.dump({"a": _Foreign()}, f)
    with pytest.raises(SSLZooError, match="not an sslzoo checkpoint"):
        checkpoint.load(path)


def test_foreign_torch_file_without_our_format_tag_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(SSLZooError, match=f"not an sslzoo checkpoint.*{checkpoint.FORMAT}"):
        checkpoint.load(path)
    torch.save([1, 2], path)
    with pytest.raises(SSLZooError, match="not an sslzoo checkpoint"):
        checkpoint.load(path)


def test_missing_checkpoint_says_how_to_start_fresh(tmp_path):
    with pytest.raises(SSLZooError, match="without --resume"):
        checkpoint.load(tmp_path / "nope.pt")


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"status": "finished", "acc": 1.0})
    before = path.read_bytes()

    def half_then_crash(f):
        f.write('{"status": "runn')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, half_then_crash)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_failed_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"step": 3})

    def boom(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, {"step": 4})
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_atomic_files_get_ordinary_permissions(tmp_path):
    """mkstemp makes owner-only (0600) files; outputs must get what a plain open() gives."""
    write_json(tmp_path / "m.json", {"a": 1})
    (tmp_path / "plain.txt").write_text("x")
    mode = stat.S_IMODE((tmp_path / "m.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert mode & 0o600 == 0o600


def test_json_outputs_write_non_finite_numbers_as_null(tmp_path):
    import json
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.0, None], "c": {"d": None}}
