"""The README's two opening commands are exactly what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_opens_with_the_two_ci_commands():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    commands = [line.strip() for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]
    assert commands == ["pip install -e . && seglab quickstart", 'pip install -e ".[test]" && pytest']
    ci = (REPO / ".ci" / "run").read_text()
    for command in commands:
        assert f"\n{command}\n" in ci
