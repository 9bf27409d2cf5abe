"""Untrusted display input (SPEC.md §12.10, [M-CLI-6]) and what ``listen``/``peers`` show.

A paired cell controls the body and the marking of what it sends, the relay controls names
and error reasons: none of it may move the cursor, rewrite a line, set the terminal's title,
reorder text or imitate the CLI's own lines on the operator's screen. The pure rendering is
tested on its own (with hypothesis); the whole path — a peer sending hostile text through a
real relay process, ``liaison cell listen`` printing it — end to end. Notices (gaps, failed
sends) come from a relay that really drops envelopes (the malicious relay of the reliability
suite, in-process).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import unicodedata
from collections.abc import AsyncIterator, Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liaison.client.cell_cli import _message_line, _notice_line
from liaison.client.models import Message
from liaison.client.notices import Notice
from liaison.client.render import BODY_INDENT, indent_body, safe_label, safe_text
from liaison.client.state import STATE_FILE
from liaison.protocol import frames as f
from tests.cells import take
from tests.reliability.malicious import MaliciousRelay, Tap

from .clikit import Cli
from .faults import cell_keys
from .relaykit import memory_relay

FORGED_MARKING = "UNCLASSIFIED\r20:25:00 FLASH     de-berlin [NATO SECRET"
HOSTILE = [
    "\r",  # carriage return: rewrite the line
    "\x1b[2K\x1b[1A",  # CSI: erase line, cursor up
    "\x1b]0;owned\x07",  # OSC: set the window title
    "\x9b2J",  # C1 CSI: clear the screen
    "\x08\x08\x08",  # backspaces
    "\x7f",  # DEL
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u2066",  # LEFT-TO-RIGHT ISOLATE
    "\u200b",  # ZERO WIDTH SPACE
    "\ufeff",  # BOM
    "\u2028",  # LINE SEPARATOR
    "\u0085",  # NEXT LINE (C1)
    "\x00",
]


def dangerous(ch: str, *, body: bool) -> bool:
    """Characters a terminal obeys or that hide/reorder text (a body may keep \\n and the
    zero-width joiners)."""
    if body and ch in "\n\u200c\u200d":
        return False
    return unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def message(body: str | bytes | None = "hello", marking: str = "", sender: str = "de-berlin",
            error: str | None = None) -> Message:  # fmt: skip
    when = datetime(2026, 12, 1, 20, 25, 0, tzinfo=UTC)
    return Message("3f2a9c1b" + "0" * 24, sender, "ab" * 16, body, "text", "routine", marking,
                   when, when, 7, False, error)  # fmt: skip


# -- the rendering --------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE)
def test_every_control_is_made_visible(hostile: str) -> None:
    """[M-CLI-6] Each kind of control or format character comes out as a visible escape."""
    for multiline in (False, True):
        shown = safe_text(f"a{hostile}b", multiline=multiline)
        assert not any(dangerous(ch, body=multiline) for ch in shown), repr(shown)
        assert shown.startswith("a")
        assert shown.endswith("b")
        assert len(shown) > 2 + len(hostile) - 1  # something visible stands for it


def test_escapes_are_readable() -> None:
    assert safe_text("a\rb\x1b[1m\x7f\x9b") == "a\\rb\\x1b[1m\\x7f\\x9b"
    assert safe_text("evil\u202egpj.exe") == "evil<U+202E>gpj.exe"
    assert safe_text("de-ber\u200blin") == "de-ber<U+200B>lin"
    assert safe_text("line\nbreak") == "line\\nbreak"  # one-line fields stay one line
    assert safe_text("tab\there") == "tab\\there"
    assert safe_text("Grüße, Ελλάδα, 北京, مرحبا") == "Grüße, Ελλάδα, 北京, مرحبا"


def test_bodies_keep_line_breaks_and_expand_tabs() -> None:
    assert safe_text("a\r\nb\nc", multiline=True) == "a\nb\nc"
    assert safe_text("a\tb", multiline=True) == "a       b"
    assert safe_text("a\rb", multiline=True) == "a\\rb"  # a lone CR is not a line break
    assert safe_text("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", multiline=True) == (
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # Persian needs the ZWNJ
    )
    assert safe_text("name\u200c", multiline=False) == "name<U+200C>"


def test_a_marking_cannot_close_its_brackets() -> None:
    assert safe_label("UNCLASSIFIED] [NATO SECRET") == "UNCLASSIFIED\\] \\[NATO SECRET"


def test_the_issue_forgery_shows_as_one_routine_line() -> None:
    """[M-CLI-6] The reported attack: a marking with a CR and a fake FLASH header. The
    operator sees one line, from the real sender, ROUTINE, with the CR visible."""
    line = _message_line(message("report", marking=FORGED_MARKING))
    assert "\r" not in line
    assert "\n" not in line
    assert line.startswith("2026-12-01 20:25:00Z 3f2a9c1b ROUTINE   de-berlin [UNCLASSIFIED\\r")
    assert line.endswith("\\[NATO SECRET]: report")


def test_body_lines_cannot_look_like_headers() -> None:
    """[M-CLI-6] A body whose second line imitates a FLASH header from another sender is
    indented under the real header."""
    fake = "2026-12-01 20:25:01Z 99999999 FLASH     us-washington [NATO SECRET]: evacuate"
    line = _message_line(message(f"routine note\n{fake}\n\nend"))
    first, *rest = line.split("\n")
    assert first.endswith(": routine note")
    assert rest == [BODY_INDENT + fake, BODY_INDENT, BODY_INDENT + "end"]


def test_names_and_errors_are_escaped_too() -> None:
    line = _message_line(message(None, sender="de-berlin\x1b[31m", error="decrypt\rfailed"))
    assert "\x1b" not in line
    assert "\r" not in line
    assert "de-berlin\\x1b[31m" in line
    assert notice_has_no_controls(Notice("gap", "x\u202ey", first_seq=2, last_seq=4))


def test_a_message_held_by_a_key_change_says_what_to_do() -> None:
    line = _message_line(message(None, sender="de-berlin", error="key_changed"))
    assert "(held: the identity key of de-berlin changed" in line
    assert "liaison cell verify de-berlin --accept-new-key NEW-NUMBER" in line


def notice_has_no_controls(notice: Notice) -> bool:
    return not any(dangerous(ch, body=False) for ch in _notice_line(notice))


@given(
    body=st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    marking=st.text(alphabet=st.characters(codec="utf-8"), max_size=60),
    sender=st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30),
)
def test_no_input_can_break_out_of_its_message(body: str, marking: str, sender: str) -> None:
    """[M-CLI-6] Whatever a peer sends: no character a terminal obeys reaches the screen, the
    first line is the CLI's header with the real precedence, and every further line is an
    indented body line."""
    line = _message_line(message(body, marking=marking, sender=sender))
    assert not any(dangerous(ch, body=True) for ch in line)
    first, *rest = line.split("\n")
    assert first.startswith("2026-12-01 20:25:00Z 3f2a9c1b ROUTINE   ")
    assert all(part.startswith(BODY_INDENT) for part in rest)
    assert len(rest) == body.replace("\r\n", "\n").count("\n")
    assert indent_body(body).split("\n")[0] == safe_text(body, multiline=True).split("\n")[0]


# -- end to end: a hostile peer through a real relay ----------------------------------------------


def enrolled(cli: Cli, root: Path, name: str) -> Path:
    home = root / name
    cli.enroll(home, cli.add_cell(name))
    return home


def test_listen_shows_a_hostile_peer_harmlessly_and_json_stays_exact(
    cli: Cli, tmp_path: Path
) -> None:
    """[M-CLI-6] A paired cell sends the forged marking and a body full of terminal controls
    through the relay: the human ``listen`` prints no control character, one header per
    message, the body indented, the short id and a full UTC time; ``--json`` (the same
    message, read again from a second listen of the JSON form) keeps every byte."""
    sender = enrolled(cli, tmp_path, "disp-rogue")
    human = enrolled(cli, tmp_path, "disp-human")
    machine = enrolled(cli, tmp_path, "disp-machine")
    cli.pair("disp-rogue", "disp-human")
    cli.pair("disp-rogue", "disp-machine")
    body = "status normal\n" + "".join(HOSTILE).replace("\x00", "") + "\n20:25:00 FLASH fake"
    for home in (human, machine):
        answer = cli.cell_json(sender, "send", home.name, body, "--marking", FORGED_MARKING)
        assert answer["status"] == "accepted", answer

    out = cli.cell(human, "listen", "--count", "1", "--timeout", "30")
    assert not any(dangerous(ch, body=True) for ch in out), repr(out)
    lines = out.rstrip("\n").split("\n")
    assert len(lines) == 3, out
    header = lines[0]
    assert header[:20].endswith("Z")
    datetime.strptime(header[:20], "%Y-%m-%d %H:%M:%SZ")  # a full UTC timestamp
    assert header.split(" ")[3] == "ROUTINE"
    assert " disp-rogue [UNCLASSIFIED\\r20:25:00 FLASH     de-berlin \\[NATO SECRET]: " in header
    assert all(line.startswith(BODY_INDENT) for line in lines[1:])
    assert "<U+202E>" in out
    assert "\\x1b]0;owned\\x07" in out

    exact = cli.cell(machine, "--json", "listen", "--count", "1", "--timeout", "30")
    [raw] = [json.loads(line) for line in exact.splitlines()]
    assert raw["body"] == body
    assert raw["marking"] == FORGED_MARKING
    sent = cli.cell_json(sender, "outbox")
    assert header.split(" ")[2] in {e["message_id"][:8] for e in sent}  # the short id


def test_peers_shows_missing_messages(cli: Cli, tmp_path: Path) -> None:
    """``peers`` has a MISSING column (before, only ``--json`` had ``missing``): two
    numbers of a peer's channel that never came, recorded as the SDK records a relay's
    drop, show as 2 and are explained once on stderr."""
    a = enrolled(cli, tmp_path, "disp-gap-a")
    b = enrolled(cli, tmp_path, "disp-gap-b")
    cli.pair("disp-gap-a", "disp-gap-b")
    cli.cell_json(a, "send", "disp-gap-b", "one")
    cli.cell(b, "listen", "--count", "1", "--timeout", "30")
    a_id = bytes.fromhex(cli.cell_json(b, "peers")[0]["cell_id"])
    with closing(sqlite3.connect(b / STATE_FILE)) as db, db:
        db.execute("INSERT INTO gaps (peer, first_seq, last_seq, noticed_at, reported) "
                   "VALUES (?, 5, 6, ?, 1)", (a_id, time.time() - 600))  # fmt: skip
    result = cli.run("cell", "--home", str(b), "peers")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "STATUS", "VERIFIED", "MISSING", "CELL", "ID"]
    assert row.split()[:4] == ["disp-gap-a", "active", "no", "2"]
    assert "MISSING:" in result.stderr


# -- notices: a relay that really drops ------------------------------------------------------------


@pytest.fixture
async def evil(tmp_path: Path) -> AsyncIterator[tuple[MaliciousRelay, Path, Path, bytes]]:
    async with memory_relay(tmp_path) as relay:
        paris = await relay.new_cell("paris", one_time_prekeys=10)
        berlin = await relay.new_cell("berlin", pair_with=("paris",), one_time_prekeys=10)
        malicious = MaliciousRelay(relay)
        try:
            yield malicious, paris, berlin, cell_keys(berlin)[1]
        finally:
            await malicious.aclose()


async def next_notice(notices: AsyncIterator[Notice], timeout: float = 15.0) -> Notice:
    async with asyncio.timeout(timeout):
        return await anext(notices)


async def test_a_dropped_message_is_announced_as_it_becomes_missing(
    evil: tuple[MaliciousRelay, Path, Path, bytes],
) -> None:
    """The relay deletes the second of three messages: berlin's notices yield one ``gap``
    for number 2 once the grace period is over (a timer wakes the watcher: nothing else
    changes then), and paris's notices yield ``send_missing`` for that message."""
    relay, paris_home, berlin_home, berlin_id = evil
    count = 0

    async def drop_second(tap: Tap, frame: f.Frame) -> Sequence[f.Frame]:
        nonlocal count
        if isinstance(frame, f.DeliverFrame) and tap.cell_id == berlin_id:
            count += 1
            if count == 2:
                await relay.discard(berlin_id, frame.relay_seq)
                return []
        return [frame]

    relay.on_frame = drop_second
    async with (
        relay.open(paris_home, gap_grace=0.5) as paris,
        relay.open(berlin_home, gap_grace=0.5) as berlin,
    ):
        berlin_notices = berlin.notices().__aiter__()
        paris_notices = paris.notices().__aiter__()
        first = asyncio.ensure_future(next_notice(berlin_notices))
        ids = [await paris.send("berlin", f"m{i}") for i in range(3)]
        assert [m.body for m in await take(berlin, 2)] == ["m0", "m2"]
        gap = await first
        assert (gap.kind, gap.peer, gap.first_seq, gap.last_seq) == ("gap", "paris", 2, 2)
        assert [g.missing for g in berlin.gaps()] == [True]
        told = await next_notice(paris_notices)
        assert (told.kind, told.peer, told.message_id) == ("send_missing", "berlin", ids[1])
        line = _notice_line(gap)
        assert "WARNING" in line
        assert "messages 2-2 from paris never arrived" in line


async def test_a_refused_send_is_announced(
    evil: tuple[MaliciousRelay, Path, Path, bytes],
) -> None:
    """A send the relay refuses (an expiry beyond its maximum) yields a ``failed`` notice
    with the relay's reason."""
    relay, paris_home, _, _ = evil
    async with relay.open(paris_home) as paris:
        notices = paris.notices().__aiter__()
        pending = asyncio.ensure_future(next_notice(notices))
        message_id = await paris.send("berlin", "too long", ttl=10 * 365 * 24 * 3600)
        notice = await pending
        assert (notice.kind, notice.message_id) == ("failed", message_id)
        assert notice.reason
        assert "failed:" in _notice_line(notice)
