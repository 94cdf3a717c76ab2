"""The README's promises that a test can check."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_policy_example_in_readme_is_the_tested_example_file():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    example = (ROOT / "examples" / "topk_policy.py").read_text()
    assert example.rstrip() + "\n" in blocks
    assert len(example.strip().splitlines()) < 30


def test_ci_runs_the_readme_test_command():
    readme_lines = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in readme_lines if line.startswith("pip install")]
    assert len(commands) >= 2, "the README must open with the two set-up commands"
    test_cmd = commands[1].split("#")[0].strip()
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
