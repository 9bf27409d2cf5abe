"""Showing untrusted text (bodies, markings, names a peer or the relay controls) in the human CLI.

Minimal stand-in (the lead's ``render.py`` replaces it at merge, same name and signature):
:func:`safe_text` makes every C0/C1 control, DEL and Unicode bidi/format character visible,
so such text can never move the cursor, rewrite a line, set a terminal title or reorder text.
"""

from __future__ import annotations

import unicodedata

__all__ = ["safe_text"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}


def _visible(char: str) -> str:
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"\\x{code:02x}"
    if unicodedata.category(char) in ("Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
        return f"<U+{code:04X}>"
    return char


def safe_text(s: str) -> str:
    """``s`` with every control, DEL, bidi and format character written out visibly."""
    return "".join(_visible(c) for c in s)
