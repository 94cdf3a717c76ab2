"""sslzoo predict / Run.predict: a finished run's model on image files, folders, globs and in-memory images."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sslzoo
from sslzoo import cli
from sslzoo.errors import SSLZooError
from sslzoo.trainer import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from tests.conftest import tiny_config
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny_config(tmp_path_factory.mktemp("predict"), algo="fixmatch", epochs=1)
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    return Path(cfg["out"])


@pytest.fixture
def faces(tmp_path) -> Path:
    """Five generated PNGs (other sizes, one grayscale, one in a subfolder), a corrupt PNG and a text file."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "faces"
    (folder / "more").mkdir(parents=True)
    for i, (h, w) in enumerate([(48, 48), (20, 30), (64, 40), (32, 32)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img_{i}.png")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L").save(folder / "more" / "img_grey.png")
    good = (folder / "img_0.png").read_bytes()
    (folder / "broken.png").write_bytes(good[: len(good) // 3])
    (folder / "notes.txt").write_text("not an image\n")
    (folder / ".hidden.png").write_bytes(good)          # hidden files are not inputs
    return folder


def test_a_folder_predicts_every_readable_image_and_reports_the_rest(run_dir, faces):
    run = sslzoo.load_run(run_dir, "cpu")
    result = run.predict(faces)
    assert result.paths == sorted(str(p) for p in faces.rglob("img_*.png"))
    assert {Path(p).name for p, _ in result.skipped} == {"broken.png", "notes.txt"}
    assert all("not a readable image" in why for _, why in result.skipped)
    assert result.probs.shape == (5, len(run.classes)) and torch.allclose(result.probs.sum(1), torch.ones(5))
    assert result.predicted == [run.classes[i] for i in result.probs.argmax(1)]
    top = result.topk(3)
    assert [t[0][0] for t in top] == result.predicted and all(len(t) == 3 for t in top)
    assert all(a[1] >= b[1] >= c[1] for a, b, c in top)
    assert torch.equal(result.confidence, result.probs.max(1).values)


def test_the_runs_own_test_images_as_files_get_the_evaluations_probabilities(run_dir, tmp_path):
    run = sslzoo.load_run(run_dir, "cpu")
    test = run.data.test
    assert test.images.shape[1] == run.image_size
    folder = tmp_path / "test_images"
    folder.mkdir()
    for i, img in enumerate(test.images):
        Image.fromarray(np.asarray(img)).save(folder / f"{i:04d}.png")
    expected = run.predict_set(test)[0].cpu()
    from_files = run.predict(str(folder / "*.png"))
    assert len(from_files) == len(test) and not from_files.skipped
    assert torch.equal(from_files.probs, expected)
    in_memory = run.predict(np.asarray(test.images))                       # an [N, H, W, 3] uint8 batch
    assert torch.equal(in_memory.probs, expected) and in_memory.paths[0] == "<image 0>"


def test_in_memory_images_take_the_files_path(run_dir, faces):
    run = sslzoo.load_run(run_dir, "cpu")
    img = Image.open(faces / "img_2.png")
    from_file = run.predict(faces / "img_2.png")
    from_pil = run.predict([img, np.asarray(img)])
    assert torch.equal(from_pil.probs, from_file.probs.repeat(2, 1))
    with pytest.raises(SSLZooError, match="uint8"):
        run.predict(np.zeros((8, 8, 3), dtype=np.float32))


def test_nothing_readable_or_nothing_given_is_an_error(run_dir, faces):
    run = sslzoo.load_run(run_dir, "cpu")
    with pytest.raises(SSLZooError, match=r"none of the 2 input\(s\) is a readable image.*notes.txt"):
        run.predict([faces / "notes.txt", faces / "missing.png"])
    with pytest.raises(SSLZooError, match="no images given"):
        run.predict([])


def test_predict_command_table_csv_json_and_exit_codes(run_dir, faces, tmp_path, capsys):
    out_csv, out_json = tmp_path / "p.csv", tmp_path / "p.json"
    code = cli.main(["predict", str(run_dir), str(faces), str(tmp_path / "nope.png"), "--topk", "3",
                     "--csv", str(out_csv), "--json", str(out_json), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1                                               # some inputs were skipped
    lines = captured.out.strip().splitlines()
    assert lines[0].split()[:4] == ["path", "class", "confidence", "top-3"] and len(lines) == 1 + 5
    assert all(str(faces) in ln for ln in lines[1:])
    for name in ("broken.png", "notes.txt", "nope.png"):
        assert name in captured.err
    assert "no such file" in captured.err and "Traceback" not in captured.err
    rows = list(csv.DictReader(out_csv.open()))
    run = sslzoo.load_run(run_dir, "cpu")
    assert len(rows) == 5 and list(rows[0])[:3] == ["path", "predicted", "confidence"]
    assert [f"prob_{c}" for c in run.classes] == list(rows[0])[3:]
    data = json.loads(out_json.read_text())
    assert len(data["predictions"]) == 5 and len(data["skipped"]) == 3 and data["which"] == "final"
    assert len(data["predictions"][0]["top_k"]) == 3 and data["classes"] == list(run.classes)
    assert data["predictions"][0]["predicted"] == rows[0]["predicted"]

    assert cli.main(["predict", str(run_dir), str(faces / "img_*.png")]) == 0   # nothing skipped
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 4


def test_predict_command_usage_errors_exit_2(run_dir, faces, tmp_path, capsys):
    assert cli.main(["predict", str(run_dir), str(faces / "notes.txt")]) == 2
    assert "readable image" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path), str(faces)]) == 2
    assert "not a finished run folder" in capsys.readouterr().err
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    shutil.copy(run_dir / "config.yaml", no_model / "config.yaml")
    assert cli.main(["predict", str(no_model), str(faces)]) == 2
    assert "holds no model" in capsys.readouterr().err
    assert cli.main(["predict", str(run_dir), str(faces), "--which", "val"]) == 2
    assert "no validation split" in capsys.readouterr().err
    assert cli.main(["predict", str(run_dir), str(faces), "--topk", "0"]) == 2
    err = capsys.readouterr().err
    assert "--topk" in err and "Traceback" not in err
    (tmp_path / "a_file").write_text("")
    assert cli.main(["predict", str(run_dir), str(faces / "img_0.png"), "--csv", str(tmp_path / "a_file" / "p.csv")]) == 2
    assert "cannot write" in capsys.readouterr().err
