"""Issue #10, items 4, 5 and 8, end to end through a real relay process (``liaison server
run``) and the installed ``liaison`` CLI by subprocess (``clikit``), plus the SDK's side.

* Item 4: a status that was asked for and not reached is a non-zero exit (31) and
  ``StatusTimeout`` (a ``TimeoutError``) in the SDK; a refused message (``--ttl`` beyond the
  relay's maximum) exits 32 with the relay's reason, an expired one 33.
* Item 5: after a key change ``safety-number`` shows the old and the new number, labelled;
  ``verify --accept-new-key`` needs the new number (or ``--yes`` once it was shown) and
  refuses a wrong one (34); the CLI's text names its flags, the SDK's its parameters.
* Item 8: ``send --file`` carries the file's name, ``--file -`` and piped text read stdin,
  ``listen --save-dir`` saves files under a safe name, never outside the directory, never
  overwriting.
"""

from __future__ import annotations

import json
import os
import pty
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from liaison.client import (
    Cell,
    ClientError,
    KeyChanged,
    SafetyNumberMismatch,
    SendFailed,
    StatusTimeout,
)
from liaison.client import files as cell_files
from liaison.protocol.keys import (
    IdentityKeyPair,
    KemKeyPair,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
)
from tests.cells import take

from .clikit import LIAISON, Cli, RelayProcess, relay_process

MAX_TTL = 30 * 24 * 3600  # the relay's default max_ttl_seconds


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    directory = tmp_path_factory.mktemp("relay")
    with relay_process(directory, expiry_sweep_seconds="0.5") as running:
        yield running


@pytest.fixture
def cli(relay: RelayProcess) -> Cli:
    return Cli(relay)


def pair(cli: Cli, root: Path, a: str, b: str) -> tuple[Path, Path]:
    homes = []
    for name in (a, b):
        home = root / name
        assert cli.enroll(home, cli.add_cell(name))["name"] == name
        homes.append(home)
    cli.pair(a, b)
    return homes[0], homes[1]


