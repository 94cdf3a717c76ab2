"""The paper's data protocols end to end: SFEW + RAF-DB unlabeled union, RAF-DB -> CK+ testing."""
from __future__ import annotations

import numpy as np

from sslzoo.config import resolve
from sslzoo.data.prepare import prepare
from sslzoo.trainer import train
from tests.conftest import TINY
from tests.fixtures_fer import make_ckplus, make_rafdb, make_sfew


def _cfg(tmp_path, **over):
    layer = {**TINY, "out": str(tmp_path / "run"), "image_size": 24, "data": {}}
    layer.update(over)
    return resolve([layer])


def test_sfew_with_rafdb_as_extra_unlabeled_data(tmp_path):
    make_sfew(tmp_path / "sfew", train=4, val=2)
    make_rafdb(tmp_path / "raf", train=3, test=1)
    cfg = _cfg(tmp_path, dataset="sfew", data_root=str(tmp_path / "sfew"), labels=14,
               unlabeled_extra="rafdb", unlabeled_extra_root=str(tmp_path / "raf"))
    data = prepare(cfg)
    assert len(data.labeled) == 14                                   # 2 per class from SFEW Train
    assert len(data.unlabeled) == 7 * 4 - 14 + 7 * 3                 # rest of SFEW Train + all RAF-DB train
    assert sum(i.startswith("rafdb:") for i in data.unlabeled.ids) == 21
    assert not set(data.labeled.ids) & set(data.unlabeled.ids)
    assert len(data.test) == 7 * 2 and data.test_name == "sfew"      # evaluated on Val
    metrics = train(cfg)
    assert metrics["status"] == "finished"


def test_train_on_rafdb_test_on_ckplus(tmp_path):
    make_rafdb(tmp_path / "raf", train=3, test=1)
    make_ckplus(tmp_path / "ck")
    cfg = _cfg(tmp_path, dataset="rafdb", data_root=str(tmp_path / "raf"), labels=7,
               test_dataset="ckplus", test_data_root=str(tmp_path / "ck"))
    data = prepare(cfg)
    assert data.test_name == "ckplus"
    assert all(i.startswith("cohn-kanade-images") for i in data.test.ids)
    assert data.test.labels.max() < 7                                # contempt excluded (7-class space)
    assert np.isin(np.arange(7), data.test.labels).all()             # every class incl. neutral first frames
    metrics = train(cfg)
    assert metrics["test_dataset"] == "ckplus" and metrics["status"] == "finished"


def test_sslzoo_data_cli_describes_a_data_set_and_explains_a_missing_root(tmp_path, capsys):
    import json

    from sslzoo.cli import main
    make_sfew(tmp_path / "sfew", train=2, val=1)
    assert main(["data", "sfew", "--data-root", str(tmp_path / "sfew"), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert "14" in json.dumps(described) and "sfew" in json.dumps(described).lower()
    assert main(["data", "rafdb", "--data-root", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "EmoLabel" in err and "Traceback" not in err
