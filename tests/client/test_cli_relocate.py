"""``liaison cell relocate --server URL`` end to end with real relay processes (issue #10
item 9): the same relay moved to another port is re-pinned by its key; another relay only
with an enrollment code of its own; anything else is refused and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from liaison.client.state import Store

from .clikit import Cli, relay_process


def _pinned(home: Path) -> tuple[str, bytes, bytes]:
    store = Store.open(home, None)
    try:
        assert store.cell_id is not None
        return store.server_url, store.relay_key, store.cell_id
    finally:
        store.close()


def _sent(cli: Cli, home: Path, peer: str) -> None:
    answer = cli.cell_json(home, "send", peer, "after the move", "--wait", "accepted")
    assert answer["status"] == "accepted", answer


def test_relocate_same_relay_new_code_and_refusals(tmp_path: Path) -> None:
    paris, berlin = tmp_path / "paris", tmp_path / "berlin"
    with relay_process(tmp_path / "relay-a") as first:
        cli = Cli(first)
        cli.enroll(paris, cli.add_cell("rl-paris"))
        cli.enroll(berlin, cli.add_cell("rl-berlin"))
        cli.pair("rl-paris", "rl-berlin")
        _sent(cli, paris, "rl-berlin")
        token = first.admin_token
    url_a, key_a, id_a = _pinned(paris)

    # The same relay (key and database) moved to another port.
    with (
        relay_process(tmp_path / "relay-a", admin_token=token) as moved,
        relay_process(tmp_path / "relay-b") as b,
    ):
        assert moved.url != url_a
        cli = Cli(moved)
        out = json.loads(cli.ok("cell", "--home", str(paris), "--json", "relocate",
                                "--server", moved.url))  # fmt: skip
        assert out["same_relay"] is True
        assert out["cell_id"] == id_a.hex()
        assert _pinned(paris) == (moved.url, key_a, id_a)
        cli.ok("cell", "--home", str(berlin), "relocate", "--server", moved.url + "/")
        _sent(cli, paris, "rl-berlin")

        # Another relay, no code: refused, nothing changes.
        line = cli.fails(38, "cell", "--home", str(paris), "relocate", "--server", b.url)
        assert "--code" in line
        assert "nothing changed" in line
        assert _pinned(paris) == (moved.url, key_a, id_a)

        # A code of the first relay does not vouch for the second one's key.
        stale = cli.admin_json("cell", "add", "rl-spare")["enrollment_code"]
        line = cli.fails(14, "cell", "--home", str(paris), "relocate", "--server", b.url,
                         "--code", stale)  # fmt: skip
        assert "not for the relay" in line
        assert _pinned(paris) == (moved.url, key_a, id_a)

        # A code from the new relay's admin: enrolled there with the same identity.
        cli_b = Cli(b)
        code = cli_b.add_cell("rl-paris")
        out = json.loads(cli.ok("cell", "--home", str(paris), "--json", "relocate",
                                "--server", b.url, "--code", code))  # fmt: skip
        assert out["same_relay"] is False
        assert out["name"] == "rl-paris"
        url, key, cell_id = _pinned(paris)
        assert url == b.url
        assert key != key_a
        assert cell_id.hex() == out["cell_id"]
        rome = tmp_path / "rome"
        cli_b.enroll(rome, cli_b.add_cell("rl-rome"))
        cli_b.pair("rl-paris", "rl-rome")
        _sent(cli_b, paris, "rl-rome")
        # The code is used up now, like any enrollment code.
        line = cli_b.fails(14, "cell", "--home", str(berlin), "relocate", "--server", b.url,
                           "--code", code)  # fmt: skip
        assert "already used" in line
