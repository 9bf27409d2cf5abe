"""Rendering untrusted text for the terminal (a minimal stand-in; the lead keeps one at merge).

:func:`safe_text` makes every C0/C1 control character, DEL and Unicode bidi/format control
visible (``\\r``, ``\\x1b``, ``<U+202E>``), so text a peer controls can never move the cursor,
rewrite a line or reorder what is shown.
"""

from __future__ import annotations

import unicodedata

__all__ = ["safe_text"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x20 or 0x7F <= code < 0xA0:
        return f"\\x{code:02x}"
    if unicodedata.category(ch) in ("Cf", "Zl", "Zp"):
        return f"<U+{code:04X}>"
    return ch


def safe_text(text: str) -> str:
    """``text`` with every control, DEL and bidi/format character made visible."""
    return "".join(_escape(ch) for ch in text)
