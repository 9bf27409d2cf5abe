"""Double Ratchet with header encryption and a post-quantum (ML-KEM-768) step.

Theory of operation (SPEC.md §7). This is Signal's Double Ratchet with header encryption
(revision 4, §4), extended as SimpleX's PQ ratchet does: beside every Diffie-Hellman ratchet
step, the sender encapsulates a fresh ML-KEM-768 secret to the peer's latest KEM public key and
both secrets enter the root KDF together. An attacker must break X25519 *and* ML-KEM-768 to
learn a chain key, and a copied state is healed by one round trip of fresh DH and KEM secrets.

Rules this module keeps:

* Every header carries ``dh || kem_public || kem_ciphertext || pn || n`` and is encrypted under
  the current header key with a random 24-byte nonce; counters never appear in clear.
* The message key comes from a keyed-BLAKE2b chain step and is used exactly once.
* ``decrypt`` computes everything on local variables and commits them to the state only after
  the body authenticates: a failed decryption leaves the state byte-for-byte unchanged.
* Skipped message keys are bounded (``max_skip`` per message and in total) and expire.
* Every failure to decrypt is the single opaque ``DecryptionError``; the only other error a
  peer can cause is ``TooManySkippedMessages`` (an authenticated header asking too much).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nacl import bindings as _nacl
from nacl import exceptions as _nacl_exc

from liaison.protocol import primitives as p
from liaison.protocol.errors import (
    DecryptionError,
    InvalidKey,
    MalformedData,
    StateError,
    TooManySkippedMessages,
    UnsupportedVersion,
)
from liaison.protocol.keys import KemKeyPair, KemPublicKey, X25519KeyPair, X25519PublicKey

__all__ = [
    "DEFAULT_MAX_SKIP",
    "DEFAULT_SKIPPED_TTL",
    "HEADER_CIPHERTEXT_LEN",
    "HEADER_LEN",
    "Header",
    "Ratchet",
    "RatchetState",
    "kdf_rk",
]

DEFAULT_MAX_SKIP = 1000
DEFAULT_SKIPPED_TTL = 7 * 24 * 3600.0
STATE_VERSION = 1
ROOT_INFO = b"Liaison v1 ratchet"

_COUNTERS = struct.Struct(">II")
HEADER_LEN = p.X25519_LEN + p.MLKEM768_PUBLIC_LEN + p.MLKEM768_CIPHERTEXT_LEN + _COUNTERS.size
HEADER_CIPHERTEXT_LEN = HEADER_LEN + p.AEAD_TAG_LEN
_COUNTERS_AT = HEADER_LEN - _COUNTERS.size
_MAX_COUNTER = 0xFFFFFFFF

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Header:
    """The plaintext of an encrypted ratchet header (SPEC.md §8.3)."""

    dh: X25519PublicKey
    kem_public: KemPublicKey
    kem_ciphertext: bytes
    pn: int
    n: int

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if len(data) != HEADER_LEN:
            raise MalformedData(f"ratchet header must be {HEADER_LEN} bytes, got {len(data)}")
        o1 = p.X25519_LEN
        o2 = o1 + p.MLKEM768_PUBLIC_LEN
        o3 = o2 + p.MLKEM768_CIPHERTEXT_LEN
        pn, n = _COUNTERS.unpack_from(data, o3)
        return cls(X25519PublicKey(data[:o1]), KemPublicKey(data[o1:o2]), data[o2:o3], pn, n)


def kdf_rk(root_key: bytes, dh_out: bytes, kem_secret: bytes) -> tuple[bytes, bytes, bytes]:
    """``KDF_RK_HE``: HKDF-SHA256(salt=rk, ikm=dh||ss, info) -> (root, chain, next header)."""
    out = p.hkdf_sha256(dh_out + kem_secret, root_key, ROOT_INFO, 96)
    return out[:32], out[32:64], out[64:]


@dataclass(slots=True)
class RatchetState:
    """All ratchet state variables (SPEC.md §8.1). Serializes to versioned bytes."""

    ad: bytes
    rk: bytes
    dhs: X25519KeyPair
    dhr: X25519PublicKey | None
    kems: KemKeyPair
    kemr: KemPublicKey | None
    kem_ct: bytes | None  # our encapsulation that travels with our current sending chain
    cks: bytes | None
    ckr: bytes | None
    hks: bytes | None
    hkr: bytes | None
    nhks: bytes
    nhkr: bytes
    ns: int = 0
    nr: int = 0
    pn: int = 0
    # header key -> {n: (message key, stored at)}; dict order is insertion order.
    skipped: dict[bytes, dict[int, tuple[bytes, float]]] = field(default_factory=dict)

    def skipped_count(self) -> int:
        return sum(len(keys) for keys in self.skipped.values())

    # -- serialization (SPEC.md §8.8) --------------------------------------------------------

    def to_bytes(self) -> bytes:
        flags = (
            (self.dhr is not None)
            | (self.kemr is not None) << 1
            | (self.kem_ct is not None) << 2
            | (self.cks is not None) << 3
            | (self.ckr is not None) << 4
            | (self.hks is not None) << 5
            | (self.hkr is not None) << 6
        )
        parts = [
            struct.pack(">BBH", STATE_VERSION, flags, len(self.ad)),
            self.ad,
            self.rk,
            self.dhs.private_bytes(),
            self.kems.private_bytes(),
            self.nhks,
            self.nhkr,
            struct.pack(">III", self.ns, self.nr, self.pn),
        ]
        for opt in (self.dhr, self.kemr):
            if opt is not None:
                parts.append(bytes(opt))
        for raw in (self.kem_ct, self.cks, self.ckr, self.hks, self.hkr):
            if raw is not None:
                parts.append(raw)
        entries = [
            (hk, n, mk, at) for hk, keys in self.skipped.items() for n, (mk, at) in keys.items()
        ]
        parts.append(struct.pack(">H", len(entries)))
        for hk, n, mk, at in entries:
            parts.append(hk + struct.pack(">I", n) + mk + struct.pack(">d", at))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetState:
        reader = _Reader(data)
        version, flags, ad_len = struct.unpack(">BBH", reader.take(4))
        if version != STATE_VERSION:
            raise UnsupportedVersion(f"ratchet state version {version} is not supported")
        if flags >> 7:
            raise MalformedData("ratchet state has unknown flag bits")
        ad = reader.take(ad_len)
        rk = reader.take(32)
        dhs = X25519KeyPair(reader.take(32))
        kems = KemKeyPair(reader.take(p.MLKEM768_SEED_LEN))
        nhks, nhkr = reader.take(32), reader.take(32)
        ns, nr, pn = struct.unpack(">III", reader.take(12))
        dhr = X25519PublicKey(reader.take(32)) if flags & 1 else None
        kemr = KemPublicKey(reader.take(p.MLKEM768_PUBLIC_LEN)) if flags & 2 else None
        kem_ct = reader.take(p.MLKEM768_CIPHERTEXT_LEN) if flags & 4 else None
        cks = reader.take(32) if flags & 8 else None
        ckr = reader.take(32) if flags & 16 else None
        hks = reader.take(32) if flags & 32 else None
        hkr = reader.take(32) if flags & 64 else None
        (count,) = struct.unpack(">H", reader.take(2))
        skipped: dict[bytes, dict[int, tuple[bytes, float]]] = {}
        for _ in range(count):
            hk = reader.take(32)
            (n,) = struct.unpack(">I", reader.take(4))
            mk = reader.take(32)
            (at,) = struct.unpack(">d", reader.take(8))
            skipped.setdefault(hk, {})[n] = (mk, at)
        reader.finish()
        return cls(ad, rk, dhs, dhr, kems, kemr, kem_ct, cks, ckr, hks, hkr, nhks, nhkr,
                   ns, nr, pn, skipped)  # fmt: skip


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise MalformedData("ratchet state is truncated")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise MalformedData("ratchet state has trailing bytes")


class Ratchet:
    """A live ratchet over a ``RatchetState``, with injectable randomness, KEM and clock.

    Create one with ``Ratchet.initiator(...)`` / ``Ratchet.responder(...)`` (normally through
    ``liaison.protocol.session``), or ``Ratchet(RatchetState.from_bytes(saved))``. After every
    successful ``encrypt`` or ``decrypt`` you must persist ``state.to_bytes()`` together with
    the message it produced, in one transaction.
    """

    __slots__ = ("_clock", "_encaps", "_header_prefix", "_rng", "max_skip", "skipped_ttl", "state")

    def __init__(
        self,
        state: RatchetState,
        *,
        rng: p.RandomBytes = p.system_random,
        encaps: p.Encapsulate = p.mlkem768_encapsulate,
        clock: Clock = time.time,
        max_skip: int = DEFAULT_MAX_SKIP,
        skipped_ttl: float = DEFAULT_SKIPPED_TTL,
    ) -> None:
        self.state = state
        self._rng = rng
        self._encaps = encaps
        self._clock = clock
        self.max_skip = max_skip
        self.skipped_ttl = skipped_ttl
        self._header_prefix: bytes | None = None

    # -- initialisation (SPEC.md §8.4) ------------------------------------------------------

    @classmethod
    def initiator(
        cls,
        *,
        ad: bytes,
        root_key: bytes,
        header_key: bytes,
        next_header_key: bytes,
        peer_dh: X25519PublicKey,
        peer_kem: KemPublicKey,
        rng: p.RandomBytes = p.system_random,
        encaps: p.Encapsulate = p.mlkem768_encapsulate,
        clock: Clock = time.time,
    ) -> Ratchet:
        """``RatchetInitAliceHE`` plus the KEM: Alice steps her sending chain at once."""
        dhs = X25519KeyPair.generate(rng)
        kems = KemKeyPair.generate(rng)
        kem_ct, kem_ss = encaps(bytes(peer_kem))
        rk, cks, nhks = kdf_rk(root_key, dhs.dh(peer_dh), kem_ss)
        state = RatchetState(
            ad=ad, rk=rk, dhs=dhs, dhr=peer_dh, kems=kems, kemr=peer_kem, kem_ct=kem_ct,
            cks=cks, ckr=None, hks=header_key, hkr=None, nhks=nhks, nhkr=next_header_key,
        )  # fmt: skip
        return cls(state, rng=rng, encaps=encaps, clock=clock)

    @classmethod
    def responder(
        cls,
        *,
        ad: bytes,
        root_key: bytes,
        header_key: bytes,
        next_header_key: bytes,
        own_dh: X25519KeyPair,
        own_kem: KemKeyPair,
        rng: p.RandomBytes = p.system_random,
        encaps: p.Encapsulate = p.mlkem768_encapsulate,
        clock: Clock = time.time,
    ) -> Ratchet:
        """``RatchetInitBobHE``: Bob's signed prekeys are his first ratchet keys."""
        state = RatchetState(
            ad=ad, rk=root_key, dhs=own_dh, dhr=None, kems=own_kem, kemr=None, kem_ct=None,
            cks=None, ckr=None, hks=None, hkr=None, nhks=next_header_key, nhkr=header_key,
        )  # fmt: skip
        return cls(state, rng=rng, encaps=encaps, clock=clock)

    # -- encrypt (SPEC.md §8.5) -------------------------------------------------------------

    def encrypt(self, plaintext: bytes, ad: bytes) -> tuple[bytes, bytes, bytes]:
        """Encrypt one message: ``(header_nonce, header_ciphertext, body_ciphertext)``.

        ``ad`` is the envelope's associated data (its routing fields); the session's own
        associated data is prepended here.
        """
        s = self.state
        if s.cks is None or s.hks is None or s.kem_ct is None:
            raise StateError("this ratchet cannot send before it has received a message")
        if s.ns >= _MAX_COUNTER:
            raise StateError("sending chain exhausted")
        prefix = self._header_prefix
        if prefix is None:
            prefix = bytes(s.dhs.public) + bytes(s.kems.public) + s.kem_ct
            self._header_prefix = prefix
        s.cks, mk = p.kdf_chain(s.cks)
        header = prefix + _COUNTERS.pack(s.pn, s.ns)
        s.ns += 1
        nonce = self._rng(p.XCHACHA_NONCE_LEN)
        full_ad = s.ad + ad
        header_ct = bytes(_aead_encrypt(header, full_ad, nonce, s.hks))
        body_ct = bytes(_aead_encrypt(plaintext, full_ad + nonce + header_ct, nonce, mk))
        return nonce, header_ct, body_ct

    # -- decrypt (SPEC.md §8.6) -------------------------------------------------------------

    def decrypt(self, nonce: bytes, header_ct: bytes, body_ct: bytes, ad: bytes) -> bytes:
        """Decrypt one message. On any failure the state is unchanged."""
        s = self.state
        full_ad = s.ad + ad
        body_ad = full_ad + nonce + header_ct
        if len(nonce) != p.XCHACHA_NONCE_LEN or len(header_ct) != HEADER_CIPHERTEXT_LEN:
            raise DecryptionError()
        now = self._clock()

        # 1. The current receiving chain: in order, or an earlier skipped key of it.
        if s.hkr is not None:
            plain = _open_header(s.hkr, nonce, header_ct, full_ad)
            if plain is not None:
                _pn, n = _COUNTERS.unpack_from(plain, _COUNTERS_AT)
                if n < s.nr:
                    return self._from_skipped(s.hkr, n, nonce, body_ct, body_ad)
                assert s.ckr is not None
                if n == s.nr:  # the common, in-order case: nothing to skip
                    ckr, mk = p.kdf_chain(s.ckr)
                    plaintext = _open_body(mk, nonce, body_ct, body_ad)
                    s.ckr, s.nr = ckr, n + 1
                    return plaintext
                new_skipped, ckr = self._skip(s.skipped, s.hkr, s.ckr, s.nr, n, now)
                ckr, mk = p.kdf_chain(ckr)
                plaintext = _open_body(mk, nonce, body_ct, body_ad)
                s.skipped, s.ckr, s.nr = new_skipped, ckr, n + 1
                return plaintext

        # 2. A new ratchet step announced under the next header key.
        plain = _open_header(s.nhkr, nonce, header_ct, full_ad)
        if plain is not None:
            header = Header.decode(plain)
            return self._step_and_decrypt(header, nonce, body_ct, body_ad, now)

        # 3. A late message of an older chain whose keys we kept.
        for hk in s.skipped:
            if hk == s.hkr:
                continue
            plain = _open_header(hk, nonce, header_ct, full_ad)
            if plain is not None:
                _pn, n = _COUNTERS.unpack_from(plain, _COUNTERS_AT)
                return self._from_skipped(hk, n, nonce, body_ct, body_ad)
        raise DecryptionError()

    def _from_skipped(self, hk: bytes, n: int, nonce: bytes, body_ct: bytes, ad: bytes) -> bytes:
        keys = self.state.skipped.get(hk)
        entry = keys.get(n) if keys else None
        if keys is None or entry is None or entry[1] < self._clock() - self.skipped_ttl:
            raise DecryptionError()  # a replay, or a key that expired or was evicted
        plaintext = _open_body(entry[0], nonce, body_ct, ad)
        del keys[n]
        if not keys:
            del self.state.skipped[hk]
        return plaintext

    def _step_and_decrypt(
        self, header: Header, nonce: bytes, body_ct: bytes, body_ad: bytes, now: float
    ) -> bytes:
        s = self.state
        skipped = s.skipped
        # Keys left in the chain we are leaving (up to the peer's previous-chain length).
        if s.hkr is not None and s.ckr is not None:
            skipped, _ = self._skip(skipped, s.hkr, s.ckr, s.nr, header.pn, now)
        # Receiving half of the step: our KEM key decapsulates the peer's ciphertext.
        kem_in = s.kems.decapsulate(header.kem_ciphertext)
        rk, ckr, nhkr = kdf_rk(s.rk, s.dhs.dh(header.dh), kem_in)
        skipped, ckr = self._skip(skipped, s.nhkr, ckr, 0, header.n, now)
        ckr, mk = p.kdf_chain(ckr)
        plaintext = _open_body(mk, nonce, body_ct, body_ad)
        # Authenticated: now the sending half of the step, then commit everything.
        dhs = X25519KeyPair.generate(self._rng)
        kems = KemKeyPair.generate(self._rng)
        try:
            kem_ct, kem_out = self._encaps(bytes(header.kem_public))
        except InvalidKey as exc:
            raise MalformedData("the peer's ML-KEM-768 public key is invalid") from exc
        rk, cks, nhks = kdf_rk(rk, dhs.dh(header.dh), kem_out)
        s.pn, s.ns, s.nr = s.ns, 0, header.n + 1
        s.hks, s.hkr = s.nhks, s.nhkr
        s.dhr, s.kemr = header.dh, header.kem_public
        s.rk, s.ckr, s.nhkr = rk, ckr, nhkr
        s.dhs, s.kems, s.kem_ct, s.cks, s.nhks = dhs, kems, kem_ct, cks, nhks
        s.skipped = skipped
        self._header_prefix = None
        return plaintext

    def _skip(
        self,
        skipped: dict[bytes, dict[int, tuple[bytes, float]]],
        hk: bytes,
        ck: bytes,
        start: int,
        until: int,
        now: float,
    ) -> tuple[dict[bytes, dict[int, tuple[bytes, float]]], bytes]:
        """Return a *new* skipped-key store with the keys ``start..until-1`` of a chain added
        (expired and over-bound entries dropped) and the chain key at ``until``."""
        if until - start > self.max_skip:
            raise TooManySkippedMessages(
                f"message asks to skip {until - start} keys; the bound is {self.max_skip}"
            )
        cutoff = now - self.skipped_ttl
        fresh = {
            key: kept
            for key, keys in skipped.items()
            if (kept := {n: e for n, e in keys.items() if e[1] >= cutoff})
        }
        if until > start:
            chain = dict(fresh.get(hk, {}))
            for n in range(start, until):
                ck, mk = p.kdf_chain(ck)
                chain[n] = (mk, now)
            fresh[hk] = chain
        excess = sum(len(keys) for keys in fresh.values()) - self.max_skip
        while excess > 0:  # evict the oldest entries first
            oldest_hk = min(fresh, key=lambda key: min(e[1] for e in fresh[key].values()))
            keys = dict(fresh[oldest_hk])
            while excess > 0 and keys:
                del keys[min(keys, key=lambda n: keys[n][1])]
                excess -= 1
            if keys:
                fresh[oldest_hk] = keys
            else:
                del fresh[oldest_hk]
        return fresh, ck


# The hot path calls libsodium's AEAD directly: every key and nonce here is produced by this
# module with the right length, so the wrappers' length checks would only cost time.
_aead_encrypt = _nacl.crypto_aead_xchacha20poly1305_ietf_encrypt
_aead_decrypt = _nacl.crypto_aead_xchacha20poly1305_ietf_decrypt


def _open_header(hk: bytes, nonce: bytes, header_ct: bytes, ad: bytes) -> bytes | None:
    """The header plaintext if ``hk`` authenticates it, else ``None``."""
    try:
        return bytes(_aead_decrypt(header_ct, ad, nonce, hk))
    except (_nacl_exc.CryptoError, ValueError, TypeError):
        return None


def _open_body(mk: bytes, nonce: bytes, body_ct: bytes, ad: bytes) -> bytes:
    try:
        return bytes(_aead_decrypt(body_ct, ad, nonce, mk))
    except (_nacl_exc.CryptoError, ValueError, TypeError) as exc:
        raise DecryptionError() from exc