def run(cli: Cli, home: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """``liaison cell --home HOME ARGS`` with ``stdin`` piped in (not a terminal)."""
    result = subprocess.run(
        [LIAISON, "cell", "--home", str(home), *args],
        env=cli.env, input=stdin.decode("latin-1"), capture_output=True, text=True,
        encoding="latin-1", timeout=60, check=False,
    )  # fmt: skip
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


def one_error(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- item 4: exit codes of send --wait, and the SDK's wait_status ----------------------------


def test_ttl_beyond_the_relays_maximum_exits_32_with_the_reason(cli: Cli, tmp_path: Path) -> None:
    paris, _ = pair(cli, tmp_path, "st-ttl-paris", "st-ttl-berlin")
    result = run(cli, paris, "send", "st-ttl-berlin", "too long", "--ttl", str(MAX_TTL + 3600))
    line = one_error(result, 32)
    message_id, status = result.stdout.split()
    assert status == "failed"
    assert message_id in line
    assert "bad_expiry" in line
    assert str(MAX_TTL) in line  # the relay's maximum, from its explanation
    assert "--ttl" in line
    answer = run(cli, paris, "--json", "send", "st-ttl-berlin", "again", "--ttl", "99999999")
    one_error(answer, 32)
    assert json.loads(answer.stdout)["status"] == "failed"
    # A ttl the relay accepts: exit 0, accepted (the default wait).
    assert cli.cell_json(paris, "send", "st-ttl-berlin", "fine")["status"] == "accepted"


def test_explicit_wait_not_reached_exits_31(cli: Cli, tmp_path: Path) -> None:
    """Nobody listens at berlin: ``--wait read --timeout 3`` prints the id and ``accepted``
    and exits 31 with one line; without ``--wait`` (or ``--wait queued``/``accepted``) the
    same send exits 0."""
    paris, _ = pair(cli, tmp_path, "st-wait-paris", "st-wait-berlin")
    result = run(cli, paris, "send", "st-wait-berlin", "read me", "--wait", "read",
                 "--timeout", "3")  # fmt: skip
    line = one_error(result, 31)
    message_id, status = result.stdout.split()
    assert status == "accepted"
    assert f"message {message_id} not read within 3 s (it is accepted)" in line
    delivered = run(cli, paris, "--json", "send", "st-wait-berlin", "x", "--wait", "delivered",
                    "--timeout", "1")  # fmt: skip
    one_error(delivered, 31)
    assert json.loads(delivered.stdout)["status"] == "accepted"
    for wait in ((), ("--wait", "queued"), ("--wait", "accepted")):
        answer = cli.cell_json(paris, "send", "st-wait-berlin", "fine", *wait)
        assert answer["status"] in ("queued", "accepted")


def test_expired_before_delivery_exits_33(cli: Cli, tmp_path: Path) -> None:
    paris, _ = pair(cli, tmp_path, "st-exp-paris", "st-exp-berlin")
    result = run(cli, paris, "send", "st-exp-berlin", "short-lived", "--ttl", "5",
                 "--wait", "delivered", "--timeout", "50")  # fmt: skip
    line = one_error(result, 33)
    message_id, status = result.stdout.split()
    assert status == "expired"
    assert message_id in line
    assert "expired" in line


async def test_wait_status_raises_typed_errors(cli: Cli, tmp_path: Path) -> None:
    """The SDK: ``wait_status(..., timeout=)`` raises ``StatusTimeout`` (a ``TimeoutError``
    and a ``ClientError``, with the id and the status reached); a refused message raises
    ``SendFailed`` with the relay's code and explanation."""
    paris, _ = pair(cli, tmp_path, "st-sdk-paris", "st-sdk-berlin")
    async with Cell.open(paris) as cell:
        message_id = await cell.send("st-sdk-berlin", "hello")
        assert await cell.wait_status(message_id, "accepted", timeout=20) == "accepted"
        with pytest.raises(StatusTimeout) as timed_out:
            await cell.wait_status(message_id, "read", timeout=0.5)
        error = timed_out.value
        assert isinstance(error, TimeoutError)
        assert isinstance(error, ClientError)
        assert (error.message_id, error.status, error.until) == (message_id, "accepted", "read")
        assert (error.code, error.exit_code) == ("status_timeout", 31)
        refused = await cell.send("st-sdk-berlin", "too long", ttl=MAX_TTL + 3600)
        with pytest.raises(SendFailed) as failed:
            await cell.wait_status(refused, "accepted", timeout=20)
        assert (failed.value.reason, failed.value.status, failed.value.exit_code) == (
            "bad_expiry", "failed", 32,
        )  # fmt: skip
        assert str(MAX_TTL) in failed.value.detail
        assert await cell.wait_status(refused, "failed", timeout=1) == "failed"


# -- item 5: key change from the CLI -----------------------------------------------------------


def change_identity(relay: RelayProcess, cli: Cli, name: str) -> None:
    """The relay starts serving another identity key (and prekeys) for cell ``name``."""
    cell_id = bytes.fromhex(next(c["id"] for c in cli.admin_json("cell", "list")
                                 if c["name"] == name))  # fmt: skip
    identity = IdentityKeyPair.generate()
    spk, kem = X25519KeyPair.generate(), KemKeyPair.generate()
    db = sqlite3.connect(relay.log.parent / "relay.db", timeout=30)
    try:
        with db:
            db.execute("UPDATE cells SET identity_key = ? WHERE id = ?",
                       (bytes(identity.public), cell_id))  # fmt: skip
            db.execute(
                "UPDATE signed_prekeys SET spk_public = ?, spk_signature = ?, kem_public = ?, "
                "kem_signature = ? WHERE cell_id = ?",
                (bytes(spk.public), SignedPrekey.create(identity, 1, spk).signature,
                 bytes(kem.public), SignedKemPrekey.create(identity, 1, kem).signature,
                 cell_id),
            )  # fmt: skip
    finally:
        db.close()


def test_key_change_shown_and_accepted_from_the_cli(
    relay: RelayProcess, cli: Cli, tmp_path: Path
) -> None:
    paris, _ = pair(cli, tmp_path, "st-key-paris", "st-key-berlin")
    peer = "st-key-berlin"
    cli.cell(paris, "send", peer, "pin the key")
    old = cli.cell(paris, "safety-number", peer).strip()
    assert cli.cell_json(paris, "safety-number", peer) == {
        "peer": peer, "safety_number": old.replace(" ", ""), "key_changed": False,
        "new_safety_number": None,
    }  # fmt: skip
    change_identity(relay, cli, peer)

    shown = cli.cell_json(paris, "safety-number", peer)
    assert shown["key_changed"] is True
    assert shown["safety_number"] == old.replace(" ", "")
    new = shown["new_safety_number"]
    assert len(new) == 60
    assert new.isdigit()
    assert new != shown["safety_number"]
    grouped = " ".join(new[i : i + 5] for i in range(0, 60, 5))
    human = cli.cell(paris, "safety-number", peer)
    assert f"old key (pinned):      {old}" in human
    assert f"new key (not trusted): {grouped}" in human
    assert "--accept-new-key" in human

    # The CLI's error names its flag, not the SDK's parameter.
    for args in (("verify", peer), ("send", peer, "blocked")):
        line = cli.fails(12, "cell", "--home", str(paris), *args)
        assert "--accept-new-key" in line
        assert "accept_new_key" not in line
    # --accept-new-key needs the number: without it (no terminal, no --yes) nothing changes.
    result = run(cli, paris, "verify", peer, "--accept-new-key")
    assert "not accepted" in one_error(result, 34)
    assert grouped in result.stdout
    assert old in result.stdout
    wrong = "1" * 60
    assert "not the safety number" in one_error(
        run(cli, paris, "verify", peer, "--accept-new-key", wrong), 34
    )
    assert run(cli, paris, "verify", peer, "--accept-new-key", "123").returncode == 2  # usage
    assert cli.cell_json(paris, "peers")[0]["key_changed"] is True

    # The right number, as 12 groups (as read out) or in one piece: accepted.
    accepted = cli.cell_json(paris, "verify", peer, "--accept-new-key", *grouped.split())
    assert (accepted["key_changed"], accepted["verified"]) == (False, True)
    assert cli.cell(paris, "safety-number", peer).strip() == grouped
    assert cli.cell_json(paris, "send", peer, "to the new key")["status"] == "accepted"

    # Another change: --yes accepts the number it shows in the same invocation.
    change_identity(relay, cli, peer)
    newer = cli.cell_json(paris, "safety-number", peer)["new_safety_number"]
    out = cli.cell(paris, "verify", peer, "--accept-new-key", "--yes")
    assert " ".join(newer[i : i + 5] for i in range(0, 60, 5)) in out
    assert out.rstrip().endswith(f"{peer} verified")
    assert cli.cell_json(paris, "peers")[0]["key_changed"] is False
    # A plain verify with a number checks it.
    one_error(run(cli, paris, "verify", peer, wrong), 34)
    assert cli.cell_json(paris, "verify", peer, newer)["verified"] is True

    # On a terminal, --accept-new-key alone shows the numbers and asks.
    change_identity(relay, cli, peer)
    code, out = on_a_terminal(cli, paris, b"n\n", "verify", peer, "--accept-new-key")
    assert code == 34, out
    assert "new key (not trusted)" in out
    assert cli.cell_json(paris, "peers")[0]["key_changed"] is True
    code, out = on_a_terminal(cli, paris, b"y\n", "verify", peer, "--accept-new-key")
    assert code == 0, out
    assert f"{peer} verified" in out
    assert cli.cell_json(paris, "peers")[0]["key_changed"] is False


def on_a_terminal(cli: Cli, home: Path, answer: bytes, *args: str) -> tuple[int, str]:
    """``liaison cell --home HOME ARGS`` with a pseudo-terminal as stdin, stdout and stderr,
    ``answer`` typed ahead; its exit status and everything it wrote."""
    main, child = pty.openpty()
    try:
        proc = subprocess.Popen(
            [LIAISON, "cell", "--home", str(home), *args],
            env=cli.env, stdin=child, stdout=child, stderr=child,
        )  # fmt: skip
        os.close(child)
        os.write(main, answer)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the child side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(60)
    finally:
        os.close(main)
    out = b"".join(chunks).decode(errors="replace")
    assert "Traceback" not in out, out
    return code, out


async def test_sdk_key_change_texts_and_number_check(
    relay: RelayProcess, cli: Cli, tmp_path: Path
) -> None:
    paris, _ = pair(cli, tmp_path, "st-sdkkey-paris", "st-sdkkey-berlin")
    peer = "st-sdkkey-berlin"
    async with Cell.open(paris) as cell:
        await cell.send(peer, "pin")
    change_identity(relay, cli, peer)
    async with Cell.open(paris) as cell:
        await cell.refresh_peers()
        with pytest.raises(KeyChanged) as changed:
            await cell.verify(peer)
        assert "accept_new_key=True" in str(changed.value)
        assert "--accept-new-key" not in str(changed.value)
        with pytest.raises(SafetyNumberMismatch):
            await cell.verify(peer, accept_new_key=True, safety_number="0" * 60)
        assert cell.peer(peer).key_changed
        new = cell.safety_number(peer, new_key=True)
        assert (await cell.verify(peer, accept_new_key=True, safety_number=new)).verified
        await cell.verify(peer, accept_new_key=True)  # the SDK's way still works


# -- item 8: files and piped text --------------------------------------------------------------


def listen_json(cli: Cli, home: Path, count: int, *args: str) -> list[dict[str, object]]:
    out = cli.cell(home, "--json", "listen", "--count", str(count), "--timeout", "30", *args)
    return [json.loads(line) for line in out.splitlines()]


def test_file_arrives_with_its_name_and_is_saved(cli: Cli, tmp_path: Path) -> None:
    paris, berlin = pair(cli, tmp_path, "st-file-paris", "st-file-berlin")
    data = bytes(range(256)) * 40
    report = tmp_path / "report.pdf"
    report.write_bytes(data)
    cli.cell(paris, "send", "st-file-berlin", "--file", str(report))
    inbox = tmp_path / "inbox"
    line = cli.cell(berlin, "listen", "--count", "1", "--timeout", "30", "--save-dir", str(inbox))
    saved = inbox / "report.pdf"
    assert f'(file "report.pdf", {len(data)} bytes, saved to {saved})' in line
    assert saved.read_bytes() == data
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    # The same name again, and a symlink planted under the next free name: neither the
    # existing file nor the symlink's target is touched; a new file is made.
    outside = tmp_path / "outside.txt"
    (inbox / "report-1.pdf").symlink_to(outside)
    cli.cell(paris, "send", "st-file-berlin", "--file", str(report), "--file-name", "report.pdf")
    [message] = listen_json(cli, berlin, 1, "--save-dir", str(inbox))
    assert message["file_name"] == "report.pdf"
    assert message["saved_to"] == str(inbox / "report-2.pdf")
    assert (inbox / "report-2.pdf").read_bytes() == data
    assert saved.read_bytes() == data
    assert not outside.exists()

    # Without --save-dir: the name (escaped) and the size.
    cli.cell(paris, "send", "st-file-berlin", "--file", str(report), "--file-name", "n\x1b[2Jb")
    line = cli.cell(berlin, "listen", "--count", "1", "--timeout", "30")
    assert "\x1b" not in line
    assert f'(file "n\\x1b[2Jb", {len(data)} bytes)' in line


def test_hostile_file_names_stay_inside_the_directory(cli: Cli, tmp_path: Path) -> None:
    paris, berlin = pair(cli, tmp_path, "st-evil-paris", "st-evil-berlin")
    inbox = tmp_path / "inbox"
    names = ["..", "..\u202etxt.exe\r\x1b[31m", ".bashrc", "a" * 250 + ".txt", " \u200b"]
    sample = tmp_path / "sample"
    sample.write_bytes(b"payload")
    for name in names:
        cli.cell(paris, "send", "st-evil-berlin", "--file", str(sample), "--file-name", name)
    received = listen_json(cli, berlin, len(names), "--save-dir", str(inbox))
    assert sorted(str(m["file_name"]) for m in received) == sorted(names)  # --json: exact
    saved = sorted(Path(str(m["saved_to"])) for m in received)
    for path in saved:
        assert path.parent == inbox
        assert not path.name.startswith((".", " "))
        assert len(path.name.encode()) <= cell_files.MAX_SAVED_NAME
        assert all(c.isprintable() for c in path.name), path.name
        assert path.read_bytes() == b"payload"
    assert sorted(p.name for p in inbox.iterdir()) == sorted(p.name for p in saved)
    assert "_txt.exe__[31m" in {p.name for p in saved}
    assert "bashrc" in {p.name for p in saved}


def test_bytes_and_text_from_stdin(cli: Cli, tmp_path: Path) -> None:
    paris, berlin = pair(cli, tmp_path, "st-pipe-paris", "st-pipe-berlin")
    peer = "st-pipe-berlin"
    blob = bytes([0xFF, 0x00, 0x80]) * 1000
    assert run(cli, paris, "send", peer, "--file", "-", stdin=blob).returncode == 0
    assert run(cli, paris, "send", peer, "--file", "-", "--file-name", "blob.bin",
               stdin=blob).returncode == 0  # fmt: skip
    secret = "the text is not on the command line\nsecond line\n"
    assert run(cli, paris, "send", peer, stdin=secret.encode()).returncode == 0
    inbox = tmp_path / "inbox"
    first, named, text = listen_json(cli, berlin, 3, "--save-dir", str(inbox))
    assert (first["content_type"], first["file_name"], first["body"]) == ("file", None, blob.hex())
    assert first["saved_to"] == str(inbox / f"file-{str(first['id'])[:12]}")  # no name: the id
    assert (named["file_name"], named["body"]) == ("blob.bin", blob.hex())
    assert named["saved_to"] == str(inbox / "blob.bin")
    assert (text["content_type"], text["body"]) == ("text", secret.removesuffix("\n"))
    assert "saved_to" not in text
    assert sorted(p.name for p in inbox.iterdir()) == sorted(
        ["blob.bin", f"file-{str(first['id'])[:12]}"]
    )
    assert (inbox / "blob.bin").read_bytes() == blob

    # Text on stdin must be UTF-8 and not empty; these are usage errors (2).
    assert run(cli, paris, "send", peer, stdin=b"\xff\xfe").returncode == 2
    assert run(cli, paris, "send", peer, stdin=b"").returncode == 2
    assert run(cli, paris, "send", peer, "x", "--file-name", "a").returncode == 2


def test_too_large_a_file_says_the_limit(cli: Cli, tmp_path: Path) -> None:
    paris, berlin = pair(cli, tmp_path, "st-big-paris", "st-big-berlin")
    peer = "st-big-berlin"
    big = tmp_path / "big.bin"
    limit = cell_files.max_file_bytes("big.bin")
    big.write_bytes(b"x" * (limit + 1))
    line = cli.fails(24, "cell", "--home", str(paris), "send", peer, "--file", str(big))
    assert f"at most {limit} bytes" in line
    piped = run(cli, paris, "send", peer, "--file", "-", stdin=b"x" * 70_000)
    assert f"at most {cell_files.max_payload()} bytes" in one_error(piped, 24)
    # The first message of a session carries the setup block: its limit is lower, and the
    # SDK says so in the file's terms.
    big.write_bytes(b"x" * limit)
    line = cli.fails(24, "cell", "--home", str(paris), "send", peer, "--file", str(big))
    assert f"at most {cell_files.max_file_bytes('big.bin', first=True)} bytes" in line
    cli.cell(paris, "send", peer, "now the session exists")
    cli.cell(berlin, "listen", "--count", "1", "--timeout", "30")  # its receipt answers it
    cli.cell(paris, "peers")  # which ends the setup phase of paris's session
    assert cli.cell_json(paris, "send", peer, "--file", str(big))["status"] == "accepted"


async def test_sdk_file_name_round_trip_and_malformed_file_payload(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``send(bytes, file_name=)`` arrives with ``Message.file_name``; a FILE payload that
    breaks SPEC.md §9.4 (from a faulty or hostile peer) is shown only as ``malformed_body``
    (M-FILE-1)."""
    paris, berlin = pair(cli, tmp_path, "st-sdkfile-paris", "st-sdkfile-berlin")
    async with Cell.open(paris) as sender:
        await sender.send("st-sdkfile-berlin", b"data", file_name="notes.txt")
        with monkeypatch.context() as patch:  # a peer whose SDK writes a broken FILE payload
            patch.setattr(cell_files, "encode_file", lambda name, data: b"\x00\x09ab")
            await sender.send("st-sdkfile-berlin", b"data", file_name="x")
        await sender.send("st-sdkfile-berlin", "after it")
    async with Cell.open(berlin) as receiver:
        good, bad, after = await take(receiver, 3)
    assert (good.body, good.file_name, good.content_type) == (b"data", "notes.txt", "file")
    assert (bad.error, bad.body, bad.file_name) == ("malformed_body", None, None)
    assert after.body == "after it"


def test_safe_file_name_rules() -> None:
    safe = cell_files.safe_file_name
    assert safe("report.pdf", "f") == "report.pdf"
    assert safe("../../etc/passwd", "f") == "_.._etc_passwd"
    assert safe("a\\b", "f") == "a_b"
    assert safe("..", "f") == "f"
    assert safe(None, "f") == "f"
    assert safe("x\u202egnp.exe", "f") == "x_gnp.exe"
    assert safe("name. ", "f") == "name"
    long = safe("é" * 300 + ".tar.gz", "f")
    assert long.endswith(".gz")
    assert len(long.encode()) <= cell_files.MAX_SAVED_NAME
    with pytest.raises(ValueError, match="one path component"):
        cell_files.encode_file("a/b", b"")
    with pytest.raises(ValueError, match="one safe path component"):
        cell_files.save_file(Path(os.devnull).parent, "../x", b"")
    assert cell_files.decode_file(cell_files.encode_file("ü.txt", b"\x00")) == ("ü.txt", b"\x00")
