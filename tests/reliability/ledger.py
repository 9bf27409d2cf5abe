"""The exactly-once bookkeeping of the reliability suites: what was sent, what the application
was handed, and the counts of what went wrong.

Every test message's body names its sender, its number in that sender's stream to one peer,
and its precedence: ``"<sender> <index> <precedence>"``. A :class:`Ledger` records each send
(``attempt`` before ``Cell.send``, ``sent`` once it returned: an attempt cut short by a SIGKILL
may or may not have gone out) and each message the application handled (``handled``, the
first time it sees an id; the application is idempotent, so a re-yield of an id it already
handled is only counted, in ``again``). :meth:`Ledger.results` then counts:

* ``lost``: sent, never handled by the recipient's application;
* ``duplicated``: handled twice (two ids with the same body, or one id handled twice);
* ``out_of_order``: handled after a higher-numbered message of the same sender, precedence and
  recipient (order is promised per channel within one precedence: FLASH overtakes ROUTINE);
* ``unexpected``: handled but never attempted, at the wrong recipient, with a precedence other
  than the one sent, or not opened (``error`` set).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

__all__ = ["PRECEDENCES", "Ledger", "body", "parse", "precedence_of"]

PRECEDENCES = ("flash", "immediate", "priority", "routine")


def body(sender: str, index: int, precedence: str) -> str:
    return f"{sender} {index} {precedence}"


def parse(text: str) -> tuple[str, int, str]:
    sender, index, precedence = text.split(" ")
    return sender, int(index), precedence


def precedence_of(index: int, salt: int = 0) -> str:
    """A fixed, well-mixed precedence for message ``index`` (the same in every process)."""
    return PRECEDENCES[((index + 1) * 2654435761 + salt * 40503) % 2**32 * 4 // 2**32]


@dataclass
class Ledger:
    attempted: dict[str, str] = field(default_factory=dict)
    """body -> recipient, for every send that was started."""
    sent: set[str] = field(default_factory=set)
    """Bodies whose ``send()`` returned: these must arrive."""
    handled: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    """``(recipient, body, precedence, error)`` in the order the application handled them."""
    handled_ids: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    """``(recipient, message id)`` -> how often the application handled it."""
    again: int = 0
    """Re-yields of ids the application had already handled (legitimate after a crash
    between the application's record and its ``confirm``)."""

    def attempt(self, text: str, recipient: str) -> None:
        self.attempted[text] = recipient

    def done(self, text: str) -> None:
        self.sent.add(text)

    def handle(
        self, recipient: str, message_id: str, text: str, precedence: str, error: str | None
    ) -> None:
        self.handled_ids[(recipient, message_id)] += 1
        self.handled.append((recipient, text, precedence, error))

    def count_handled(self, recipient: str | None = None) -> int:
        return sum(1 for who, *_ in self.handled if recipient is None or who == recipient)

    def results(self) -> dict[str, int]:
        counts = collections.Counter(text for _, text, _, _ in self.handled)
        duplicated = sum(n - 1 for n in counts.values() if n > 1)
        duplicated += sum(n - 1 for n in self.handled_ids.values() if n > 1)
        arrived = {text for who, text, _, _ in self.handled if self.attempted.get(text) == who}
        lost = sum(1 for text in self.sent if text not in arrived)
        unexpected = 0
        top: dict[tuple[str, str, str], int] = {}
        out_of_order = 0
        seen: set[str] = set()
        for recipient, text, precedence, error in self.handled:
            if error is not None or self.attempted.get(text) != recipient:
                unexpected += 1
                continue
            sender, index, sent_precedence = parse(text)
            if precedence != sent_precedence:
                unexpected += 1
            if text in seen:
                continue
            seen.add(text)
            key = (recipient, sender, sent_precedence)
            if index < top.get(key, -1):
                out_of_order += 1
            top[key] = max(index, top.get(key, -1))
        return {
            "lost": lost,
            "duplicated": duplicated,
            "out_of_order": out_of_order,
            "unexpected": unexpected,
        }

    def explain(self, limit: int = 20) -> str:
        """The first few offending messages, for an assertion message."""
        counts = collections.Counter(text for _, text, _, _ in self.handled)
        arrived = {text for who, text, _, _ in self.handled if self.attempted.get(text) == who}
        lost = sorted(text for text in self.sent if text not in arrived)[:limit]
        twice = sorted(text for text, n in counts.items() if n > 1)[:limit]
        odd = [row for row in self.handled if row[3] is not None
               or self.attempted.get(row[1]) != row[0]][:limit]  # fmt: skip
        return f"lost {lost}\nduplicated {twice}\nunexpected {odd}"
