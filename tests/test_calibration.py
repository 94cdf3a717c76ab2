"""sslzoo calibration: confidence bins and ECE on hand-checkable tensors, and the CLI on a tiny run."""
from __future__ import annotations

import pytest
import torch

from sslzoo import cli
from sslzoo.bench.calibration import confidence_bins, expected_calibration_error
from sslzoo.errors import SSLZooError
from sslzoo.trainer import train

# max confidence 0.4 (wrong), 0.6 (right), 0.85 (wrong), 0.97 (right), 1.0 (right)
PROBS = torch.tensor([[0.4, 0.3, 0.3], [0.6, 0.2, 0.2], [0.1, 0.85, 0.05], [0.02, 0.01, 0.97], [1.0, 0.0, 0.0]])
LABELS = torch.tensor([1, 0, 2, 2, 0])


def test_confidence_bins_by_hand():
    rows = confidence_bins(PROBS, LABELS, (0.5, 0.8, 0.95))
    assert [(r.low, r.high) for r in rows] == [(0.0, 0.5), (0.5, 0.8), (0.8, 0.95), (0.95, 1.0)]
    assert [r.share for r in rows] == pytest.approx([0.2, 0.2, 0.2, 0.4])          # 1.0 is in the last bin
    assert [r.accuracy for r in rows] == pytest.approx([0.0, 1.0, 0.0, 1.0])
    assert [r.share_admitted for r in rows] == pytest.approx([1.0, 0.8, 0.6, 0.4])  # a threshold at `low`
    assert [r.accuracy_admitted for r in rows] == pytest.approx([0.6, 0.75, 2 / 3, 1.0])


def test_empty_bin_has_no_accuracy_and_bad_edges_are_named():
    rows = confidence_bins(PROBS[3:], LABELS[3:], (0.5,))
    assert rows[0].share == 0 and rows[0].accuracy is None and rows[1].accuracy == 1.0
    for edges in ([], [0.8, 0.5], [0.5, 1.0], [0.5, 0.5]):
        with pytest.raises(SSLZooError, match="increasing values in"):
            confidence_bins(PROBS, LABELS, edges)


def test_expected_calibration_error_by_hand():
    # 15 bins: 0.4 -> |0 - 0.4|, 0.6 -> |1 - 0.6|, 0.85 -> |0 - 0.85|, {0.97, 1.0} -> |1 - 0.985|
    expected = 0.2 * 0.4 + 0.2 * 0.4 + 0.2 * 0.85 + 0.4 * 0.015
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(expected, abs=1e-6)
    perfect = torch.eye(3)
    assert expected_calibration_error(perfect, torch.arange(3)) == pytest.approx(0.0)


def test_calibration_and_tsne_commands_on_a_finished_run(tmp_path, tiny, capsys):
    cfg = tiny(tmp_path)
    train(cfg)
    run = cfg["out"]
    assert cli.main(["calibration", run, "--split", "test", "--edges", "0.6,0.9"]) == 0
    out = capsys.readouterr().out
    assert "test set, 140 images with a known label" in out and "ECE" in out
    rows = [line for line in out.splitlines() if line.startswith("| [")]
    assert [r.split("|")[1].strip() for r in rows] == ["[0.00, 0.60)", "[0.60, 0.90)", "[0.90, 1.00]"]
    assert sum(float(r.split("|")[2]) for r in rows) == pytest.approx(100.0, abs=0.2)
    assert float(rows[0].split("|")[4]) == pytest.approx(100.0)              # everything is >= 0
    assert cli.main(["calibration", run, "--edges", "0.9,0.5"]) == 2
    assert "increasing values" in capsys.readouterr().err
    assert cli.main(["calibration", str(tmp_path / "nothing")]) == 2
    assert "is not a finished run folder" in capsys.readouterr().err
    assert cli.main(["plot", "--tsne", run, "--max-points", "60"]) == 0        # shares the run loader
    assert (tmp_path / "run" / "tsne.png").is_file()
