"""A cell may send ERROR frames (SPEC.md §10: ERROR travels both ways): the relay takes them
without answering and keeps the link."""

from __future__ import annotations

from pathlib import Path

from liaison.protocol import frames as f
from tests.server.harness import Admin, RawCell, running_relay


async def test_an_error_frame_from_a_cell_is_taken_silently(tmp_path: Path) -> None:
    with running_relay(tmp_path) as relay:
        admin = Admin(relay.url, relay.admin_token)
        try:
            _id, code = await admin.add_cell("reporter")
        finally:
            await admin.aclose()
        cell = RawCell("reporter")
        await cell.enroll(relay, code)
        link = await cell.connect(relay)
        await link.send(f.ErrorFrame(f.ErrorCode.MALFORMED_FRAME, reason="could not use that"))
        await link.send(f.PingFrame(b"next one"))
        # The very next frame is the PONG: no ERROR came back for the cell's ERROR.
        frame = await link.recv()
        while isinstance(frame, f.PingFrame | f.PrekeysLowFrame) or frame == f.PongFrame(
            b"liveness"  # the answer to the harness's own first frame
        ):
            frame = await link.recv()
        assert frame == f.PongFrame(b"next one")
        await link.close()
