"""The relay key file: created once with mode 0600, refused when unsafe, and the same key for
every node that starts at once on one file (a cluster shares its key)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from liaison.protocol.keys import X25519KeyPair
from liaison.server.relay_key import load_or_create


def test_created_once_then_loaded(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "relay.key"
    key, created = load_or_create(path)
    assert created
    assert path.stat().st_mode & 0o777 == 0o600
    again, created_again = load_or_create(path)
    assert not created_again
    assert again.private_bytes() == key.private_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["relay.key"]


def test_nodes_starting_together_share_one_key(tmp_path: Path) -> None:
    path = tmp_path / "relay.key"
    barrier = threading.Barrier(8)
    results: list[tuple[X25519KeyPair, bool]] = []
    lock = threading.Lock()

    def start() -> None:
        barrier.wait()
        result = load_or_create(path)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({key.private_bytes() for key, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["relay.key"]  # no temporary file left


def test_unsafe_or_wrong_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "relay.key"
    load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create(path)
    os.chmod(path, 0o600)
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="not a relay key file"):
        load_or_create(path)
