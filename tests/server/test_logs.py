"""Relay log lines (``server/logs.py``): a UTC timestamp first, one line per record, and no
logged value can forge a line or drive a terminal (issue #11 item 5)."""

from __future__ import annotations

import logging
import re

from liaison.server.logs import LINE_FORMAT, UtcFormatter, clean

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO liaison\.test: ")


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("liaison.test", logging.INFO, __file__, 1, message, args, None)


def test_a_line_starts_with_its_utc_time() -> None:
    line = UtcFormatter(LINE_FORMAT).format(record("relay started on %s", "127.0.0.1:8000"))
    assert STAMP.match(line), line
    assert line.endswith("relay started on 127.0.0.1:8000")


def test_logged_values_cannot_forge_lines_or_drive_the_terminal() -> None:
    """A path or a forwarded address with a newline, a CR, an escape sequence or a bidi
    override stays on its own line, visibly escaped."""
    forged = "/x\n2026-12-01T00:00:00.000Z INFO liaison.admin: token created\r\x1b]0;t\x07\u202e"
    line = UtcFormatter(LINE_FORMAT).format(record("unhandled error on GET %s", forged))
    assert "\n" not in line
    assert "\r" not in line
    assert "\x1b" not in line
    assert "\u202e" not in line
    assert line.endswith("/x\\n2026-12-01T00:00:00.000Z INFO liaison.admin: token created"
                         "\\r\\x1b]0;t\\x07<U+202E>")  # fmt: skip


def test_clean_keeps_ordinary_text() -> None:
    assert clean("cell de-berlin linked (München, 北京)") == "cell de-berlin linked (München, 北京)"
    assert clean("tab\there") == "tab\\there"
