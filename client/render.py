"""Terminal-safe rendering of untrusted text for the human CLI (SPEC.md §12.10).

Everything a peer or the relay controls — bodies, markings, cell names, file names, error
reasons — is untrusted *display* input. A terminal obeys control characters: a carriage return
rewrites the line, ESC starts sequences that move the cursor, clear the screen or set the
window title, Unicode bidi controls reorder what follows, and zero-width characters make two
different names look the same. Printed as they are, they let a peer forge what the operator
sees (another sender, another precedence, another marking).

:func:`safe_text` makes every such character visible instead of obeying it:

* C0 controls, DEL and C1 controls as Python-style escapes: ``\\r``, ``\\n``, ``\\t``,
  ``\\x1b``, ``\\x7f``, ``\\x9b``;
* Unicode format (bidi, zero-width, BOM, ...), line/paragraph separators, private-use,
  unassigned and surrogate code points as ``<U+202E>``.

In message bodies (``multiline=True``) a newline stays a line break and tabs become spaces;
:func:`indent_body` then indents every continuation line under its header, so no body line can
begin where the CLI's own lines begin (they never start with a space). Zero-width joiners
(U+200C, U+200D), which some scripts and emoji need, are kept in bodies only; in names and
markings they are shown too. The JSON output (``--json``) is never passed through here: it stays
exact (JSON escapes control characters itself).
"""

from __future__ import annotations

import unicodedata

__all__ = ["BODY_INDENT", "indent_body", "safe_label", "safe_text"]

BODY_INDENT = "    "
"""Prefix of every continuation line of a body; the CLI's own lines never start with a space."""

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_JOINERS = frozenset("\u200c\u200d")
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_TAB = 8


def _escape(ch: str) -> str:
    code = ord(ch)
    named = _NAMED.get(ch)
    if named is not None:
        return named
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"\\x{code:02x}"
    return f"<U+{code:04X}>"


def _visible(ch: str, *, body: bool) -> str:
    if " " <= ch <= "~":  # printable ASCII: the common case, no table look-up
        return ch
    if body and ch in _JOINERS:
        return ch
    if unicodedata.category(ch) in _BAD_CATEGORIES:
        return _escape(ch)
    return ch


def safe_text(text: str, *, multiline: bool = False) -> str:
    """``text`` with every control, format and separator character made visible.

    ``multiline=False`` (names, markings, file names, reasons): the result is one line.
    ``multiline=True`` (bodies): ``\\n`` stays (``\\r\\n`` counts as one line break), tabs are
    expanded to spaces; everything else is escaped as for one line.
    """
    if not multiline:
        return "".join(_visible(ch, body=False) for ch in text)
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(
        "".join(_visible(ch, body=True) for ch in line.expandtabs(_TAB)) for line in lines
    )


def safe_label(text: str) -> str:
    """A name or marking shown between the CLI's own brackets: :func:`safe_text`, with the
    brackets themselves escaped so a marking cannot close its ``[...]`` and open another."""
    return safe_text(text).replace("[", "\\[").replace("]", "\\]")


def indent_body(text: str) -> str:
    """A safe multi-line body: the first line as it is (it follows the header on the same
    line), every further line indented by :data:`BODY_INDENT`."""
    first, *rest = safe_text(text, multiline=True).split("\n")
    return "\n".join([first, *(BODY_INDENT + line for line in rest)])
