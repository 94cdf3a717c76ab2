"""Progress that a user sees: SimCLR pretraining inside an epoch (bar or lines) and the bench's time left."""
from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sslzoo.models.smallcnn import SmallCNN
from sslzoo.pretrain.simclr import simclr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _pretrain(log) -> None:
    """2 epochs of 5 steps on 20 tiny images."""
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8)
    simclr(SmallCNN(3, 4), images, epochs=2, batch_size=4, lr=1e-3, temperature=0.5, seed=0,
           device=torch.device("cpu"), log=log)


def test_pretraining_shows_a_bar_on_a_terminal(monkeypatch):
    terminal, lines = Terminal(), []
    monkeypatch.setattr(sys, "stderr", terminal)
    _pretrain(lines.append)
    shown = terminal.getvalue()
    assert "\r" in shown and "pretraining epoch 1/2" in shown and "pretraining epoch 2/2" in shown
    assert "/5 [" in shown                                   # a bar over the epoch's 5 steps (redrawn every 0.5 s)
    assert [ln.split(":")[0] for ln in lines] == ["pretraining epoch 1/2", "pretraining epoch 2/2"]


def test_pretraining_writes_periodic_lines_to_a_log_file(monkeypatch):
    log_file, lines = io.StringIO(), []
    monkeypatch.setattr(sys, "stderr", log_file)
    _pretrain(lines.append)
    assert log_file.getvalue() == ""                       # no bar, no carriage returns in a log
    steps = [ln for ln in lines if "step" in ln]
    ends = [i for i, ln in enumerate(lines) if re.match(r"pretraining epoch \d/2: NT-Xent", ln)]
    assert len(ends) == 2 and 0 < ends[0] < ends[1] - 1     # lines inside both epochs, before their summary
    done = [int(re.search(r"step (\d+)/10 \((\d+) %\)", ln).group(1)) for ln in steps]
    assert done == sorted(done) and done[0] < 5 < done[-1] < 10


# ----------------------------------------------------------------------------- the bench's time left

class TwoMinuteRuns:
    """A launcher whose every run 'finishes' after two minutes of a fake clock, training nothing."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def start(self, args: list[str], log_path: Path, env: dict[str, str]):
        return SimpleNamespace(run_dir=Path(args[0]), cfg_hash=args[2])

    def wait(self, handle) -> int:
        import json
        self.now += 120.0
        (handle.run_dir / "metrics.json").write_text(json.dumps(
            {"status": "finished", "config_hash": handle.cfg_hash, "final_acc": 50.0, "versions": {}}))
        return 0

    @staticmethod
    def pid(handle) -> int:
        return -1


def test_bench_reports_the_time_left_after_each_run_and_its_total(tmp_path, monkeypatch):
    from sslzoo.bench.commands import build_cells
    from sslzoo.bench.runner import BenchRunner
    from sslzoo.cli import _register_extra_commands, build_parser
    _register_extra_commands()
    args = build_parser().parse_args(["bench", "--algos", "supervised", "--labels", "35", "--seeds", "3",
                                      "--out", str(tmp_path / "b")])
    _, _, out, cells = build_cells(args)
    launcher, lines = TwoMinuteRuns(), []
    runner = BenchRunner(cells, out, jobs=1, progress=False, launcher=launcher, echo=lines.append, poll_s=0.01)
    monkeypatch.setattr(runner, "clock", launcher.clock)
    summary = runner.run()
    assert [ln.split(": finished")[1] for ln in lines] == [
        ", final test acc 50.00% (2m00s; about 4 min left)",
        ", final test acc 50.00% (2m00s; about 2 min left)",
        ", final test acc 50.00% (2m00s)"]
    assert summary.line().endswith("(3 trained now, 0 already done) in 6m00s")


@pytest.mark.parametrize("durations, left, jobs, text", [
    ([], 3, 1, None),                              # nothing finished yet: no estimate
    ([120.0], 0, 1, None),                         # nothing left
    ([100.0, 140.0], 3, 1, "about 6 min"),         # mean 2 min x 3 runs
    ([120.0], 4, 2, "about 4 min"),                # two at a time
    ([120.0], 1, 4, "about 2 min"),                # the last run is not faster for spare slots
    ([20.0], 1, 1, "less than a minute"),
    ([3000.0], 3, 1, "about 2 h 30 min"),
])
def test_time_left_is_the_mean_run_time_times_the_runs_left_over_jobs(durations, left, jobs, text):
    from sslzoo.bench.runner import time_left
    assert time_left(durations, left, jobs) == text
