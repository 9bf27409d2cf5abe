"""A home's lifecycle: backup, restore, session reset, seal and passphrase (issue #10 item 12).

The SDK tests run the real relay in-process (``relaykit``); the CLI tests run a real
``liaison server run`` and the CLI by subprocess (``clikit``). Real SQLite, crypto and links.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from liaison.client import Cell, Message, outgoing, resets, tables
from liaison.client.backup import backup, restore
from liaison.client.errors import (
    BackupFailed,
    BadBackup,
    StateConflict,
    StateLocked,
    WrongPassphrase,
)
from liaison.client.state import SEALED_COLUMNS, STATE_FILE, Store
from liaison.protocol import frames as f
from liaison.protocol.envelope import ContentType, Envelope, Precedence
from tests.cells import take
from tests.reliability.malicious import MaliciousRelay, Tap

from .clikit import LIAISON, Cli, relay_process
from .relaykit import MemoryRelay, memory_relay

# -- helpers ----------------------------------------------------------------------------------


async def exchange(relay: MemoryRelay, a: Path, b: Path, text_a: str, text_b: str) -> None:
    """``a`` sends ``text_a`` to ``b`` and ``b`` answers ``text_b``; each waits for the
    delivery receipt, so nothing is still on its way when this returns."""
    async with relay.open(a) as ca, relay.open(b) as cb:
        sent = await ca.send("berlin", text_a)
        [got] = await take(cb, 1)
        assert (got.error, got.body) == (None, text_a)
        assert await ca.wait_status(sent, "delivered", 20) == "delivered"
        answer = await cb.send("paris", text_b)
        [got] = await take(ca, 1)
        assert (got.error, got.body) == (None, text_b)
        assert await cb.wait_status(answer, "delivered", 20) == "delivered"


def errors(messages: list[Message]) -> list[str | None]:
    return [m.error for m in messages]


def copy_home(home: Path, to: Path) -> None:
    """``cp -a`` of a closed home."""
    shutil.copytree(home, to, symlinks=True)


def put_back(copy: Path, home: Path) -> None:
    shutil.rmtree(home)
    shutil.copytree(copy, home, symlinks=True)


# -- restore with `backup` / `restore` (SDK functions of the CLI commands) --------------------


async def test_restored_home_resets_its_sessions_and_both_ways_open(tmp_path: Path) -> None:
    async with memory_relay(tmp_path) as relay:
        paris = await relay.new_cell("paris")
        berlin = await relay.new_cell("berlin", pair_with=("paris",))
        await exchange(relay, paris, berlin, "one", "two")
        saved = tmp_path / "paris.backup"
        backup(paris, saved)
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        await exchange(relay, paris, berlin, "three", "four")  # ratchets move on

        result = restore(saved, paris, force=True)
        assert (result.name, result.resets) == ("paris", 1)

        async with relay.open(paris) as ca, relay.open(berlin) as cb:
            sent = await ca.send("berlin", "five")  # the reset goes first, then this
            got = await take(cb, 2)
            assert errors(got) == ["session_reset", None]
            assert got[1].body == "five"
            assert await ca.wait_status(sent, "delivered", 20) == "delivered"
            answer = await cb.send("paris", "six")
            mine = await take(ca, 2)
            assert errors(mine) == ["session_reset_sent", None]
            assert mine[1].body == "six"
            assert await cb.wait_status(answer, "delivered", 20) == "delivered"
            assert ca.pending_resets() == []
            assert cb.gaps("paris") == []  # the restarted channel: nothing missing, no repeat
            assert [m.error for m in cb.inbox(peer="paris")].count("decrypt_failed") == 0
        # and on the next open, both ways still work
        await exchange(relay, paris, berlin, "seven", "eight")


async def test_hand_copied_home_is_detected_and_reset_session_recovers(tmp_path: Path) -> None:
    async with memory_relay(tmp_path) as relay:
        paris = await relay.new_cell("paris")
        berlin = await relay.new_cell("berlin", pair_with=("paris",))
        await exchange(relay, paris, berlin, "one", "two")
        copy_home(paris, tmp_path / "old-paris")
        await exchange(relay, paris, berlin, "three", "four")
        put_back(tmp_path / "old-paris", paris)  # no restore command: nothing is marked

        async with relay.open(paris) as ca, relay.open(berlin) as cb:
            for n in range(3):
                await cb.send("paris", f"lost {n}")
            got = await take(ca, 3)
            assert errors(got) == ["decrypt_failed", "decrypt_failed", "stale_session"]

            assert await ca.reset_session("berlin") is not None
            notice = await take(cb, 1)
            assert errors(notice) == ["session_reset"]
            answer = await cb.send("paris", "after the reset")
            mine = await take(ca, 2)
            assert errors(mine) == ["session_reset_sent", None]
            assert mine[1].body == "after the reset"
            sent = await ca.send("berlin", "and back")
            [back] = await take(cb, 1)
            assert (back.error, back.body) == (None, "and back")
            assert await ca.wait_status(sent, "delivered", 20) == "delivered"
            assert await cb.wait_status(answer, "delivered", 20) == "delivered"


async def test_offline_reset_request_is_carried_out_at_the_next_link(tmp_path: Path) -> None:
    async with memory_relay(tmp_path) as relay:
        paris = await relay.new_cell("paris")
        berlin = await relay.new_cell("berlin", pair_with=("paris",))
        await exchange(relay, paris, berlin, "one", "two")
        async with relay.open(paris, connect=False) as offline:
            assert await offline.reset_session("berlin") is None
            assert offline.pending_resets() == ["berlin"]
        async with relay.open(paris) as ca, relay.open(berlin) as cb:
            [notice] = await take(cb, 1)  # done by the bring-up, nothing else sent
            assert notice.error == "session_reset"
            [mine] = await take(ca, 1)
            assert mine.error == "session_reset_sent"
            assert ca.pending_resets() == []
        await exchange(relay, paris, berlin, "three", "four")


async def test_a_reset_is_never_forced_by_failures_alone(tmp_path: Path) -> None:
    """Envelopes that do not open (what a relay can make) only ever produce notices: the
    session survives them and no reset is requested."""
    async with memory_relay(tmp_path) as relay:
        paris = await relay.new_cell("paris")
        berlin = await relay.new_cell("berlin", pair_with=("paris",))
        await exchange(relay, paris, berlin, "one", "two")
        copy_home(paris, tmp_path / "old-paris")
        await exchange(relay, paris, berlin, "three", "four")
        put_back(tmp_path / "old-paris", paris)
        async with relay.open(paris) as ca, relay.open(berlin) as cb:
            for n in range(4):
                await cb.send("paris", f"lost {n}")
            got = await take(ca, 4)
            assert errors(got)[-1] == "stale_session"
            assert ca.pending_resets() == []
            with contextlib.closing(sqlite3.connect(paris / STATE_FILE)) as db:
                (count,) = db.execute(
                    "SELECT count(*) FROM outbox WHERE content_type = 5"
                ).fetchone()
            assert count == 0  # no reset was sent


# -- backup and restore refusals --------------------------------------------------------------


async def test_backup_never_overwrites_and_restore_refuses_an_enrolled_home(
    tmp_path: Path,
) -> None:
    async with memory_relay(tmp_path) as relay:
        paris = await relay.new_cell("paris")
    saved = tmp_path / "paris.backup"
    backup(paris, saved)
    before = saved.read_bytes()
    with pytest.raises(BackupFailed, match="never overwritten"):
        backup(paris, saved)
    assert saved.read_bytes() == before
    with pytest.raises(StateConflict, match="--force"):
        restore(saved, paris)
    not_a_backup = tmp_path / "notes.txt"
    not_a_backup.write_text("hello")
    with pytest.raises(BadBackup):
        restore(not_a_backup, tmp_path / "new-home")
    assert not (tmp_path / "new-home" / STATE_FILE).exists()
    result = restore(saved, tmp_path / "new-home")
    assert result.name == "paris"
    home_mode = stat.S_IMODE((tmp_path / "new-home").stat().st_mode)
    file_mode = stat.S_IMODE((tmp_path / "new-home" / STATE_FILE).stat().st_mode)
    assert (home_mode, file_mode) == (0o700, 0o600)
    held = Store.open(paris, None)  # a process using the home: --force must not replace it
    try:
        with pytest.raises(StateLocked):
            restore(saved, paris, force=True)
    finally:
        held.close()


# -- seal and passphrase ------------------------------------------------------------------------


def _values(home: Path, passphrase: str | None) -> dict[tuple[str, str], list[bytes | None]]:
    """Every sealed column's values, unsealed (the state as the cell sees it)."""
    store = Store.open(home, passphrase)
    try:
        out = {}
        for table, column in SEALED_COLUMNS:
            rows = store.query(f"SELECT {column} FROM {table} ORDER BY rowid")
            out[(table, column)] = [None if v is None else store.unseal(v) for (v,) in rows]
        return out
    finally:
        store.close()


