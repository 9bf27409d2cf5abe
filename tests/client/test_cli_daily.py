"""``liaison cell`` as a cell's daily tool (issue #10, items 2, 3 and 13), end to end: a real
relay process, the installed ``liaison`` script by subprocess, a long-running ``listen`` read
line by line (with deadlines, never fixed sleeps).

* every other command of a home works beside its running ``listen`` (handed over through
  ``<home>/cell.sock``), and a second ``listen`` is refused with 28;
* with the relay down, ``send`` stores and prints ``queued`` (also to a peer with no session
  yet), the next connection sends it; ``peers``/``safety-number``/``verify``/``outbox``/
  ``history``/``inbox`` answer from local state; ``listen`` waits out the outage;
* an SDK script that sends and leaves its ``async with`` at once still delivers (the close
  waits for the link), and the README's SDK snippet runs as written.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from .clikit import (
    LIAISON,
    Cli,
    free_port,
    relay_process_at,
    stop_process,
)

DEADLINE = 60.0
README = Path(__file__).resolve().parents[2] / "README.md"


class Running:
    """A long-running ``liaison`` command whose stdout and stderr are read line by line."""

    def __init__(self, cli: Cli, *args: str) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [LIAISON, *args], env=cli.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        self.seen_err: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.pumps = [threading.Thread(target=_pump, args=(stream, sink), daemon=True)
                      for stream, sink in ((self.proc.stdout, self.out),
                                           (self.proc.stderr, self.err))]  # fmt: skip
        for pump in self.pumps:
            pump.start()

    def _expect(self, lines: queue.Queue[str | None], match: Callable[[str], bool],
                what: str, timeout: float) -> str:  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{what} not seen in {timeout} s; stderr: {self.seen_err}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"{what}: the command ended ({self.proc.wait()}); "
                                     f"stderr: {self.seen_err}")  # fmt: skip
            if lines is self.err:
                self.seen_err.append(line)
            assert "Traceback" not in line, line
            if match(line):
                return line

    def message(self, body: str, timeout: float = DEADLINE) -> dict[str, Any]:
        """The next ``listen --json`` line whose body is ``body``."""
        line = self._expect(self.out, lambda s: json.loads(s)["body"] == body, repr(body),
                            timeout)  # fmt: skip
        message: dict[str, Any] = json.loads(line)
        return message

    def stderr(self, text: str, timeout: float = DEADLINE) -> str:
        return self._expect(self.err, lambda s: text in s, repr(text), timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float = DEADLINE) -> int:
        """Wait for the command to end; its exit status (stderr drained for the checks)."""
        code = self.proc.wait(timeout)
        while True:
            line = self.err.get(timeout=timeout)
            if line is None:
                break
            assert "Traceback" not in line, line
            self.seen_err.append(line)
        return code

    def stop(self) -> None:
        stop_process(self.proc)
        for pump in self.pumps:
            pump.join(DEADLINE)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _pump(stream: IO[str], sink: queue.Queue[str | None]) -> None:
    for line in stream:
        sink.put(line.rstrip("\n"))
    sink.put(None)


def enrolled(cli: Cli, root: Path, name: str) -> Path:
    home = root / name
    assert cli.enroll(home, cli.add_cell(name))["name"] == name
    return home


def listen(cli: Cli, home: Path, *extra: str) -> Running:
    return Running(cli, "cell", "--home", str(home), "--json", "listen", *extra)


def test_commands_work_beside_a_running_listen(cli: Cli, tmp_path: Path) -> None:
    """berlin's listen keeps running and receiving while every other command of berlin's
    home runs beside it (handed over to it), with the output they have on their own."""
    paris = enrolled(cli, tmp_path, "dl-paris")
    berlin = enrolled(cli, tmp_path, "dl-berlin")
    cli.pair("dl-paris", "dl-berlin")
    listener = listen(cli, berlin, "--count", "2", "--timeout", "120")
    try:
        cli.cell_json(paris, "send", "dl-berlin", "before")
        listener.message("before")  # listen is live: it holds berlin's link

        answer = cli.cell_json(berlin, "send", "dl-paris", "reply beside listen")
        assert answer["status"] == "accepted"
        human = cli.cell(berlin, "send", "dl-paris", "human reply")
        assert re.fullmatch(r"[0-9a-f]{32} accepted\n", human), human
        peers = cli.cell_json(berlin, "peers")
        assert [(p["name"], p["status"]) for p in peers] == [("dl-paris", "active")]
        assert "dl-paris" in cli.cell(berlin, "peers")
        number = cli.cell(berlin, "safety-number", "dl-paris").strip()
        assert number == cli.cell(paris, "safety-number", "dl-berlin").strip()
        assert cli.cell_json(berlin, "safety-number", "dl-paris")["safety_number"] == (
            number.replace(" ", "")
        )
        assert cli.cell_json(berlin, "verify", "dl-paris")["verified"] is True
        assert cli.cell(berlin, "verify", "dl-paris") == "dl-paris verified\n"
        outbox = cli.cell_json(berlin, "outbox")
        assert answer["message_id"] in {e["message_id"] for e in outbox}
        cli.fails(10, "cell", "--home", str(berlin), "send", "nobody", "x")  # errors too

        assert listener.alive()
        cli.cell_json(paris, "send", "dl-berlin", "after")
        listener.message("after")
        assert listener.finish() == 0
        assert not any("replaced" in line for line in listener.seen_err), listener.seen_err
    finally:
        listener.stop()
    got = [m["body"] for m in cli.cell_json(paris, "history", "dl-berlin")]
    assert got == ["before", "reply beside listen", "human reply", "after"]


def test_a_second_listen_is_refused_with_28(cli: Cli, tmp_path: Path) -> None:
    paris = enrolled(cli, tmp_path, "dl2-paris")
    berlin = enrolled(cli, tmp_path, "dl2-berlin")
    cli.pair("dl2-paris", "dl2-berlin")
    first = listen(cli, berlin, "--count", "2", "--timeout", "120")
    try:
        cli.cell_json(paris, "send", "dl2-berlin", "one")
        first.message("one")
        line = cli.fails(28, "cell", "--home", str(berlin), "listen", "--timeout", "30")
        assert "another process is receiving for this home" in line
        cli.cell_json(paris, "send", "dl2-berlin", "two")
        first.message("two")  # the first listen was not disturbed
        assert first.finish() == 0
    finally:
        first.stop()


@pytest.fixture
def restartable(tmp_path: Path) -> Callable[[], Any]:
    """A relay of this test alone that can be stopped and started again on its port and
    state; yields ``start()``, a context manager running it."""
    directory = tmp_path / "own-relay"
    port = free_port()
    token: list[str] = []

    def start() -> Any:
        return relay_process_at(directory, port, "".join(token))

    with start() as first:
        token.append(first.admin_token)
    return start


def test_offline_first_send_and_local_commands(
    restartable: Callable[[], Any], tmp_path: Path
) -> None:
    """With the relay down: a send to a peer with no session yet is stored and reported
    queued (exit 0); peers, safety-number, verify, outbox, history and inbox answer from local
    state with a note. When the relay is back, the next connection seals and sends it."""
    with restartable() as relay:
        cli = Cli(relay)
        paris = enrolled(cli, tmp_path, "of-paris")
        berlin = enrolled(cli, tmp_path, "of-berlin")
        cli.pair("of-paris", "of-berlin")
        cli.cell_json(paris, "peers")  # each learns the other (no session yet)
        cli.cell_json(berlin, "peers")
    # The relay is down now.
    result = cli.run("cell", "--home", str(paris), "send", "of-berlin", "first contact")
    assert result.returncode == 0, result.stderr
    message_id, status = result.stdout.split()
    assert status == "queued"
    assert result.stderr.count("\n") == 1
    assert "next connects" in result.stderr
    answer = cli.cell_json(paris, "send", "of-berlin", "second", "--precedence", "flash")
    assert answer["status"] == "queued"

    for args in (("peers",), ("safety-number", "of-berlin"), ("verify", "of-berlin"),
                 ("outbox",), ("history",), ("inbox",)):  # fmt: skip
        out = cli.run("cell", "--home", str(paris), "--json", *args)
        assert out.returncode == 0, (args, out.stderr)
        assert "stale" in out.stderr, (args, out.stderr)
        assert out.stderr.count("\n") == 1, (args, out.stderr)
    assert [(p["name"], p["verified"]) for p in cli.cell_json(paris, "peers")] == [
        ("of-berlin", True)
    ]
    outbox = cli.cell_json(paris, "outbox")
    assert [(e["message_id"], e["status"]) for e in outbox] == [
        (message_id, "queued"), (answer["message_id"], "queued"),
    ]  # fmt: skip
    sent = cli.cell_json(paris, "history", "of-berlin", "--search", "CONTACT")
    assert [(e["direction"], e["body"], e["status"]) for e in sent] == [
        ("sent", "first contact", "queued")
    ]

    with restartable() as relay:
        cli = Cli(relay)
        # Any connecting command sends what is stored; a send waits for its turn behind it.
        cli.cell_json(paris, "peers")
        third = cli.cell_json(paris, "send", "of-berlin", "third", "--wait", "accepted")
        assert third["status"] == "accepted"
        statuses = {e["message_id"]: e["status"] for e in cli.cell_json(paris, "outbox")}
        assert statuses[message_id] != "queued"
        assert statuses[answer["message_id"]] != "queued"
        lines = cli.cell(berlin, "--json", "listen", "--count", "3", "--timeout", "60")
        got = [json.loads(line) for line in lines.splitlines()]
        assert sorted(m["body"] for m in got) == ["first contact", "second", "third"]
        assert all(m["sender"] == "of-paris" and m["error"] is None for m in got)
        inbox = cli.cell_json(berlin, "inbox", "of-paris")
        assert sorted(e["body"] for e in inbox) == ["first contact", "second", "third"]
        assert {e["direction"] for e in inbox} == {"received"}


def test_listen_during_an_outage_waits_and_recovers(
    restartable: Callable[[], Any], tmp_path: Path
) -> None:
    with restartable() as relay:
        cli = Cli(relay)
        paris = enrolled(cli, tmp_path, "ou-paris")
        berlin = enrolled(cli, tmp_path, "ou-berlin")
        cli.pair("ou-paris", "ou-berlin")
        cli.cell_json(berlin, "peers")  # berlin knows paris (no session yet)
        cli.cell_json(paris, "send", "ou-berlin", "before the outage")
    listener = listen(cli, berlin, "--count", "2", "--timeout", "180")
    try:
        listener.stderr("relay unreachable, retrying")
        # A send to berlin's home beside its listen, during the outage: stored, queued.
        queued = cli.cell_json(berlin, "send", "ou-paris", "from the outage")
        assert queued["status"] == "queued"
        with restartable() as relay:
            cli = Cli(relay)
            listener.stderr("connected to the relay again")
            listener.message("before the outage")
            cli.cell_json(paris, "send", "ou-berlin", "after the outage")
            listener.message("after the outage")
            assert listener.finish() == 0
            assert listener.seen_err.count("relay unreachable, retrying") == 1
            status = {e["message_id"]: e["status"] for e in cli.cell_json(berlin, "outbox")}
            assert status[queued["message_id"]] != "queued"
    finally:
        listener.stop()


SDK_SCRIPT = """
import asyncio, json, sys
from liaison.client import Cell

