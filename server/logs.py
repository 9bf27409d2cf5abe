"""Log lines of ``liaison server run``: every line starts with its UTC time (ISO 8601).

``log_config()`` is the :func:`logging.config.dictConfig` document handed to uvicorn: one
handler on stderr for uvicorn's own loggers and for every ``liaison`` logger (the relay, the
link layer, the admin API), each line ``2026-12-01T21:50:03.123Z INFO liaison.relay: ...``.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from typing import Any

__all__ = ["LINE_FORMAT", "UtcFormatter", "clean", "log_config"]

LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def clean(text: str) -> str:
    """``text`` with every control and format character escaped (``\\n``, ``\\x1b``,
    ``<U+202E>``): a logged value (a path, an address from a trusted proxy's header) can
    neither start a forged log line nor drive the terminal that shows the log."""
    out = []
    for ch in text:
        if " " <= ch <= "~":
            out.append(ch)
        elif ch in "\t\n\r":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r"}[ch])
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F:
            out.append(f"\\x{ord(ch):02x}")
        elif unicodedata.category(ch) in _HIDDEN:
            out.append(f"<U+{ord(ch):04X}>")
        else:
            out.append(ch)
    return "".join(out)


_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class UtcFormatter(logging.Formatter):
    """``asctime`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC, whatever the host's time zone; the
    message of every record on one line, its values :func:`clean` (a traceback, when one is
    logged, follows on lines of its own)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = clean(record.message)
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def log_config(level: str = "INFO") -> dict[str, Any]:
    """The logging configuration of a relay process (uvicorn's ``log_config``)."""
    handler = {"formatter": "utc", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"utc": {"()": f"{__name__}.UtcFormatter", "fmt": LINE_FORMAT}},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
            "liaison": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }
