"""The relay's directory cache under change: sends between paired cells are never refused
while the admin changes other channels (the cache is rebuilt, then swapped in)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from liaison.protocol import frames as f
from tests.server.harness import Admin, RawCell, running_relay


async def test_sends_are_not_refused_while_channels_change(tmp_path: Path) -> None:
    with running_relay(tmp_path) as relay:
        admin = Admin(relay.url, relay.admin_token)
        try:
            sender, recipient = RawCell("sender"), RawCell("recipient")
            for cell in (sender, recipient):
                _id, code = await admin.add_cell(cell.name)
                await cell.enroll(relay, code)
            await admin.pair("sender", "recipient")
            # More linked cells make each cache rebuild take longer (more to re-read).
            bystanders = [RawCell(f"bystander{i}") for i in range(6)]
            for cell in bystanders:
                _id, code = await admin.add_cell(cell.name)
                await cell.enroll(relay, code)
                await admin.pair(cell.name, "recipient")
            links = [await cell.connect(relay) for cell in bystanders]
            link = await sender.connect(relay)
            bundle = await link.fetch_bundle(recipient)
            stop = asyncio.Event()
            changes = 0

            async def churn() -> None:
                nonlocal changes
                while not stop.is_set():
                    name = f"extra{changes}"
                    await admin.add_cell(name)
                    await admin.pair(name, "sender")  # every pairing rebuilds the cache
                    changes += 1

            churner = asyncio.create_task(churn())
            refused = []
            try:
                for i in range(150):
                    _mid, envelope = sender.seal(recipient, f"m{i}", bundle=bundle)
                    await link.send(f.SendFrame(envelope))
                    frame = await link.recv(10)
                    while isinstance(frame, f.PingFrame | f.PongFrame | f.PrekeysLowFrame):
                        frame = await link.recv(10)
                    if isinstance(frame, f.ErrorFrame):
                        refused.append(frame.code)
                    if changes >= 12 and i >= 60:
                        break
            finally:
                stop.set()
                await churner
            assert changes >= 3, "the channels did not change during the sends"
            assert refused == []
            for other in [*links, link]:
                await other.close()
        finally:
            await admin.aclose()