async def test_reseal_is_atomic_when_it_fails_midway(tmp_path: Path) -> None:
    async with memory_relay(tmp_path) as relay:
        paris = await relay.new_cell("paris")
        berlin = await relay.new_cell("berlin", pair_with=("paris",))
        await exchange(relay, paris, berlin, "one", "two")
    plain = _values(paris, None)
    assert plain[("inbox", "body")]  # there is something in every kind of column

    def boom(table: str, column: str) -> None:
        if (table, column) == ("sessions", "state"):
            raise RuntimeError("power cut")

    store = Store.open_exclusive(paris, None)
    with pytest.raises(RuntimeError):
        store.reseal("correct horse", _between=boom)
    store.close()
    assert _values(paris, None) == plain  # the old state, whole

    store = Store.open_exclusive(paris, None)
    assert store.reseal("correct horse") > 0
    store.close()
    assert _values(paris, "correct horse") == plain
    with pytest.raises(WrongPassphrase):
        Store.open(paris, None)
    raw = sqlite3.connect(paris / STATE_FILE)
    with contextlib.closing(raw):
        (stored,) = raw.execute("SELECT body FROM inbox WHERE body IS NOT NULL").fetchone()
    assert b"two" not in bytes(stored)

    store = Store.open_exclusive(paris, "correct horse")
    with pytest.raises(RuntimeError):
        store.reseal("battery staple", _between=boom)
    store.close()
    assert _values(paris, "correct horse") == plain
    with pytest.raises(WrongPassphrase):
        Store.open(paris, "battery staple")
    async with relay_less(paris, "correct horse") as cell:  # and the SDK opens it
        assert [m.body for m in cell.inbox()] == ["two"]


