"""``liaison cell`` end to end, as a user types it: a real relay process (``liaison server
run``, SQLite in a temporary directory, a free loopback port), ``liaison admin`` to provision,
and every cell command as a subprocess of the installed ``liaison`` script.

One relay serves the whole module; every test provisions its own cells (names prefixed by the
test) so the tests stay independent. Every command is checked for tracebacks; every failure
for its documented exit status (``liaison cell --help``, ``liaison.client.errors``) and a
single ``error: ...`` line.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .clikit import LIAISON, Cli, free_port

PRECEDENCE_ORDER = ["flash", "immediate", "priority", "routine"]
MARKING = "NATO RESTRICTED"
BODIES = {
    "routine": "Weekly liaison report attached.",
    "priority": "Request update on convoy schedule.",
    "flash": "Airspace closure in sector 4 effective now.",
    "immediate": "Liaison officer arriving 1400Z.",
}


def enrolled(cli: Cli, root: Path, name: str, *, passphrase: str | None = None) -> Path:
    """Create cell ``name`` (admin) and enroll ``root/name`` with its code (cell)."""
    home = root / name
    code = cli.add_cell(name)
    if passphrase is None:
        info = cli.enroll(home, code)
    else:
        info = cli.cell_json(home, "enroll", "--code", code, "--seal",
                             env={"LIAISON_PASSPHRASE": passphrase})  # fmt: skip
    assert info["name"] == name
    assert info["server"] == cli.relay.url
    assert len(info["cell_id"]) == 32
    return home


def test_four_precedences_offline_then_listen_in_precedence_order(cli: Cli, tmp_path: Path) -> None:
    """A sends FLASH/IMMEDIATE/PRIORITY/ROUTINE while B is offline; B listens and gets them
    FLASH first with bodies and markings; A's outbox then shows all four read; the safety
    numbers agree on both sides."""
    paris = enrolled(cli, tmp_path, "e2e-fr-paris")
    berlin = enrolled(cli, tmp_path, "e2e-de-berlin")
    cli.pair("e2e-fr-paris", "e2e-de-berlin")

    sent: dict[str, str] = {}  # message id -> precedence
    for precedence in ("routine", "priority", "flash", "immediate"):  # not in precedence order
        answer = cli.cell_json(paris, "send", "e2e-de-berlin", BODIES[precedence],
                               "--precedence", precedence, "--marking", MARKING)  # fmt: skip
        assert answer["status"] == "accepted", answer
        sent[answer["message_id"]] = precedence

    out = cli.cell(berlin, "--json", "listen", "--count", "4", "--timeout", "30")
    lines = out.splitlines()
    assert len(lines) == 4, out
    received = [json.loads(line) for line in lines]
    assert [m["precedence"] for m in received] == PRECEDENCE_ORDER
    for message in received:
        assert message["body"] == BODIES[message["precedence"]]
        assert message["marking"] == MARKING
        assert message["sender"] == "e2e-fr-paris"
        assert message["content_type"] == "text"
        assert message["error"] is None
        assert sent[message["id"]] == message["precedence"]
    assert [m["seq"] for m in sorted(received, key=lambda m: m["seq"])] == [1, 2, 3, 4]

    # A connects once (peers), which hands it the delivery and read receipts B sent.
    peers = cli.cell_json(paris, "peers")
    assert [(p["name"], p["status"]) for p in peers] == [("e2e-de-berlin", "active")]
    outbox = cli.cell_json(paris, "outbox")
    assert {e["message_id"]: e["status"] for e in outbox} == dict.fromkeys(sent, "read")
    assert {e["message_id"]: e["precedence"] for e in outbox} == sent

    # Nothing is yielded twice: a second listen gets nothing.
    again = cli.cell(berlin, "--json", "listen", "--timeout", "1")
    assert again == ""

    ours = cli.cell(paris, "safety-number", "e2e-de-berlin").strip()
    theirs = cli.cell(berlin, "safety-number", "e2e-fr-paris").strip()
    assert ours == theirs
    groups = ours.split(" ")
    assert len(groups) == 12
    assert all(len(g) == 5 and g.isdigit() for g in groups)
    as_json = cli.cell_json(paris, "safety-number", "e2e-de-berlin")
    assert as_json == {"peer": "e2e-de-berlin", "safety_number": ours.replace(" ", ""),
                       "key_changed": False, "new_safety_number": None}  # fmt: skip

    verified = cli.cell_json(paris, "verify", "e2e-de-berlin")
    assert verified["verified"] is True
    assert [p["verified"] for p in cli.cell_json(paris, "peers")] == [True]


def test_unknown_peer_exits_10(cli: Cli, tmp_path: Path) -> None:
    home = enrolled(cli, tmp_path, "e2e-lonely")
    line = cli.fails(10, "cell", "--home", str(home), "send", "nobody-here", "hello")
    assert "nobody-here" in line
    cli.fails(10, "cell", "--home", str(home), "safety-number", "nobody-here")


def test_unpaired_cell_is_unknown_by_name_and_not_paired_by_id(cli: Cli, tmp_path: Path) -> None:
    """A third enrolled cell without a channel: the relay does not reveal it exists, so by
    name it is an unknown peer (10, "no paired cell is called ..."); by cell id the relay
    answers ``not_paired`` (11). A channel removed after use: not paired (11)."""
    a = enrolled(cli, tmp_path, "e2e-un-a")
    enrolled(cli, tmp_path, "e2e-un-b")
    third = enrolled(cli, tmp_path, "e2e-un-third")
    assert cli.cell_json(third, "peers") == []  # enrolled, paired with nobody
    assert cli.cell_json(a, "peers") == []
    cli.fails(10, "cell", "--home", str(a), "send", "e2e-un-third", "hello")
    third_cell_id = next(
        c["id"] for c in cli.admin_json("cell", "list") if c["name"] == "e2e-un-third"
    )
    cli.fails(11, "cell", "--home", str(a), "send", third_cell_id, "hello")

    cli.pair("e2e-un-a", "e2e-un-b")
    assert cli.cell_json(a, "send", "e2e-un-b", "while paired")["status"] == "accepted"
    cli.ok("admin", "channel", "remove", "e2e-un-a", "e2e-un-b")
    cli.fails(11, "cell", "--home", str(a), "send", "e2e-un-b", "after the channel went")
    assert [(p["name"], p["status"]) for p in cli.cell_json(a, "peers")] == [
        ("e2e-un-b", "unpaired")
    ]


def test_revoked_peer_exits_22(cli: Cli, tmp_path: Path) -> None:
    """After an admin revokes B, A learns it on its next connect and a send is refused
    locally with ``peer_revoked`` (22); the peer list shows it revoked."""
    a = enrolled(cli, tmp_path, "e2e-rv-a")
    b = enrolled(cli, tmp_path, "e2e-rv-b")
    cli.pair("e2e-rv-a", "e2e-rv-b")
    assert cli.cell_json(a, "send", "e2e-rv-b", "before")["status"] == "accepted"
    cli.ok("admin", "cell", "revoke", "e2e-rv-b")
    line = cli.fails(22, "cell", "--home", str(a), "send", "e2e-rv-b", "after")
    assert "revoked" in line
    assert [(p["name"], p["status"]) for p in cli.cell_json(a, "peers")] == [
        ("e2e-rv-b", "revoked")
    ]
    # The revoked cell itself is told so (17) when it next connects.
    cli.fails(17, "cell", "--home", str(b), "peers")


def test_wrong_or_missing_passphrase_exits_15(cli: Cli, tmp_path: Path) -> None:
    home = enrolled(cli, tmp_path, "e2e-sealed", passphrase="correct horse")
    peers = cli.cell_json(home, "peers", env={"LIAISON_PASSPHRASE": "correct horse"})
    assert peers == []
    line = cli.fails(15, "cell", "--home", str(home), "peers",
                     env={"LIAISON_PASSPHRASE": "battery staple"})  # fmt: skip
    assert "passphrase" in line
    # No passphrase and no terminal to prompt on: also 15, not a hang.
    cli.fails(15, "cell", "--home", str(home), "outbox")
    # The failed attempts left the state intact.
    assert cli.cell_json(home, "outbox", env={"LIAISON_PASSPHRASE": "correct horse"}) == []


def test_corrupted_state_exits_16(cli: Cli, tmp_path: Path) -> None:
    home = enrolled(cli, tmp_path, "e2e-corrupt")
    state = home / "cell.db"
    size = max(state.stat().st_size, 4096)
    state.write_bytes(os.urandom(size))
    for side in ("cell.db-wal", "cell.db-shm"):
        (home / side).unlink(missing_ok=True)
    for args in (("peers",), ("outbox",), ("send", "anyone", "hello"), ("listen", "--count", "1")):
        line = cli.fails(16, "cell", "--home", str(home), *args)
        assert "state" in line


def test_truncated_state_exits_16(cli: Cli, tmp_path: Path) -> None:
    """A state file cut in half (a disk full, a bad copy) is corrupt too, not a traceback."""
    home = enrolled(cli, tmp_path, "e2e-truncated")
    state = home / "cell.db"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    for side in ("cell.db-wal", "cell.db-shm"):
        (home / side).unlink(missing_ok=True)
    cli.fails(16, "cell", "--home", str(home), "outbox")


def test_relay_down_exits_13_and_enrollment_can_be_retried(cli: Cli, tmp_path: Path) -> None:
    code = cli.add_cell("e2e-down")
    home = tmp_path / "e2e-down"
    closed = f"http://127.0.0.1:{free_port()}"
    line = cli.fails(13, "cell", "--home", str(home), "enroll", "--code", code,
                     env={"LIAISON_SERVER": closed})  # fmt: skip
    assert "relay" in line
    # The code was not used: the same code enrolls once the relay is reachable.
    assert cli.enroll(home, code)["name"] == "e2e-down"


def test_bad_codes_exit_14(cli: Cli, tmp_path: Path) -> None:
    cli.fails(14, "cell", "--home", str(tmp_path / "x"), "enroll", "--code", "ln1-not-a-code")
    assert not (tmp_path / "x" / "cell.db").exists()

    code = cli.add_cell("e2e-code-once")
    enrolled_home = tmp_path / "first"
    cli.enroll(enrolled_home, code)
    line = cli.fails(14, "cell", "--home", str(tmp_path / "second"), "enroll", "--code", code)
    assert "code" in line
    assert not (tmp_path / "second" / "cell.db").exists()
    # The home that did enroll refuses a second enrollment (20), whatever the code.
    cli.fails(20, "cell", "--home", str(enrolled_home), "enroll", "--code", code)


def test_not_enrolled_exits_19(cli: Cli, tmp_path: Path) -> None:
    cli.fails(19, "cell", "--home", str(tmp_path / "empty"), "peers")


def test_listen_never_loses_a_message_it_could_not_print(cli: Cli, tmp_path: Path) -> None:
    """``listen`` whose output goes nowhere (the reading end of its pipe is closed, as when a
    consumer dies) does not count the message as handed over: the next ``listen`` prints it."""
    paris = enrolled(cli, tmp_path, "e2e-pipe-paris")
    berlin = enrolled(cli, tmp_path, "e2e-pipe-berlin")
    cli.pair("e2e-pipe-paris", "e2e-pipe-berlin")
    sent = cli.cell_json(paris, "send", "e2e-pipe-berlin", "do not drop me")
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read what listen prints
    try:
        proc = subprocess.run(
            [LIAISON, "cell", "--home", str(berlin), "--json", "listen", "--count", "1",
             "--timeout", "30"],
            env=cli.env, stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE,
            text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    again = cli.cell(berlin, "--json", "listen", "--count", "1", "--timeout", "30")
    [message] = [json.loads(line) for line in again.splitlines()]
    assert (message["id"], message["body"]) == (sent["message_id"], "do not drop me")
