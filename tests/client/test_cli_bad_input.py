"""Bad input to every ``liaison`` command: one line, a documented exit status, never a
traceback (issue #10 item 10).

The commands are found by walking the click tree of ``liaison.client.cli.main``, so commands
added later are covered without touching this file. Each runs by subprocess, as a user types
it, with: an unknown option, a non-UTF-8 argument, its required arguments missing, over-long
values, a home that does not exist / is not a cell / is a file, and garbage ``LIAISON_*``
settings. Deeper cases (a long marking, a non-UTF-8 body) run against a real relay process.
A last test sends SIGINT while the CLI is still importing and starting: exit 130, quietly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest

from liaison.client.cli import main

from .clikit import LIAISON, Cli, RelayProcess, free_port, relay_process

NON_UTF8 = os.fsdecode(b"caf\xe9 \xff")  # surrogate-escaped: the bytes reach argv as they are
LONG = "x" * 5000
# Documented exit statuses per top-level group: ``liaison cell --help`` (and the codes
# reserved for it: 28..40), ``liaison admin --help``, ``liaison server``; 130 is Ctrl-C.
DOCUMENTED = {
    "cell": {1, 2, *range(10, 41)},
    "admin": {1, 2, 3, 4, 5, 6},
    "server": {1, 2, 3, 4},
}
UNREACHABLE = f"http://127.0.0.1:{free_port()}"  # nothing listens there
GARBAGE_ENV = {
    "LIAISON_SERVER": "not a url",
    "LIAISON_ADMIN_TOKEN": "x",
    "LIAISON_PORT": "abc",
    "LIAISON_HOST": LONG,
    "LIAISON_DATABASE_URL": "garbage",
    "LIAISON_MAX_TTL_SECONDS": "abc",
    "LIAISON_QUEUE_MAX_MESSAGES": "-1",
    "LIAISON_BUS_URL": "nope://",
    "LIAISON_PASSPHRASE": NON_UTF8,
}


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LIAISON_")}


def _leaves(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from _leaves(command.commands[name], (*path, name))
    else:
        yield path


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


COMMANDS = list(_leaves(main))


@dataclass
class Case:
    path: tuple[str, ...]
    why: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _value(param: click.Parameter, files: Path, text: str) -> str:
    """A value the parameter's type accepts (``text`` for free text)."""
    kind = param.type
    if isinstance(kind, click.Choice):
        return str(kind.choices[0])
    if isinstance(kind, click.types.IntParamType | click.types.FloatParamType):
        return "1"
    if isinstance(kind, click.Path):
        existing = files / "existing-file"
        existing.write_bytes(b"hello")
        return str(existing)
    if param.name in ("server",):
        return UNREACHABLE
    return text


def _fill(command: click.Command, files: Path, text: str, *, only_required: bool) -> list[str]:
    args: list[str] = []
    options: list[str] = []
    for param in command.params:
        if isinstance(param, click.Argument):
            if param.required or not only_required:
                args.append(_value(param, files, text))
        elif (
            isinstance(param, click.Option)
            and not param.is_flag
            and (param.required or not only_required)
        ):
            options += [param.opts[0], _value(param, files, text)]
    return options + args


def _cases(path: tuple[str, ...], root: Path) -> list[Case]:
    command = _command(path)
    group = path[0]
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    prefix = list(path)
    if group == "cell":
        prefix = ["cell", "--home", str(root / "no-such-home"), *path[1:]]
    elif group == "admin":
        prefix = ["admin", "--server", UNREACHABLE, "--token", "x", *path[1:]]
    plausible = _fill(command, files, "peer-x", only_required=True)
    non_utf8 = _fill(command, files, NON_UTF8, only_required=False)
    long = _fill(command, files, LONG, only_required=False)
    garbage = {**GARBAGE_ENV, "LIAISON_HOME": str(files / "existing-file")}
    cases = [
        Case(path, "unknown option", [*prefix, *plausible, "--no-such-option"]),
        Case(path, "non-UTF-8 argument", [*prefix, *non_utf8, NON_UTF8]),
        Case(path, "over-long values", [*prefix, *long]),
        Case(path, "garbage settings", [*path, *plausible], env=garbage),
    ]
    if any(p.required for p in command.params):
        cases.append(Case(path, "required arguments missing", prefix))
    if group == "cell":
        not_a_cell = root / "not-a-cell"
        not_a_cell.mkdir(exist_ok=True)
        (not_a_cell / "cell.db").write_bytes(b"this is not SQLite" * 100)
        rest = [*path[1:], *plausible]
        cases += [
            Case(path, "home that is not a cell", ["cell", "--home", str(not_a_cell), *rest]),
            Case(path, "home that is a file",
                 ["cell", "--home", str(files / "existing-file"), *rest]),
            Case(path, "home does not exist", ["cell", "--home", str(root / "nothing"), *rest]),
        ]  # fmt: skip
    return cases


