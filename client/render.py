"""Untrusted text made safe for a terminal (stand-in; the lead's ``client/render.py`` wins).

:func:`safe_text` makes every C0/C1 control character, DEL and Unicode bidi/format control
visible (``\\r``, ``\\x1b``, ``<U+202E>``), so displayed text can never move the cursor,
rewrite a line, set a terminal title or reorder what follows.
"""

from __future__ import annotations

import unicodedata

__all__ = ["safe_text"]

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def safe_text(s: str) -> str:
    """``s`` with every control or format character replaced by a visible escape."""
    out = []
    for ch in s:
        code = ord(ch)
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\x{code:02x}")
        elif unicodedata.category(ch) in ("Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            out.append(f"<U+{code:04X}>")
        else:
            out.append(ch)
    return "".join(out)
