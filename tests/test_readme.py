"""The README's two opening commands are exactly what CI runs, and its training commands load."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from seglab.apps import cli
from seglab.core.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_readme_opens_with_the_two_ci_commands():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    commands = [line.strip() for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]
    assert commands == ["pip install -e . && seglab quickstart", 'pip install -e ".[test]" && pytest']
    ci = (REPO / ".ci" / "run").read_text()
    for command in commands:
        assert f"\n{command}\n" in ci


def _readme_train_commands() -> list[list[str]]:
    """Every ``seglab train`` line of the README's bash blocks, with its shell variables expanded."""
    readme = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        variables: dict[str, str] = {}
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            for name, value in re.findall(r'(\w+)="([^"]*)"', line):
                variables[name] = value
            if line.startswith("seglab train "):
                expanded = re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), line)
                commands.append(shlex.split(expanded)[1:])
    return commands


def test_readme_train_commands_load():
    """Each documented training command names a recipe that exists and only keys that exist."""
    commands = _readme_train_commands()
    assert len(commands) >= 10
    for argv in commands:
        args, overrides = cli.parse_command_line(argv)
        assert args.command == "train" and args.recipe.startswith("configs/"), argv
        load_config(REPO / args.recipe, overrides)