def _run(case: Case, cwd: Path) -> tuple[Case, subprocess.CompletedProcess[str]]:
    result = subprocess.run(
        [LIAISON, *case.args], env=_base_env() | case.env, cwd=cwd, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, errors="replace", timeout=90, check=False,
    )  # fmt: skip
    return case, result


def _check(case: Case, result: subprocess.CompletedProcess[str]) -> list[str]:
    where = f"`liaison {' '.join(case.path)}` ({case.why}): exit {result.returncode}"
    problems = []
    output = result.stdout + result.stderr
    if "Traceback" in output or "unexpected internal error" in output:
        problems.append(f"{where}: traceback or unhandled error\n{result.stderr[-2000:]}")
    elif result.returncode not in DOCUMENTED[case.path[0]]:
        problems.append(f"{where}: not a documented failure status\n{result.stderr[-500:]}")
    elif result.returncode != 2 and len(result.stderr.strip().splitlines()) != 1:
        problems.append(f"{where}: not one line\n{result.stderr[-1000:]}")
    return problems


def test_the_walk_finds_every_group() -> None:
    groups = {path[0] for path in COMMANDS}
    assert groups == {"admin", "cell", "server"}
    assert ("cell", "send") in COMMANDS
    assert ("cell", "relocate") in COMMANDS
    assert ("server", "run") in COMMANDS


@pytest.mark.parametrize("group", sorted(DOCUMENTED))
def test_every_command_refuses_bad_input_in_one_line(group: str, tmp_path: Path) -> None:
    """One test per group (the commands of a group run in parallel, 3 at a time)."""
    cases = [c for path in COMMANDS if path[0] == group for c in _cases(path, tmp_path)]
    cwd = tmp_path / "cwd"  # a server command that fell through would write only here
    cwd.mkdir()
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda c: _run(c, cwd), cases))
    problems = [p for case, result in results for p in _check(case, result)]
    assert not problems, "\n\n".join(problems)
    assert not any(cwd.iterdir()), sorted(p.name for p in cwd.iterdir())


# -- deeper cases, against a real relay -----------------------------------------------------------


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with relay_process(tmp_path_factory.mktemp("relay")) as running:
        yield running


def test_bad_message_input_is_one_line(relay: RelayProcess, tmp_path: Path) -> None:
    cli = Cli(relay)
    home = tmp_path / "a"
    cli.enroll(home, cli.add_cell("bad-in-a"))
    cli.enroll(tmp_path / "b", cli.add_cell("bad-in-b"))
    cli.pair("bad-in-a", "bad-in-b")
    base = ["cell", "--home", str(home), "send", "bad-in-b"]
    line = _one_line(cli, 2, *base, NON_UTF8)
    assert "argument 6 is not valid UTF-8" in line
    line = _one_line(cli, 2, *base, "hello", "--marking", "M" * 257)
    assert "256" in line
    _one_line(cli, 10, "cell", "--home", str(home), "send", LONG, "hello")
    _one_line(cli, 10, "cell", "--home", str(home), "safety-number", NON_UTF8[:3])
    result = cli.run("admin", "cell", "add", LONG)
    assert result.returncode == 2, result.stderr


def _one_line(cli: Cli, status: int, *args: str) -> str:
    result = cli.run(*args)
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[-1]


# -- Ctrl-C while starting -------------------------------------------------------------------


def _importing(pid: int) -> bool:
    """True once the CLI's own imports have begun: the first extension module is mapped (the
    interpreter's start-up and ``site`` load none). Before that moment a Ctrl-C interrupts the
    Python runtime's own initialisation, which no program can handle."""
    try:
        return "lib-dynload" in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
@pytest.mark.parametrize("delay", [0.0, 0.002, 0.01, 0.03, 0.1, 0.3, 1.0])
def test_ctrl_c_while_starting_exits_130_quietly(delay: float, tmp_path: Path) -> None:
    """SIGINT right after the start (during the imports, during parsing, at the prompt that
    ``enroll --seal`` blocks on): exit 130, no traceback."""
    args = [LIAISON, "cell", "--home", str(tmp_path / "h"), "enroll", "--server", UNREACHABLE,
            "--code", "x", "--seal"]  # fmt: skip
    proc = subprocess.Popen(args, env=_base_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _importing(proc.pid):
            assert time.monotonic() < deadline, "the CLI never started"
            time.sleep(0.0005)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err, err.decode(errors="replace")
    assert not (tmp_path / "h").exists()
