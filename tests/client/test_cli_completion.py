"""Shell completion as the README documents it: click's ``_LIAISON_COMPLETE`` recipe."""

from __future__ import annotations

import os
import subprocess

import pytest

from .clikit import LIAISON


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LIAISON_", "_LIAISON"))}
    return subprocess.run([LIAISON], env=base | env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o"), ("zsh", "compdef"),
                                                ("fish", "complete --no-files")])  # fmt: skip
def test_completion_script_is_printed(shell: str, marker: str) -> None:
    result = _run({"_LIAISON_COMPLETE": f"{shell}_source"})
    assert result.returncode == 0, result.stderr
    assert "_liaison_completion" in result.stdout
    assert marker in result.stdout


def test_completion_completes_commands_without_a_home() -> None:
    result = _run({"_LIAISON_COMPLETE": "bash_complete", "COMP_WORDS": "liaison cell re",
                   "COMP_CWORD": "2"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "plain,relocate" in result.stdout.splitlines()