@contextlib.asynccontextmanager
async def relay_less(home: Path, passphrase: str | None):  # type: ignore[no-untyped-def]
    async with Cell.open(home, passphrase, connect=False) as cell:
        yield cell


# -- the CLI, through a real relay process ------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    with relay_process(tmp_path / "relay") as relay:
        yield Cli(relay)


def _enrolled(cli: Cli, tmp_path: Path) -> tuple[Path, Path]:
    paris, berlin = tmp_path / "paris", tmp_path / "berlin"
    codes = {name: cli.add_cell(name) for name in ("paris", "berlin")}
    cli.pair("paris", "berlin")
    cli.enroll(paris, codes["paris"])
    cli.enroll(berlin, codes["berlin"])
    return paris, berlin


def _listen(cli: Cli, home: Path, count: int) -> list[dict[str, object]]:
    out = cli.cell(home, "--json", "listen", "--count", str(count), "--timeout", "30")
    import json

    return [json.loads(line) for line in out.splitlines()]


def _send(cli: Cli, home: Path, peer: str, text: str) -> None:
    cli.cell(home, "send", peer, text)


def test_cli_backup_restore_end_to_end(cli: Cli, tmp_path: Path) -> None:
    paris, berlin = _enrolled(cli, tmp_path)

    def both_ways(a: str, b: str) -> None:
        _send(cli, paris, "berlin", a)
        [got] = _listen(cli, berlin, 1)
        assert (got["error"], got["body"]) == (None, a)
        _send(cli, berlin, "paris", b)
        [got] = _listen(cli, paris, 1)
        assert (got["error"], got["body"]) == (None, b)

    both_ways("one", "two")
    saved = tmp_path / "paris.backup"
    assert "backed up paris" in cli.cell(paris, "backup", str(saved))
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert "never overwritten" in cli.fails(35, "cell", "--home", str(paris), "backup", str(saved))
    both_ways("three", "four")

    assert "--force" in cli.fails(37, "cell", "--home", str(paris), "restore", str(saved))
    out = cli.cell(paris, "restore", str(saved), "--force")
    assert "reset when it next connects" in out

    _send(cli, paris, "berlin", "five")
    got = _listen(cli, berlin, 2)
    assert [g["error"] for g in got] == ["session_reset", None]
    assert got[1]["body"] == "five"
    _send(cli, berlin, "paris", "six")
    mine = _listen(cli, paris, 2)
    assert [m["error"] for m in mine] == ["session_reset_sent", None]
    assert mine[1]["body"] == "six"

    both_ways("seven", "eight")  # and it stays so (the human texts: the test below)


