"""Admission of connections into the link handshake: who may hold a handshake slot, how often.

Theory of operation
-------------------
A WebSocket on ``/v1/link`` holds a *handshake slot* from the upgrade until the cell has
proved its keys (its first transport frame decrypts, SPEC.md M-LINK-9) or the handshake
fails. Slots cost the relay little each, but without limits one host could hold all of them
and lock every cell out (4201 for everyone). :class:`HandshakeGuard` decides at the upgrade,
in memory and in O(1), before any cryptography or database work:

* **per source** (an IPv4 address, or an IPv6 /64 — one host controls a whole /64): at most
  ``per_source`` slots at once, ``per_known_source`` for a source from which a cell completed
  a link within ``known_ttl`` seconds (a NAT or proxy in front of several cells);
* **a reserve for known sources**: sources never seen to authenticate share at most
  ``limit - reserve`` of the global ``limit`` slots, so a flood from many fresh addresses
  still leaves ``reserve`` slots to the addresses cells really use;
* **a rate per source**: a token bucket of ``rate`` handshakes a second (burst ``burst``),
  ten times that for known sources, so a host replaying or inventing hellos in a loop costs
  the relay a bounded amount of CPU;
* **replayed hellos**: :meth:`replayed` remembers the ephemeral key of every hello for
  ``replay_ttl`` seconds (bounded); a hello whose ephemeral key was seen before is a replay
  (an honest cell draws a fresh one for every attempt) and is refused before any
  Diffie-Hellman or database work.

Every refusal is the documented close code ``rate_limited`` (4201) after the upgrade, or
``malformed_frame`` for a replay; both are counted in ``/metrics`` by code, never by address.
Addresses are kept only in memory, never logged by this module.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["HandshakeGuard", "Refusal", "source_of"]

Refusal = str
"""Why a connection was not admitted: ``global``, ``source``, ``unknown_pool`` or ``rate``."""

KNOWN_RATE_FACTOR = 10
"""A known source's handshake rate and burst, as a multiple of an unknown source's."""


def source_of(host: str | None) -> str:
    """The key a connection is counted under: the IPv4 address, the IPv6 /64 prefix (an
    IPv4-mapped IPv6 address counts as its IPv4 address), or the host string as given."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class HandshakeGuard:
    """See the module docstring. Not thread-safe: used from the relay's event loop."""

    limit: int
    per_source: int
    per_known_source: int
    reserve: int
    rate: float
    burst: int
    known_ttl: float = 24 * 3600.0
    replay_ttl: float = 600.0
    max_sources: int = 100_000
    max_replay_entries: int = 1_000_000
    clock: Callable[[], float] = time.monotonic
    in_handshake: int = 0
    unknown_in_handshake: int = 0
    _held: dict[str, int] = field(default_factory=dict)
    _known: OrderedDict[str, float] = field(default_factory=OrderedDict)
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    _ephemerals: OrderedDict[bytes, float] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.reserve = max(0, min(self.reserve, self.limit - 1))

    # -- slots ---------------------------------------------------------------------------------

    def is_known(self, source: str) -> bool:
        seen = self._known.get(source)
        if seen is None:
            return False
        if self.clock() - seen > self.known_ttl:
            del self._known[source]
            return False
        return True

    def admit(self, source: str) -> Refusal | None:
        """Take a handshake slot for ``source``; the reason if none may be taken. Every
        admitted slot must be given back with :meth:`release` (same ``source``)."""
        known = self.is_known(source)
        if self.in_handshake >= self.limit:
            return "global"
        if self._held.get(source, 0) >= (self.per_known_source if known else self.per_source):
            return "source"
        if not known and self.unknown_in_handshake >= self.limit - self.reserve:
            return "unknown_pool"
        if not self._take_token(source, known):
            return "rate"
        self._held[source] = self._held.get(source, 0) + 1
        self.in_handshake += 1
        if not known:
            self.unknown_in_handshake += 1
        return None

    def release(self, source: str, *, was_known: bool) -> None:
        """Give back the slot :meth:`admit` took (``was_known``: the source was known then)."""
        held = self._held.get(source, 0) - 1
        if held > 0:
            self._held[source] = held
        else:
            self._held.pop(source, None)
        self.in_handshake -= 1
        if not was_known:
            self.unknown_in_handshake -= 1

    def authenticated(self, source: str) -> None:
        """A cell completed a link from ``source``: it is a known source from now on."""
        self._known[source] = self.clock()
        self._known.move_to_end(source)
        while len(self._known) > self.max_sources:
            self._known.popitem(last=False)

    # -- rate ----------------------------------------------------------------------------------

    def _take_token(self, source: str, known: bool) -> bool:
        factor = KNOWN_RATE_FACTOR if known else 1
        rate, burst = self.rate * factor, float(self.burst * factor)
        now = self.clock()
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = _Bucket(burst, now)
            self._buckets[source] = bucket
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    # -- replays -------------------------------------------------------------------------------

    def replayed(self, ephemeral: bytes) -> bool:
        """Whether a hello with this ephemeral key was seen within ``replay_ttl`` seconds;
        records it either way."""
        now = self.clock()
        while self._ephemerals:
            oldest, at = next(iter(self._ephemerals.items()))
            if now - at <= self.replay_ttl and len(self._ephemerals) < self.max_replay_entries:
                break
            del self._ephemerals[oldest]
        if ephemeral in self._ephemerals:
            return True
        self._ephemerals[ephemeral] = now
        return False
