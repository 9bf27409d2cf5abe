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
from liaison.protocol.session import PrekeyBundle, Session, initiate, respond

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
