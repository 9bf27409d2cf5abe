"""Liaison protocol: the sans-I/O core shared by the relay and the client SDK.

Bytes in, bytes or objects out; no sockets, no event loop, no database. Modules:

- ``errors``      the error tree (one root, local vs remote, one opaque decryption error)
- ``primitives``  thin wrappers over X25519, Ed25519, the AEADs, HKDF, BLAKE2b, ML-KEM-768
- ``keys``        typed key classes
- ``noise``       the Noise Protocol Framework (25519_ChaChaPoly_BLAKE2b)
- ``link``        the cell <-> relay link (Noise IK) and its transport
- ``frames``      link frame codecs and wire error codes
- ``enrollment``  enrollment codes and the enrollment handshake
- ``session``     PQXDH-style session setup and the ``Session`` that seals/opens envelopes
- ``ratchet``     the header-encrypted double ratchet with an ML-KEM-768 step
- ``envelope``    envelope and body codecs, precedence, content types, size buckets
- ``fingerprint`` safety numbers (Signal's algorithm)

The protocol itself is specified in ``SPEC.md`` beside this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liaison.protocol.bundle import PrekeyBundle
    from liaison.protocol.envelope import Body, ContentType, Envelope, Precedence, Routing
    from liaison.protocol.errors import (
        DecryptionError,
        LiaisonError,
        LocalProtocolError,
        MalformedData,
        RemoteProtocolError,
    )
    from liaison.protocol.keys import IdentityKey, IdentityKeyPair
    from liaison.protocol.link import LinkInitiator, LinkResponder, LinkTransport
    from liaison.protocol.session import Session, initiate, respond

# Exports load their module on first use (PEP 562), so importing one module of the package
# (the relay imports envelope, frames, bundle, link) never drags in the ratchet.
_EXPORTS = {
    "Body": "envelope",
    "ContentType": "envelope",
    "DecryptionError": "errors",
    "Envelope": "envelope",
    "IdentityKey": "keys",
    "IdentityKeyPair": "keys",
    "LiaisonError": "errors",
    "LinkInitiator": "link",
    "LinkResponder": "link",
    "LinkTransport": "link",
    "LocalProtocolError": "errors",
    "MalformedData": "errors",
    "Precedence": "envelope",
    "PrekeyBundle": "bundle",
    "RemoteProtocolError": "errors",
    "Routing": "envelope",
    "Session": "session",
    "initiate": "session",
    "respond": "session",
}

__all__ = [
    "Body",
    "ContentType",
    "DecryptionError",
    "Envelope",
    "IdentityKey",
    "IdentityKeyPair",
    "LiaisonError",
    "LinkInitiator",
    "LinkResponder",
    "LinkTransport",
    "LocalProtocolError",
    "MalformedData",
    "Precedence",
    "PrekeyBundle",
    "RemoteProtocolError",
    "Routing",
    "Session",
    "initiate",
    "respond",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'liaison.protocol' has no attribute {name!r}")
    return getattr(importlib.import_module(f"liaison.protocol.{module}"), name)