def test_cli_reset_session_and_stale_notice(cli: Cli, tmp_path: Path) -> None:
    paris, berlin = _enrolled(cli, tmp_path)
    _send(cli, paris, "berlin", "one")
    _listen(cli, berlin, 1)
    _send(cli, berlin, "paris", "two")
    _listen(cli, paris, 1)
    copy_home(paris, tmp_path / "old-paris")
    _send(cli, paris, "berlin", "three")
    _listen(cli, berlin, 1)
    _send(cli, berlin, "paris", "four")
    _listen(cli, paris, 1)
    put_back(tmp_path / "old-paris", paris)

    for n in range(3):
        cli.cell(berlin, "send", "paris", f"lost {n}")
    out = cli.cell(paris, "listen", "--count", "3", "--timeout", "30")
    assert "could not be opened: decrypt_failed" in out
    assert "this home looks restored from an older copy" in out
    assert "liaison cell reset-session berlin" in out

    assert "session with berlin reset" in cli.cell(paris, "reset-session", "berlin")
    out = cli.cell(berlin, "listen", "--count", "1", "--timeout", "30")
    assert "paris reset its session with this cell (its operator asked)" in out
    _send(cli, berlin, "paris", "after")
    out = cli.cell(paris, "listen", "--count", "2", "--timeout", "30")
    assert "session with berlin reset" in out
    assert out.rstrip().endswith("after")