async def main() -> None:
    async with Cell.open(sys.argv[1], wait_connected=None, linger=120) as cell:
        message_id = await cell.send(sys.argv[2], "daily report")
        print("stored", message_id, await cell.status(message_id), flush=True)
    print(json.dumps(cell.left_queued), flush=True)

asyncio.run(main())
"""


def test_an_sdk_script_that_sends_and_exits_delivers(
    restartable: Callable[[], Any], tmp_path: Path
) -> None:
    """The script leaves its ``async with`` while the relay is down (restarting): the close
    waits (bounded by ``linger``) for the link and the relay's acceptance, and reports what
    it left queued (nothing)."""
    with restartable() as relay:
        cli = Cli(relay)
        paris = enrolled(cli, tmp_path, "sdk-paris")
        berlin = enrolled(cli, tmp_path, "sdk-berlin")
        cli.pair("sdk-paris", "sdk-berlin")
        cli.cell_json(paris, "peers")
    script = tmp_path / "report.py"
    script.write_text(SDK_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(paris), "sdk-berlin"],
                            env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("stored "), first
        assert first.split()[2] == "queued", first
        with restartable() as relay:
            cli = Cli(relay)
            out, err = proc.communicate(timeout=DEADLINE * 2)
            assert proc.returncode == 0, err
            assert "Traceback" not in err, err
            assert json.loads(out) == []
            got = cli.cell(berlin, "--json", "listen", "--count", "1", "--timeout", "60")
            assert json.loads(got)["body"] == "daily report"
    finally:
        stop_process(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _readme_sdk_snippet() -> str:
    text = README.read_text()
    start = text.index("The same from Python")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None
    return block.group(1)


def test_the_readme_sdk_snippet_runs_as_written(cli: Cli, tmp_path: Path) -> None:
    """The README's first SDK snippet, run as a script in a directory holding ./paris (the
    cell fr-paris, paired with de-berlin, as in the README), sends and delivers."""
    paris = tmp_path / "paris"
    assert cli.enroll(paris, cli.add_cell("fr-paris"))["name"] == "fr-paris"
    berlin = enrolled(cli, tmp_path, "de-berlin")
    cli.pair("fr-paris", "de-berlin")
    cli.cell_json(berlin, "send", "fr-paris", "Roger")  # so the snippet has one to print
    script = tmp_path / "snippet.py"
    script.write_text(_readme_sdk_snippet())
    result = subprocess.run([sys.executable, str(script)], cwd=paris.parent, env=cli.env,
                            capture_output=True, text=True, timeout=DEADLINE * 2,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "de-berlin" in result.stdout, result.stdout
    assert "Roger" in result.stdout, result.stdout
    got = cli.cell(berlin, "--json", "listen", "--count", "1", "--timeout", "60")
    assert json.loads(got)["body"] == "Convoy departs 0600Z"


def test_commands_started_together_share_one_link(cli: Cli, tmp_path: Path) -> None:
    """Several commands of one home started at once, no listen running: one opens the link,
    the others hand their work to it (or wait for it and then open theirs); none replaces
    another, and every message arrives."""
    paris = enrolled(cli, tmp_path, "tg-paris")
    berlin = enrolled(cli, tmp_path, "tg-berlin")
    cli.pair("tg-paris", "tg-berlin")
    cli.cell_json(paris, "peers")
    bodies = [f"together {i}" for i in range(4)]
    procs = [
        subprocess.Popen([LIAISON, "cell", "--home", str(paris), "--json", "send", "tg-berlin",
                          body], env=cli.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for body in bodies
    ]  # fmt: skip
    peers = cli.cell_json(paris, "peers")  # and one more command beside them
    assert [p["name"] for p in peers] == ["tg-berlin"]
    for proc in procs:
        out, err = proc.communicate(timeout=DEADLINE * 2)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
        assert json.loads(out)["status"] == "accepted"
    lines = cli.cell(berlin, "--json", "listen", "--count", "4", "--timeout", "60")
    assert sorted(json.loads(line)["body"] for line in lines.splitlines()) == bodies
