"""Fixtures the CLI end-to-end modules share: one real relay process per module (``relay``)
and the ``liaison`` CLI against it (``cli``). A module that needs other settings defines its
own ``relay``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .clikit import Cli, RelayProcess, relay_process


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with relay_process(tmp_path_factory.mktemp("relay")) as running:
        yield running


@pytest.fixture
def cli(relay: RelayProcess) -> Cli:
    return Cli(relay)
