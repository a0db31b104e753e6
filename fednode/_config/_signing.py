"""Signing and verifying statements between nodes with the keys the configuration already holds.

A node signs with its own key: its ``[auth] private_key`` (Ed25519) or, with HS512, its ``[auth]``
secret, and also the per-pair secret of the peer a statement is addressed to (so that a peer it
shares only that secret with can verify it). A verifier finds the signer's keys in ``[[nodes]]``, in
``[[peers]]``, or, when the signer is configured nowhere or is a peer without a secret of its own,
in its own ``[auth]`` secrets: one secret on every node (a same-secret federation) needs no more
configuration. Each signature names its key by kid (``ed-...`` for an Ed25519 key, ``hs-...`` for a
secret), so the kind of key is never taken from the signature itself. The primitives are
``cryptography``'s (Ed25519, HMAC-SHA512); nothing here touches the network or a clock.

Route advertisements are signed this way (see :mod:`fednode._route_proof`); so can be anything
else a node must prove it said (a caller's identity).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .._errors import SignatureError as SignatureError
from ._config import AuthConfig, NodeKeys, PeerConfig, Secret, public_key_kid

#: Most signatures one signer may attach to one statement (its [auth] key and one per-pair secret).
MAX_SIGNATURES = 4
_MAX_KID = 64
_MAX_SIGNATURE_TEXT = 128  # 64 bytes in unpadded base64url are 86 characters


class SignatureReason(enum.StrEnum):
    """Why a signed statement was not believed."""

    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"


@attrs.frozen
class Signature:
    """One signature: the kid of the key that made it, and its bytes."""

    kid: str
    value: bytes = attrs.field(repr=False)

    def to_wire(self) -> dict[str, str]:
        """As JSON: ``{"kid": ..., "sig": base64url without padding}``."""
        return {"kid": self.kid, "sig": base64.urlsafe_b64encode(self.value).rstrip(b"=").decode()}

    @classmethod
    def from_wire(cls, item: object) -> Signature:
        """Parse one signature, checking its shape and size.

        Raises:
            SignatureError: ``malformed``.
        """
        if not isinstance(item, dict):
            raise SignatureError(SignatureReason.MALFORMED, "a signature must be an object")
        kid, text = item.get("kid"), item.get("sig")
        if not (isinstance(kid, str) and 0 < len(kid) <= _MAX_KID and isinstance(text, str)
                and 0 < len(text) <= _MAX_SIGNATURE_TEXT):
            raise SignatureError(SignatureReason.MALFORMED, "a signature needs a kid and a sig of sane sizes")
        try:
            value = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise SignatureError(SignatureReason.MALFORMED, "sig is not base64url") from None
        return cls(kid=kid, value=value)


def signatures_from_wire(items: object) -> tuple[Signature, ...]:
    """One signer's signatures (1 to :data:`MAX_SIGNATURES`) as sent.

    Raises:
        SignatureError: ``malformed``.
    """
    if not isinstance(items, list) or not 0 < len(items) <= MAX_SIGNATURES:
        raise SignatureError(SignatureReason.MALFORMED, f"expected a list of 1 to {MAX_SIGNATURES} signatures")
    return tuple(Signature.from_wire(item) for item in items)


def canonical(value: Any) -> bytes:
    """The bytes a statement is signed as: compact JSON with sorted keys (the same on every node)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _mac(secret: Secret, message: bytes) -> bytes:
    # The standard library's one-shot HMAC: a third of the cost of building an HMAC object per message.
    return hmac.digest(secret.reveal(), message, "sha512")


class Keyring:
    """This node's signing keys and the keys it verifies other nodes' signatures with.

    Everything is read from the configuration in force at each call (the callables), so a reload
    applies at once.

    Args:
        node_id: this node's id.
        auth: the ``[auth]`` section in force.
        peer: a registered peer's configuration (None: not a peer).
        nodes: the ``[[nodes]]`` entries in force.
    """

    def __init__(self, node_id: str, *, auth: Callable[[], AuthConfig], peer: Callable[[str], PeerConfig | None],
                 nodes: Callable[[], Iterable[NodeKeys]]) -> None:
        self.node_id = node_id
        self._auth = auth
        self._peer = peer
        self._nodes = nodes

    def sign(self, message: bytes, *, to: str | None = None) -> tuple[Signature, ...]:
        """This node's signatures of ``message``, for ``to`` (a peer) and whoever it passes it to.

        With EdDSA: one Ed25519 signature. With HS512: one with the ``[auth]`` secret in use (if
        any), and one with the per-pair secret of ``to`` if it has one of its own.

        Raises:
            SignatureError: ``unknown_key``: this node has no key to sign with.
        """
        auth = self._auth()
        if auth.algorithm == "EdDSA":
            if auth.private_key is None:
                raise SignatureError(SignatureReason.UNKNOWN_KEY, "no [auth] private_key to sign with")
            return (Signature(public_key_kid(auth.private_key.public_key()), auth.private_key.sign(message)),)
        secrets: list[Secret] = list(auth.secrets[:1])
        peer = self._peer(to) if to is not None else None
        if peer is not None and peer.secrets and peer.secrets[0] not in secrets:
            secrets.append(peer.secrets[0])
        if not secrets:
            raise SignatureError(SignatureReason.UNKNOWN_KEY, "no HS512 secret to sign with")
        return tuple(Signature(secret.kid, _mac(secret, message)) for secret in secrets)

    def keys_of(self, signer: str) -> tuple[tuple[Secret, ...], tuple[Ed25519PublicKey, ...]]:
        """The secrets and public keys ``signer``'s signatures are verified with (see the module doc)."""
        for entry in self._nodes():
            if entry.id == signer:
                return entry.secrets, entry.public_keys
        peer = self._peer(signer)
        auth = self._auth()
        if peer is not None and (peer.secrets or peer.public_keys):
            return peer.secrets, peer.public_keys
        return auth.secrets, ()

    def verify(self, signer: str, message: bytes, signatures: Sequence[Signature]) -> None:
        """Check that ``signer`` signed ``message``: one of ``signatures`` verifies with one of its keys.

        Raises:
            SignatureError: ``unknown_key`` (none of the kids is a key of ``signer``'s this node
                knows) or ``bad_signature``.
        """
        secrets, public_keys = self.keys_of(signer)
        by_kid: Mapping[str, Secret | Ed25519PublicKey] = {
            **{secret.kid: secret for secret in secrets}, **{public_key_kid(key): key for key in public_keys}}
        known = False
        for signature in signatures[:MAX_SIGNATURES]:
            key = by_kid.get(signature.kid)
            if key is None:
                continue
            known = True
            if isinstance(key, Secret):
                if hmac.compare_digest(_mac(key, message), signature.value):  # constant time
                    return
                continue
            try:
                key.verify(signature.value, message)
                return
            except InvalidSignature:
                continue
        if not known:
            raise SignatureError(SignatureReason.UNKNOWN_KEY, f"no key of {signer!r} known here signed it "
                                 f"(configure it in [[nodes]] or [[peers]])")
        raise SignatureError(SignatureReason.BAD_SIGNATURE, f"the signature of {signer!r} does not verify")
