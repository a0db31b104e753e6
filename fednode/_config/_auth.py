"""Link tokens: minting and verifying JWTs between peers, key rotation by kid, replay protection."""

from __future__ import annotations

import enum
import heapq
import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .._errors import AuthError
from ._config import MAX_TOKEN_TTL, AuthConfig, PeerConfig, Secret, public_key_kid

#: Longest token lifetime accepted, whatever a peer's own token_ttl: bounds the replay cache.
MAX_TOKEN_LIFETIME = MAX_TOKEN_TTL
#: Longest token accepted, in characters; anything longer is garbage.
MAX_TOKEN_LENGTH = 8192
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "jti"]


class AuthReason(enum.StrEnum):
    """Why a token was refused. Each reason is logged and counted on its own."""

    MISSING = "missing"
    GARBAGE = "garbage"
    ALG_NONE = "alg_none"
    WRONG_ALGORITHM = "wrong_algorithm"
    UNKNOWN_KID = "unknown_kid"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    ISSUED_IN_FUTURE = "issued_in_future"
    TOO_LONG_LIVED = "too_long_lived"
    WRONG_AUDIENCE = "wrong_audience"
    UNKNOWN_ISSUER = "unknown_issuer"
    WRONG_ISSUER = "wrong_issuer"
    MISSING_CLAIM = "missing_claim"
    REPLAY = "replay"


#: Reasons answered with 403 (a known party, not allowed here); all others get 401.
FORBIDDEN_REASONS = frozenset({AuthReason.UNKNOWN_ISSUER, AuthReason.WRONG_AUDIENCE})


def refuse(reason: AuthReason, detail: str) -> AuthError:
    """Build the AuthError for ``reason``."""
    return AuthError(reason.value, detail)


@attrs.frozen
class Claims:
    """The verified claims of a link token."""

    issuer: str
    audience: str
    issued_at: float
    expires_at: float
    jti: str


