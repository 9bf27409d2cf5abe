"""The home's locks and hand-off socket (``liaison.client.local_ipc``), with real sockets and
real ``flock``: one link holder, one receiver, errors carried across, stale sockets replaced,
homes whose path is too long for a Unix socket address."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from liaison.client import local_ipc
from liaison.client.errors import AlreadyListening, HandoffFailed, LinkHeld, UnknownPeer


async def _echo(op: str, params: dict[str, Any]) -> Any:
    if op == "fail":
        raise UnknownPeer(str(params["peer"]))
    if op == "bad":
        raise ValueError("bad value")
    return {"op": op, "params": params}


def _home(root: Path, long: bool = False) -> Path:
    home = root / ("h" * 120 if long else "h") / "home"
    home.mkdir(parents=True, mode=0o700)
    return home


@pytest.mark.parametrize("long", [False, True])
async def test_requests_and_errors_cross_the_socket(tmp_path: Path, long: bool) -> None:
    home = _home(tmp_path, long)
    assert len(os.fsencode(str(home / local_ipc.SOCKET))) > 108 or not long
    assert await local_ipc.connect(home) is None
    assert not local_ipc.holder_running(home)
    holder = local_ipc.Holder.acquire(home)
    try:
        await holder.serve(_echo)
        assert stat.S_IMODE((home / local_ipc.SOCKET).stat().st_mode) == 0o600
        assert local_ipc.holder_running(home)
        connection = await local_ipc.connect(home)
        assert connection is not None
        body = "ünïcode\r\n\x1b[31m" * 1000
        assert await local_ipc.exchange(connection, "send", {"text": body}) == {
            "op": "send", "params": {"text": body},
        }  # fmt: skip
        connection = await local_ipc.connect(home)
        assert connection is not None
        with pytest.raises(UnknownPeer) as caught:
            await local_ipc.exchange(connection, "fail", {"peer": "nobody"})
        assert caught.value.exit_code == 10
        assert "nobody" in str(caught.value)
        connection = await local_ipc.connect(home)
        assert connection is not None
        with pytest.raises(ValueError, match="bad value"):  # a bad argument: exit 2 in the CLI
            await local_ipc.exchange(connection, "bad", {})
    finally:
        await holder.aclose()
    assert not (home / local_ipc.SOCKET).exists()
    assert await local_ipc.connect(home) is None


async def test_one_link_holder_and_one_receiver_per_home(tmp_path: Path) -> None:
    home = _home(tmp_path)
    holder = local_ipc.Holder.acquire(home)
    with pytest.raises(LinkHeld):
        local_ipc.Holder.acquire(home)
    await holder.aclose()
    await local_ipc.Holder.acquire(home).aclose()  # free again
    with local_ipc.receive_lock(home):
        with pytest.raises(AlreadyListening) as caught, local_ipc.receive_lock(home):
            pass
        assert caught.value.exit_code == 28
    with local_ipc.receive_lock(home):  # released
        pass


async def test_a_stale_socket_is_replaced_and_a_silent_holder_fails_the_handoff(
    tmp_path: Path,
) -> None:
    home = _home(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(home / local_ipc.SOCKET))
    stale.close()  # a socket file nobody answers on (a crashed holder)
    assert await local_ipc.connect(home) is None
    holder = local_ipc.Holder.acquire(home)
    try:
        await holder.serve(_echo)
        connection = await local_ipc.connect(home)
        assert connection is not None
        assert await local_ipc.exchange(connection, "peers", {}) == {"op": "peers", "params": {}}
    finally:
        await holder.aclose()

    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # accepts, never answers
    silent.bind(str(home / local_ipc.SOCKET))
    silent.listen()
    try:
        connection = await local_ipc.connect(home)
        assert connection is not None
        peer, _ = silent.accept()
        peer.close()  # the holder ends before it answers
        with pytest.raises(HandoffFailed) as caught:
            await local_ipc.exchange(connection, "send", {})
        assert caught.value.exit_code == 30
    finally:
        silent.close()
