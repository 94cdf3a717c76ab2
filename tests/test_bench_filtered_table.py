"""`sslzoo bench --suite S --algos X` prints a table of what ran, not every row of the suite.

No training: the bench's runner is replaced by one that writes each cell's row by hand.
"""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from sslzoo.bench import runner as R
from sslzoo.bench.results import make_row, write_row
from sslzoo.cli import main

SUITE = """\
name: filtered
defaults: {backbone: {name: smallcnn, width: 8}, epochs: 1, seeds: 2}
settings:
  - {dataset: synthfer, labels: 35}
  - {dataset: synthfer, labels: 70}
methods:
  - {name: Supervised, algo: supervised}
  - {name: FixMatch, algo: fixmatch}
  - {name: Ada-CM, algo: adacm}
"""


class RowWritingRunner:
    """Stands in for BenchRunner: every cell 'finishes' with accuracy 50 + seed."""

    def __init__(self, cells: list, out: Path, **_: object):
        self.cells, self.out = cells, Path(out)

    def run(self) -> SimpleNamespace:
        for c in self.cells:
            metrics = {"final_acc": 50.0 + c.seed, "best_test_acc": 51.0 + c.seed, "versions": {}}
            write_row(c.run_dir(self.out), make_row(method=c.method, setting=c.setting_id, cfg=c.cfg,
                                                    rel_dir=c.rel_dir, config_hash="h", metrics=metrics,
                                                    status="finished"))
        n = len(self.cells)
        return SimpleNamespace(counts={"finished": n}, line=lambda: f"{n} run(s): {n} finished")


@pytest.fixture
def bench(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "BenchRunner", RowWritingRunner)
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    return suite, tmp_path / "out"


def _table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines() if ln.startswith("|")]


def test_bench_with_algos_prints_only_the_methods_that_ran(bench, capsys):
    suite, out = bench
    argv = ["bench", "--suite", str(suite), "--out", str(out), "--no-plots", "--no-progress"]
    assert main([*argv, "--algos", "adacm", "--labels", "70"]) == 0
    printed = capsys.readouterr().out
    rows = _table_rows(printed)
    assert rows[0] == ["Method", "synthfer (70)"]                # the setting that ran, nothing else
    assert [r[0] for r in rows[2:]] == ["Ada-CM"]                  # no "–" rows for Supervised, FixMatch
    assert "–" not in printed
    assert len(re.findall(r"not run", printed)) == 1 and "Supervised, FixMatch" in printed

    # a second filtered command into the same folder adds its rows, in the suite's order
    assert main([*argv, "--algos", "supervised", "--labels", "70"]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert [r[0] for r in rows[2:]] == ["Supervised", "Ada-CM"]

    # `sslzoo table` on that folder: the same rows; the note goes to stderr (stdout is the table)
    assert main(["table", str(out)]) == 0
    captured = capsys.readouterr()
    assert [r[0] for r in _table_rows(captured.out)[2:]] == ["Supervised", "Ada-CM"]
    assert "not run" not in captured.out and "not run: FixMatch" in captured.err