class ReplayCache:
    """Remembers (issuer, jti) pairs until their token expires.

    Only tokens that passed every other check are remembered, so the cache grows only with
    genuine peers' traffic; expired entries are pruned on every insert.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def check_and_remember(self, issuer: str, jti: str, forget_at: float) -> bool:
        """Record the pair; return False if it was already seen (a replay)."""
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            if self._expiry.get(key, now + 1) <= now:
                del self._expiry[key]
        key = (issuer, jti)
        if key in self._expiry:
            return False
        self._expiry[key] = forget_at
        heapq.heappush(self._heap, (forget_at, key))
        return True


class AuthManager:
    """Mints this node's link tokens and verifies its peers' (the seeds' createToken/verifyToken).

    Args:
        node_id: this node's id (``iss`` of tokens it mints, expected ``aud`` of tokens it accepts).
        config: the ``[auth]`` section.
        peers: the configured peers; kept up to date with :meth:`set_peer` / :meth:`drop_peer`.
    """

    def __init__(self, node_id: str, config: AuthConfig, peers: dict[str, PeerConfig] | None = None) -> None:
        self.node_id = node_id
        self.config = config
        self.peers: dict[str, PeerConfig] = dict(peers or {})
        self.replay = ReplayCache()
        self._signing_kid: str | None = None
        if config.algorithm == "EdDSA" and config.private_key is not None:
            self._signing_kid = public_key_kid(config.private_key.public_key())

    def update(self, config: AuthConfig) -> None:
        """Use a new ``[auth]`` section from now on (a configuration reload); live links are unaffected."""
        self.config = config
        self._signing_kid = None
        if config.algorithm == "EdDSA" and config.private_key is not None:
            self._signing_kid = public_key_kid(config.private_key.public_key())

    def fingerprint(self) -> tuple[object, ...]:
        """What identifies the keys and rules in use, without revealing them (to tell if a reload changed them)."""
        key = self._signing_kid
        return (self.config.algorithm, tuple(s.kid for s in self.config.secrets), key, self.config.token_ttl,
                self.config.leeway)

    def set_peer(self, peer: PeerConfig) -> None:
        """Add or replace a peer whose tokens are accepted."""
        self.peers[peer.id] = peer

    def drop_peer(self, peer_id: str) -> None:
        """Stop accepting tokens from a peer."""
        self.peers.pop(peer_id, None)

    # -- minting ----------------------------------------------------------------------------

    def create_token(self, audience: str, *, now: float | None = None) -> str:
        """Mint a token from this node to ``audience`` (a configured peer).

        Raises:
            AuthError: no key is configured for that peer.
        """
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": self.node_id,
            "aud": audience,
            "iat": issued,
            "exp": issued + max(1, round(self.config.token_ttl)),
            "jti": uuid.uuid4().hex,
        }
        if self.config.algorithm == "HS512":
            secret = self._secrets_for(audience)[0]
            return jwt.encode(claims, secret.reveal(), algorithm="HS512", headers={"kid": secret.kid})
        if self.config.private_key is None:
            raise refuse(AuthReason.MISSING, "no EdDSA private key configured")
        return jwt.encode(claims, self.config.private_key, algorithm="EdDSA",
                          headers={"kid": self._signing_kid})

    def signing_kid(self, audience: str) -> str | None:
        """The kid of the key this node signs its tokens to ``audience`` with (it names the key, revealing
        nothing of it), or None when there is no such key."""
        if self.config.algorithm != "HS512":
            return self._signing_kid
        try:
            return self._secrets_for(audience)[0].kid
        except AuthError:
            return None

    def _secrets_for(self, peer_id: str) -> tuple[Secret, ...]:
        peer = self.peers.get(peer_id)
        secrets = (peer.secrets if peer is not None and peer.secrets else ()) or self.config.secrets
        if not secrets:
            raise refuse(AuthReason.UNKNOWN_ISSUER, f"no HS512 secret configured for {peer_id!r}")
        return secrets

    def _keys_for(self, peer: PeerConfig) -> dict[str, Any]:
        if self.config.algorithm == "HS512":
            return {s.kid: s.reveal() for s in self._secrets_for(peer.id)}
        keys: dict[str, Ed25519PublicKey] = {public_key_kid(k): k for k in peer.public_keys}
        return keys

    # -- verifying --------------------------------------------------------------------------

    def verify_token(self, token: str | None, *, expected_issuer: str | None = None) -> Claims:
        """Verify a peer's token addressed to this node.

        Args:
            token: the compact JWT (``None`` or empty = missing).
            expected_issuer: when dialing, the peer we meant to reach; any other issuer is refused.

        Returns:
            The verified claims. The token's jti is remembered, so the same token is refused next time.

        Raises:
            AuthError: with one of :class:`AuthReason`'s values as ``reason``.
        """
        if not token:
            raise refuse(AuthReason.MISSING, "no bearer token presented")
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise refuse(AuthReason.GARBAGE, "not a compact JWT")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise refuse(AuthReason.GARBAGE, f"token does not parse: {type(exc).__name__}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise refuse(AuthReason.ALG_NONE, "unsigned tokens (alg none) are never accepted")
        if alg != self.config.algorithm:
            raise refuse(AuthReason.WRONG_ALGORITHM, f"algorithm {alg[:20]!r} is not {self.config.algorithm}")
        issuer = unverified.get("iss")
        if issuer is None:
            raise refuse(AuthReason.MISSING_CLAIM, "token has no 'iss' claim")
        if not isinstance(issuer, str) or issuer not in self.peers:
            shown = issuer[:64] if isinstance(issuer, str) else type(issuer).__name__
            raise refuse(AuthReason.UNKNOWN_ISSUER, f"issuer {shown!r} is not a configured peer")
        if expected_issuer is not None and issuer != expected_issuer:
            raise refuse(AuthReason.WRONG_ISSUER, f"expected a token from {expected_issuer!r}, got {issuer!r}")
        keys = self._keys_for(self.peers[issuer])
        kid = header.get("kid")
        if kid is not None:
            if not isinstance(kid, str) or kid not in keys:
                raise refuse(AuthReason.UNKNOWN_KID, f"key id {str(kid)[:40]!r} is not a key of {issuer!r}")
            candidates = [keys[kid]]
        else:
            candidates = list(keys.values())
        if not candidates:
            raise refuse(AuthReason.UNKNOWN_KID, f"no verification key configured for {issuer!r}")
        payload = self._decode(token, candidates, issuer)
        jti = payload["jti"]
        if not isinstance(jti, str) or not 8 <= len(jti) <= 128:
            raise refuse(AuthReason.MISSING_CLAIM, "'jti' must be a string of 8 to 128 characters")
        try:
            issued_at = float(payload["iat"])
            expires_at = float(payload["exp"])
        except (OverflowError, TypeError, ValueError):
            raise refuse(AuthReason.GARBAGE, "'iat' or 'exp' is out of range") from None
        if expires_at - time.time() > MAX_TOKEN_LIFETIME + self.config.leeway:
            raise refuse(AuthReason.TOO_LONG_LIVED, f"token expires more than {MAX_TOKEN_LIFETIME:g}s from now")
        if not self.replay.check_and_remember(issuer, jti, expires_at + self.config.leeway):
            raise refuse(AuthReason.REPLAY, f"token id already used by {issuer!r}")
        return Claims(issuer=issuer, audience=self.node_id, issued_at=issued_at, expires_at=expires_at, jti=jti)

    def _decode(self, token: str, candidates: list[Any], issuer: str) -> dict[str, Any]:
        failure: AuthError | None = None
        for key in candidates:
            try:
                payload: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=[self.config.algorithm],
                    audience=self.node_id,
                    issuer=issuer,
                    leeway=self.config.leeway,
                    options={"require": REQUIRED_CLAIMS, "verify_nbf": True},
                )
                return payload
            except jwt.InvalidSignatureError:
                failure = refuse(AuthReason.BAD_SIGNATURE, f"signature does not verify with {issuer!r}'s key")
            except jwt.ExpiredSignatureError:
                raise refuse(AuthReason.EXPIRED, "token has expired") from None
            except jwt.ImmatureSignatureError:
                raise refuse(AuthReason.ISSUED_IN_FUTURE, "token is issued in the future (check clocks)") from None
            except jwt.MissingRequiredClaimError as exc:
                raise refuse(AuthReason.MISSING_CLAIM, f"token has no {exc.claim!r} claim") from None
            except jwt.InvalidAudienceError:
                raise refuse(AuthReason.WRONG_AUDIENCE, f"token is not addressed to {self.node_id!r}") from None
            except jwt.InvalidIssuerError:
                raise refuse(AuthReason.UNKNOWN_ISSUER, "issuer does not match") from None
            except jwt.PyJWTError as exc:
                raise refuse(AuthReason.GARBAGE, f"invalid token: {type(exc).__name__}") from None
        assert failure is not None
        raise failure
