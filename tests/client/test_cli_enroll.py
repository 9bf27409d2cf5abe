"""``liaison cell enroll`` and its refusals end to end: a real ``liaison server run`` process,
``liaison admin`` to provision, the CLI by subprocess (issue #10 item 14)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import click
import pytest

from liaison.client.cli import main
from liaison.client.enroll import refusal
from liaison.protocol.enrollment import EnrollmentCode

from .clikit import LIAISON, Cli

ASK = "ask the admin for a new code: liaison admin cell code"


def _cell_commands() -> list[str]:
    group = main.commands["cell"]
    assert isinstance(group, click.Group)
    return sorted(group.commands)


@pytest.mark.parametrize("command", _cell_commands())
def test_cell_subcommand_help_needs_no_home(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIAISON_")}
    result = subprocess.run([LIAISON, "cell", command, "--help"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: liaison cell {command}")
    # ... and running it without one is still the usage error it was
    result = subprocess.run([LIAISON, "cell", command], env=env, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_missing_home_is_a_usage_error(cli: Cli) -> None:
    result = cli.run("cell", "peers", env={"LIAISON_HOME": ""})
    assert result.returncode == 2
    assert "Missing option '--home'" in result.stderr


def test_enroll_help_names_liaison_server(cli: Cli) -> None:
    out = cli.ok("cell", "enroll", "--help")
    assert "LIAISON_SERVER" in out
    assert "env var: LIAISON_SERVER" in out


def test_wrong_name_keeps_the_code_for_the_right_one(cli: Cli, tmp_path: Path) -> None:
    code = cli.add_cell("en-fr-lyon")
    home = tmp_path / "lyon"
    line = cli.fails(14, "cell", "--home", str(home), "enroll", "--code", code,
                     "--name", "en-fr-nice")  # fmt: skip
    assert "not for a cell named 'en-fr-nice'" in line
    assert "not used" in line
    assert not home.exists()  # the refused attempt left nothing behind
    info = cli.cell_json(home, "enroll", "--code", code, "--name", "en-fr-lyon")
    assert info["name"] == "en-fr-lyon"


def test_refusals_say_what_to_do_and_leave_no_home(cli: Cli, tmp_path: Path) -> None:
    code = cli.add_cell("en-de-bonn")
    cli.enroll(tmp_path / "bonn", code)
    used = tmp_path / "deep" / "er" / "home"
    line = cli.fails(14, "cell", "--home", str(used), "enroll", "--code", code)
    assert "already used" in line
    assert ASK in line
    assert not (tmp_path / "deep").exists()  # every directory it created is gone again

    old = cli.add_cell("en-de-kiel")
    cli.admin_json("cell", "code", "en-de-kiel")  # supersedes the first code
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    line = cli.fails(14, "cell", "--home", str(existing), "enroll", "--code", old,
                     "--name", "en-de-kiel")  # fmt: skip
    assert "replaced by a newer code" in line
    assert f"{ASK} en-de-kiel" in line
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]  # only its own removed

    flipped = old[:-1] + ("b" if old[-1] != "b" else "c")
    line = cli.fails(14, "cell", "--home", str(tmp_path / "typo"), "enroll", "--code", flipped)
    assert "malformed" in line
    assert ASK in line
    assert not (tmp_path / "typo").exists()


def test_every_relay_refusal_says_what_to_do_next() -> None:
    for reason in ("bad_code", "code_used", "code_expired", "cell_not_pending"):
        assert f"{ASK} paris" in str(refusal(reason, "paris")), reason
        assert f"{ASK} NAME" in str(refusal(reason, None)), reason
    assert "check --name" in str(refusal("name_mismatch", "paris"))


def test_code_for_another_relay_names_the_server(cli: Cli, tmp_path: Path) -> None:
    foreign = EnrollmentCode(b"\x00" * 16, b"\x01" * 20).text()
    line = cli.fails(14, "cell", "--home", str(tmp_path / "h"), "enroll", "--code", foreign)
    assert "LIAISON_SERVER" in line
    assert not (tmp_path / "h").exists()
