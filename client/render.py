"""Stand-in for the lead's ``render.safe_text`` (issue #10 item 1): peer- and relay-controlled
text made safe to print. The lead's module replaces this one at merge."""

from __future__ import annotations

import unicodedata

__all__ = ["safe_text"]


def safe_text(s: str) -> str:
    """``s`` with every C0/C1 control, DEL and Unicode format (bidi) character made visible
    (``\\xNN`` or ``<U+XXXX>``), so it cannot move the cursor or reorder text."""
    out = []
    for ch in s:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\x{code:02x}")
        elif unicodedata.category(ch) in ("Cf", "Zl", "Zp"):
            out.append(f"<U+{code:04X}>")
        else:
            out.append(ch)
    return "".join(out)