def test_cli_seal_and_passphrase(cli: Cli, tmp_path: Path) -> None:
    paris, _berlin = _enrolled(cli, tmp_path)
    home = ["cell", "--home", str(paris)]
    assert "sealed" in cli.ok(*home, "seal", env={"LIAISON_PASSPHRASE": "first secret"})
    assert cli.fails(15, *home, "outbox")  # sealed now: no passphrase, no state
    cli.ok(*home, "outbox", env={"LIAISON_PASSPHRASE": "first secret"})
    assert "sealed already" in cli.fails(37, *home, "seal", env={"LIAISON_PASSPHRASE": "other"})
    assert cli.fails(
        15, *home, "passphrase", env={"LIAISON_PASSPHRASE": "wrong", "LIAISON_NEW_PASSPHRASE": "x"}
    )
    result = subprocess.run(
        [LIAISON, *home, "passphrase", "--passphrase-stdin"],
        input="first secret\nsecond secret\n",
        capture_output=True,
        text=True,
        env=cli.env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "passphrase changed" in result.stdout
    cli.fails(15, *home, "outbox", env={"LIAISON_PASSPHRASE": "first secret"})
    cli.ok(*home, "outbox", env={"LIAISON_PASSPHRASE": "second secret"})
    held = Store.open(paris, "second secret")  # a running process: no re-sealing under it
    try:
        cli.fails(27, *home, "passphrase",
                  env={"LIAISON_PASSPHRASE": "second secret",
                       "LIAISON_NEW_PASSPHRASE": "third"})  # fmt: skip
    finally:
        held.close()
    cli.ok(*home, "outbox", env={"LIAISON_PASSPHRASE": "second secret"})
    assert os.path.exists(paris / STATE_FILE)


# -- what a relay can and cannot do with resets (M-SES-12) ---------------------------------------


async def test_replayed_reset_is_a_duplicate_even_after_pruning(tmp_path: Path) -> None:
    async with memory_relay(tmp_path) as relay:
        paris = await relay.new_cell("paris")
        berlin = await relay.new_cell("berlin", pair_with=("paris",))
        await exchange(relay, paris, berlin, "one", "two")
        evil = MaliciousRelay(relay)
        try:
            async with evil.open(paris) as ca, evil.open(berlin) as cb:
                reset_id = await ca.reset_session("berlin")
                assert reset_id is not None
                [notice] = await take(cb, 1)
                assert (notice.id, notice.error) == (reset_id, "session_reset")
                [frame] = [
                    d
                    for r, d in evil.delivered
                    if r == bytes.fromhex(cb.cell_id)
                    and Envelope.decode(d.envelope).routing.message_id.hex() == reset_id
                ]
                store = cb._require_store()
                with store.transaction():  # long after expiry: hidden rows are forgotten
                    tables.prune(store, int(time.time()) + 10**9)
                sessions = [row.id for row in tables.sessions_for(store, bytes.fromhex(ca.cell_id))]
                replay = f.DeliverFrame(evil.fake_seq(), frame.sender_cell_id,
                                        frame.received_at_ms, frame.envelope)  # fmt: skip
                await evil.tap(bytes.fromhex(cb.cell_id)).emit(replay)
                await evil.tap(bytes.fromhex(cb.cell_id)).wait_ack(replay.relay_seq)
                after = [row.id for row in tables.sessions_for(store, bytes.fromhex(ca.cell_id))]
                assert after == sessions  # nothing changed
                assert [m.error for m in cb.inbox(peer="paris")].count("session_reset") == 1
                sent = await ca.send("berlin", "still fine")
                [got] = await take(cb, 1)
                assert (got.error, got.body) == (None, "still fine")
                assert await ca.wait_status(sent, "delivered", 20) == "delivered"
        finally:
            await evil.aclose()


async def test_reset_payload_in_an_existing_session_is_not_a_reset(tmp_path: Path) -> None:
    async with memory_relay(tmp_path) as relay:
        paris = await relay.new_cell("paris")
        berlin = await relay.new_cell("berlin", pair_with=("paris",))
        await exchange(relay, paris, berlin, "one", "two")
        async with relay.open(paris) as ca, relay.open(berlin) as cb:
            store = ca._require_store()
            peer = bytes.fromhex(cb.cell_id)
            [current, *_] = tables.sessions_for(store, peer)
            message_id, envelope = outgoing.seal_into_outbox(
                store, current.load(), current.id, content_type=ContentType.CONTROL,
                payload=resets.build_reset(resets.REASON_OPERATOR), precedence=Precedence.FLASH,
                expires_at=int(time.time()) + 600,
            )  # fmt: skip
            ca._queue_transmit(message_id, envelope)
            await ca.send("berlin", "after it")
            [got] = await take(cb, 1)  # the control row is hidden: no notice
            assert (got.error, got.body) == (None, "after it")
            theirs = cb._require_store()
            assert theirs.query("SELECT * FROM reset_sessions") == []


async def test_restored_home_skips_one_time_prekey_ids(tmp_path: Path) -> None:
    """M-SES-13 / M-KEY-2: ids the lost state may have uploaded are never issued again."""
    async with memory_relay(tmp_path) as relay:
        paris = await relay.new_cell("paris", one_time_prekeys=5)
    saved = tmp_path / "paris.backup"
    backup(paris, saved)
    store = Store.open(paris, None)
    with store.transaction():
        issued_later = [i for i, _ in store.new_one_time_prekeys(50)]  # then the home is lost
    store.close()
    restore(saved, paris, force=True)
    store = Store.open(paris, None)
    try:
        with store.transaction():
            fresh = [i for i, _ in store.new_one_time_prekeys(5)]
    finally:
        store.close()
    assert min(fresh) > max(issued_later) + 1000


async def test_reset_held_back_by_the_relay_is_still_shown(tmp_path: Path) -> None:
    """A relay that holds the reset back and delivers the next envelope of the new session
    first cannot hide the reset from the operator."""
    async with memory_relay(tmp_path) as relay:
        paris = await relay.new_cell("paris")
        berlin = await relay.new_cell("berlin", pair_with=("paris",))
        await exchange(relay, paris, berlin, "one", "two")
        evil = MaliciousRelay(relay)
        held: list[f.Frame] = []
        control: set[str] = set()

        async def hold_reset(tap: Tap, frame: f.Frame) -> Sequence[f.Frame]:
            if isinstance(frame, f.DeliverFrame):
                message_id = Envelope.decode(frame.envelope).routing.message_id.hex()
                if message_id in control:
                    held.append(frame)
                    return []
            return [frame]

        evil.on_frame = hold_reset
        try:
            async with evil.open(paris) as ca, evil.open(berlin) as cb:
                reset_id = await ca.reset_session("berlin")
                assert reset_id is not None
                control.add(reset_id)  # before any await: the transmitter has not run yet
                await ca.send("berlin", "overtakes it")
                [first] = await take(cb, 1)
                assert (first.error, first.body) == (None, "overtakes it")
                assert len(held) == 1
                await evil.tap(bytes.fromhex(cb.cell_id)).emit(*held)
                [notice] = await take(cb, 1)
                assert (notice.id, notice.error) == (reset_id, "session_reset")
                assert cb.gaps("paris") == []
                answer = await cb.send("paris", "back")
                mine = await take(ca, 2)
                assert errors(mine) == ["session_reset_sent", None]
                assert await cb.wait_status(answer, "delivered", 20) == "delivered"
        finally:
            await evil.aclose()
