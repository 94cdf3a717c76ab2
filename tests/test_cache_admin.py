"""`sslzoo cache`: listing and pruning the data caches, on a hand-built cache folder."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from sslzoo import cli
from sslzoo.data.cache_admin import human_bytes, list_items, remove, select_for_pruning
from sslzoo.errors import SSLZooError

DAY = 86400.0


def _age(path: Path, days: float, now: float) -> None:
    os.utime(path, (now - days * DAY, now - days * DAY))


def _decoded(root: Path, name: str, data_root: Path, *, crop: str = "auto", decoder: int = 1,
             days: float, now: float) -> Path:
    entry = root / "decoded" / name
    entry.mkdir(parents=True)
    np.save(entry / "images.npy", np.zeros((2, 4, 4, 3), np.uint8))          # 96 bytes + header
    head = {"loader": "rafdb", "root": str(data_root), "image_size": 4, "crop": crop,
            "options": {}, "decoder": decoder, "format": 1}
    (entry / "meta.json").write_text(json.dumps({"loader": "rafdb", "root": str(data_root), "image_size": 4,
                                                 "n": 2, "labels": [0, 1], "ids": ["a", "b"],
                                                 "key_options": head}))
    _age(entry, days, now)
    return entry


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """old + new entry of one data set, a different crop of it, a gone data root, synthfer, a crash leftover."""
    now = time.time()
    root = tmp_path / "cache"
    monkeypatch.setenv("SSLZOO_CACHE", str(root))
    data, gone = tmp_path / "RAF-DB", tmp_path / "deleted"
    data.mkdir()
    paths = {
        "old": _decoded(root, "rafdb-4px-old", data, decoder=1, days=40, now=now),
        "new": _decoded(root, "rafdb-4px-new", data, decoder=2, days=1, now=now),
        "crop": _decoded(root, "rafdb-4px-crop", data, crop="none", days=30, now=now),
        "gone": _decoded(root, "rafdb-4px-gone", gone, days=2, now=now),
    }
    synth = root / "synthfer-0123456789abcdef.npz"
    synth.write_bytes(b"x" * 1000)
    _age(synth, 10, now)
    crash = root / "decoded" / ".tmp-rafdb-4px-x-123-abcd"
    crash.mkdir()
    (crash / "decode.npy").write_bytes(b"y" * 10)
    _age(crash, 3, now)
    building = root / "decoded" / ".tmp-rafdb-4px-y-456-ef01"
    building.mkdir()
    paths.update(synth=synth, crash=crash, building=building)
    return root, paths, now


def _names(items) -> set[str]:
    return {i.path.name for i in items}


def test_list_finds_every_kind_with_its_size_and_age(cache):
    root, paths, _ = cache
    items = list_items()
    assert _names(items) == {p.name for p in paths.values()}
    by_name = {i.path.name: i for i in items}
    assert by_name[paths["synth"].name].kind == "legacy" and by_name[paths["synth"].name].bytes == 1000
    assert by_name[paths["crash"].name].kind == "building" and by_name[paths["crash"].name].bytes == 10
    assert by_name["rafdb-4px-old"].kind == "decoded" and by_name["rafdb-4px-old"].bytes > 96
    assert not by_name["rafdb-4px-gone"].root_exists and by_name["rafdb-4px-new"].root_exists
    assert [i.path.name for i in items][0] == "rafdb-4px-old"                  # oldest first


def test_superseded_keeps_the_newest_entry_of_each_data_set_and_crop(cache):
    _, _, now = cache
    chosen = select_for_pruning(list_items(), superseded=True, now=now)
    # "crop" differs in crop: not replaced by "new"; the old-format synthfer .npz is superseded
    assert _names(chosen) == {"rafdb-4px-old", "synthfer-0123456789abcdef.npz"}


def test_missing_root_older_than_and_all(cache):
    _, paths, now = cache
    items = list_items()
    assert _names(select_for_pruning(items, missing_root=True, now=now)) == {"rafdb-4px-gone"}
    # > 7 days: the two old decoded entries, the synthfer file; the 3-day crash leftover is younger
    assert _names(select_for_pruning(items, older_than_days=7, now=now)) == {
        "rafdb-4px-old", "rafdb-4px-crop", paths["synth"].name}
    # a leftover build folder older than a day goes with --older-than 2; one being built now never does
    assert paths["crash"].name in _names(select_for_pruning(items, older_than_days=2, now=now))
    everything = _names(select_for_pruning(items, everything=True, now=now))
    assert paths["building"].name not in everything
    assert everything == {p.name for k, p in paths.items() if k != "building"}


def test_prune_needs_a_criterion_and_rejects_negative_ages(cache):
    with pytest.raises(SSLZooError, match="needs a criterion"):
        select_for_pruning(list_items())
    with pytest.raises(SSLZooError, match=">= 0"):
        select_for_pruning(list_items(), older_than_days=-1)


def test_remove_frees_the_bytes_and_tolerates_items_already_gone(cache):
    _, paths, now = cache
    chosen = select_for_pruning(list_items(), superseded=True, missing_root=True, now=now)
    paths["gone"].rename(paths["gone"].with_name("moved-away"))      # another process got there first
    freed, problems = remove(chosen)
    assert problems == [] and not paths["old"].exists()
    assert freed == sum(i.bytes for i in chosen if i.path.name in ("rafdb-4px-old", "synthfer-0123456789abcdef.npz"))
    assert paths["new"].exists() and paths["crop"].exists()


def test_cli_list_dry_run_and_prune(cache, capsys):
    root, paths, _ = cache
    assert cli.main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"{root}: 7 item(s)" in out and "data root missing" in out and "rafdb-4px-old" in out

    assert cli.main(["cache", "prune", "--superseded", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove 2 item(s)" in out and "rafdb-4px-old" in out
    assert paths["old"].exists()                                        # a dry run removes nothing

    assert cli.main(["cache", "prune", "--superseded", "--missing-root"]) == 0
    assert "removed 3 item(s)" in capsys.readouterr().out
    assert not paths["old"].exists() and not paths["gone"].exists() and paths["new"].exists()

    assert cli.main(["cache", "prune", "--superseded"]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_cli_prune_without_a_criterion_is_a_usage_error(cache, capsys):
    assert cli.main(["cache", "prune"]) == 2
    assert "--superseded" in capsys.readouterr().err
    assert len(list_items()) == 7                                        # nothing touched


def test_human_bytes():
    assert human_bytes(10) == "10 B"
    assert human_bytes(2048) == "2.0 KB"
    assert human_bytes(3 * 1024 ** 3) == "3.0 GB"
    assert human_bytes(5000 * 1024 ** 3) == "5000.0 GB"


def test_pretrained_backbones_are_listed_and_pruned_like_the_rest(tmp_path, monkeypatch):
    now = time.time()
    monkeypatch.setenv("SSLZOO_CACHE", str(tmp_path))
    folder = tmp_path / "pretrained"
    folder.mkdir()
    weights = folder / "simclr_faces-0123456789abcdef.pt"
    weights.write_bytes(b"w" * 300)
    _age(weights, 5, now)
    writing = folder / ".simclr_faces-0123456789abcdef.pt.abc.tmp"    # atomic_write's temp file
    writing.write_bytes(b"t")
    (folder / "simclr_faces-0123456789abcdef.lock").write_bytes(b"")  # the build lock: not an item
    by_name = {i.path.name: i for i in list_items()}
    assert set(by_name) == {weights.name, writing.name}
    assert by_name[weights.name].kind == "pretrained" and by_name[weights.name].bytes == 300
    assert "'simclr_faces'" in by_name[weights.name].description
    assert by_name[writing.name].kind == "building"
    assert _names(select_for_pruning(list_items(), older_than_days=2, now=now)) == {weights.name}


def test_generated_data_is_listed_and_never_has_a_missing_root(tmp_path, monkeypatch):
    """synthfer entries live under decoded/ (memory-mapped) but have no data folder to go missing."""
    from sslzoo.data import builtin
    monkeypatch.setenv("SSLZOO_CACHE", str(tmp_path))
    builtin.synthfer(n_train=70, n_test=14, image_size=16)
    (item,) = list_items()
    assert item.kind == "decoded" and "synthfer, 84 images at 16 px generated" in item.description
    assert item.root_exists and select_for_pruning([item], missing_root=True, superseded=True) == []


def test_decode_threads_follow_the_affinity_mask_not_the_machine(monkeypatch):
    """Under taskset (or a bench job's share) the decoder starts no more threads than it may run."""
    import os

    from sslzoo.data import cache as cache_module
    monkeypatch.delenv("SSLZOO_DECODE_WORKERS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert cache_module.default_workers() == 3
    monkeypatch.setenv("SSLZOO_DECODE_WORKERS", "5")
    assert cache_module.default_workers() == 5
