"""Link authentication: JWT minting and verification, and the mutually authenticated handshake."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import jwt
import pytest
import structlog
import trio
import trio_websocket
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import fednode
from fednode import AuthError, AuthManager, AuthReason, Secret
from fednode._cli._formatting import format_status
from fednode._config._auth import MAX_TOKEN_LENGTH, ReplayCache
from fednode._config._config import public_key_kid
from fednode._peers import _handshake, _supervisor
from fednode._peers import _wire as wire
from fednode._peers._handshake import describe_rejection

from conftest import SECRET, node_config, peer, raw_config

# Test-only HS512 secrets, all >= 64 bytes.
OTHER = "other-secret-" + "fedcba9876543210" * 5
NEW = "new-secret-" + "0f1e2d3c4b5a6978" * 5
OLD = "old-secret-" + "8796a5b4c3d2e1f0" * 5
KID = Secret(SECRET).kid
REQUIRED = ("exp", "iat", "iss", "aud", "jti")
TOKEN_HEADER = b"x-fednode-token"


# -- token crafting -----------------------------------------------------------------------------

def claims(iss: Any = "node-b", aud: Any = "node-a", *, iat_offset: int = 0, ttl: int = 60,
           drop: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    """Claims of a token from ``iss`` to ``aud`` issued ``iat_offset`` s from now, living ``ttl`` s."""
    now = int(time.time()) + iat_offset
    result: dict[str, Any] = {"iss": iss, "aud": aud, "iat": now, "exp": now + ttl, "jti": uuid.uuid4().hex}
    for name in drop:
        del result[name]
    result.update(extra)
    return result


def sign(payload: dict[str, Any], key: Any = SECRET, *, algorithm: str = "HS512", kid: str | None = KID) -> str:
    """A token signed with PyJWT; ``kid=None`` leaves the kid header out."""
    headers = {"kid": kid} if kid is not None else None
    secret = key.encode() if isinstance(key, str) else key
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_token(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None = None) -> str:
    """A token built by hand (for headers PyJWT refuses to write); HMAC-SHA512 signed if a key is given."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), hashlib.sha512).digest()
    return f"{signing_input}.{b64(signature)}"


def manager(node_id: str = "node-a", peers: Sequence[str | dict[str, Any]] = ("node-b",), *,
            auth: dict[str, Any] | None = None, base_dir: Path | None = None) -> AuthManager:
    """An AuthManager built from a validated configuration (``auth`` replaces the whole [auth] section)."""
    raw = raw_config(node_id, [p if isinstance(p, dict) else {"id": p} for p in peers])
    if auth is not None:
        raw["auth"] = auth
    config = fednode.NodeConfig.from_mapping(raw, base_dir=base_dir)
    return AuthManager(config.id, config.auth, {p.id: p for p in config.peers})


def refused(auth: AuthManager, token: str | None, reason: AuthReason, **kwargs: Any) -> AuthError:
    """Assert ``token`` is refused for exactly ``reason``, without the token in the error; return the error."""
    with pytest.raises(AuthError) as caught:
        auth.verify_token(token, **kwargs)
    assert caught.value.reason == reason.value, caught.value
    if token:
        assert token not in str(caught.value)
    return caught.value


@pytest.fixture
def node_a() -> AuthManager:
    return manager("node-a", ["node-b"])


@pytest.fixture
def node_b() -> AuthManager:
    return manager("node-b", ["node-a"])


# -- EdDSA key material -------------------------------------------------------------------------

@attrs.frozen
class KeyPair:
    private: Ed25519PrivateKey
    private_path: Path
    public_path: Path
    public_pem: str

    @property
    def kid(self) -> str:
        return public_key_kid(self.private.public_key())


def make_key(directory: Path, name: str) -> KeyPair:
    private = Ed25519PrivateKey.generate()
    private_path = directory / f"{name}.key"
    public_path = directory / f"{name}.pub"
    private_path.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    public_path.write_text(public_pem)
    return KeyPair(private, private_path, public_path, public_pem)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, KeyPair]:
    return {name: make_key(tmp_path, name) for name in ("node-a", "node-b", "node-c", "mallory")}


def ed_raw(node_id: str, key: KeyPair, peers: dict[str, str | list[str]]) -> dict[str, Any]:
    """A raw EdDSA configuration; ``peers`` maps peer id to a public key (file path or PEM text) or a list."""
    raw = raw_config(node_id, [{"id": pid, "public_keys" if isinstance(pk, list) else "public_key": pk}
                               for pid, pk in peers.items()])
    raw["auth"] = {"algorithm": "EdDSA", "private_key": str(key.private_path)}
    return raw


def ed_manager(node_id: str, key: KeyPair, peers: dict[str, str | list[str]]) -> AuthManager:
    config = fednode.NodeConfig.from_mapping(ed_raw(node_id, key, peers))
    return AuthManager(config.id, config.auth, {p.id: p for p in config.peers})


# -- unit tests of AuthManager ------------------------------------------------------------------

class TestTokenRoundTrip:
    """A token minted by a node for its peer verifies on that peer and carries exactly the required claims."""

    def test_create_then_verify(self, node_a: AuthManager, node_b: AuthManager) -> None:
        token = node_b.create_token("node-a")
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
        assert header["alg"] == "HS512" and header["kid"] == KID
        assert set(payload) == set(REQUIRED)
        verified = node_a.verify_token(token, expected_issuer="node-b")
        assert (verified.issuer, verified.audience, verified.jti) == ("node-b", "node-a", payload["jti"])
        assert verified.expires_at - verified.issued_at == 60
        assert abs(verified.issued_at - time.time()) < 5

    def test_token_ttl_is_configurable(self, node_a: AuthManager) -> None:
        short = manager("node-b", ["node-a"], auth={"secret": SECRET, "token_ttl": "15s"})
        verified = node_a.verify_token(short.create_token("node-a"))
        assert verified.expires_at - verified.issued_at == 15

    def test_every_token_has_a_fresh_jti(self, node_b: AuthManager) -> None:
        jtis = {jwt.decode(node_b.create_token("node-a"), options={"verify_signature": False})["jti"]
                for _ in range(20)}
        assert len(jtis) == 20

    def test_token_is_not_valid_for_another_audience(self, node_b: AuthManager) -> None:
        node_c = manager("node-c", ["node-b"])
        refused(node_c, node_b.create_token("node-a"), AuthReason.WRONG_AUDIENCE)


class TestRefusalReasons:
    """Every kind of bad token is refused with its own reason, and the error never repeats the token."""

    @pytest.mark.parametrize("token", [None, ""])
    def test_missing(self, node_a: AuthManager, token: str | None) -> None:
        refused(node_a, token, AuthReason.MISSING)

    @pytest.mark.parametrize("token", [
        "definitely-not-a-jwt",
        "a.b",
        "a.b.c.d",
        "not.a.jwt",
        "....",
        b64(b"{not json") + "." + b64(b"{}") + ".",
        b64(b'{"alg": "HS512"}') + "." + b64(b"[1, 2, 3]") + "." + b64(b"sig"),
        b64(b'{"alg": "HS512"}') + "." + "A" * MAX_TOKEN_LENGTH + ".sig",
    ], ids=["word", "two-parts", "four-parts", "bad-base64", "dots", "header-not-json", "payload-not-object",
            "too-long"])
    def test_garbage(self, node_a: AuthManager, token: str) -> None:
        refused(node_a, token, AuthReason.GARBAGE)

    def test_alg_none_from_pyjwt(self, node_a: AuthManager) -> None:
        token = jwt.encode(claims(), None, algorithm="none", headers={"kid": KID})
        assert token.endswith(".")
        refused(node_a, token, AuthReason.ALG_NONE)

    @pytest.mark.parametrize("header", [
        {"alg": "none", "typ": "JWT"},
        {"alg": "None"},
        {"alg": "NONE", "kid": KID},
        {"typ": "JWT"},
        {"alg": None},
    ], ids=["none", "None", "NONE", "no-alg", "null-alg"])
    def test_alg_none_hand_built(self, node_a: AuthManager, header: dict[str, Any]) -> None:
        refused(node_a, hand_token(header, claims()), AuthReason.ALG_NONE)

    def test_alg_none_even_with_a_valid_hmac(self, node_a: AuthManager) -> None:
        token = hand_token({"alg": "none", "kid": KID}, claims(), SECRET.encode())
        refused(node_a, token, AuthReason.ALG_NONE)

    @pytest.mark.parametrize("algorithm", ["HS256", "HS384"])
    def test_wrong_hmac_algorithm_with_the_right_secret(self, node_a: AuthManager, algorithm: str) -> None:
        refused(node_a, sign(claims(), algorithm=algorithm), AuthReason.WRONG_ALGORITHM)

    def test_eddsa_token_to_an_hs512_node(self, node_a: AuthManager) -> None:
        key = Ed25519PrivateKey.generate()
        token = sign(claims(), key, algorithm="EdDSA", kid=public_key_kid(key.public_key()))
        refused(node_a, token, AuthReason.WRONG_ALGORITHM)

    def test_unknown_kid(self, node_a: AuthManager) -> None:
        refused(node_a, sign(claims(), kid="hs-0000000000000000"), AuthReason.UNKNOWN_KID)
        refused(node_a, sign(claims(), OTHER, kid=Secret(OTHER).kid), AuthReason.UNKNOWN_KID)

    def test_non_string_kid_does_not_parse(self, node_a: AuthManager) -> None:
        # PyJWT itself rejects a non-string kid header while parsing.
        refused(node_a, hand_token({"alg": "HS512", "kid": 7}, claims(), SECRET.encode()), AuthReason.GARBAGE)

    def test_bad_signature_under_the_right_kid(self, node_a: AuthManager) -> None:
        refused(node_a, sign(claims(), OTHER, kid=KID), AuthReason.BAD_SIGNATURE)

    def test_bad_signature_without_kid(self, node_a: AuthManager) -> None:
        refused(node_a, sign(claims(), OTHER, kid=None), AuthReason.BAD_SIGNATURE)

    def test_tampered_payload(self, node_a: AuthManager, node_b: AuthManager) -> None:
        header, _, signature = node_b.create_token("node-a").split(".")
        forged = f"{header}.{b64(json.dumps(claims(jti='forged-' + 'x' * 10)).encode())}.{signature}"
        refused(node_a, forged, AuthReason.BAD_SIGNATURE)

    def test_expired(self, node_a: AuthManager, node_b: AuthManager) -> None:
        refused(node_a, sign(claims(iat_offset=-90, ttl=60)), AuthReason.EXPIRED)
        refused(node_a, node_b.create_token("node-a", now=time.time() - 120), AuthReason.EXPIRED)

    def test_issued_in_the_future(self, node_a: AuthManager) -> None:
        refused(node_a, sign(claims(iat_offset=600)), AuthReason.ISSUED_IN_FUTURE)

    def test_not_before_in_the_future(self, node_a: AuthManager) -> None:
        refused(node_a, sign(claims(nbf=int(time.time()) + 600)), AuthReason.ISSUED_IN_FUTURE)

    def test_too_long_lived(self, node_a: AuthManager) -> None:
        refused(node_a, sign(claims(ttl=2 * 3600)), AuthReason.TOO_LONG_LIVED)

    def test_absurdly_large_exp_is_refused(self, node_a: AuthManager) -> None:
        with pytest.raises(AuthError) as caught:
            node_a.verify_token(sign(claims(exp=10**400)))
        assert caught.value.reason in {AuthReason.TOO_LONG_LIVED.value, AuthReason.GARBAGE.value}

    def test_absurdly_old_iat_raises_nothing_but_auth_error(self, node_a: AuthManager) -> None:
        try:
            verified = node_a.verify_token(sign(claims(iat=-(10**400))))
        except AuthError as exc:
            assert exc.reason == AuthReason.GARBAGE.value
        else:
            assert verified.issuer == "node-b"

    def test_token_ttl_peers_would_refuse_is_a_config_error(self) -> None:
        with pytest.raises(fednode.ConfigError, match=r"auth.token_ttl: must be at most 3600s, got 7200s"):
            manager("node-b", ["node-a"], auth={"secret": SECRET, "token_ttl": "2h"})

    def test_an_hour_is_not_too_long(self, node_a: AuthManager) -> None:
        assert node_a.verify_token(sign(claims(ttl=3600))).issuer == "node-b"

    @pytest.mark.parametrize("aud", ["node-c", "node-b", ["node-c", "node-d"], ""],
                             ids=["other-node", "the-issuer", "list-without-us", "empty"])
    def test_wrong_audience(self, node_a: AuthManager, aud: Any) -> None:
        reason = AuthReason.MISSING_CLAIM if aud == "" else AuthReason.WRONG_AUDIENCE
        refused(node_a, sign(claims(aud=aud)), reason)

    @pytest.mark.parametrize("iss", ["node-z", "node-a", 42, ["node-b"]],
                             ids=["stranger", "ourselves", "number", "list"])
    def test_unknown_issuer(self, node_a: AuthManager, iss: Any) -> None:
        token = hand_token({"alg": "HS512", "kid": KID}, claims(iss=iss), SECRET.encode())
        refused(node_a, token, AuthReason.UNKNOWN_ISSUER)

    def test_dropped_peer_becomes_an_unknown_issuer(self, node_a: AuthManager, node_b: AuthManager) -> None:
        node_a.drop_peer("node-b")
        refused(node_a, node_b.create_token("node-a"), AuthReason.UNKNOWN_ISSUER)

    def test_wrong_issuer(self) -> None:
        node_a = manager("node-a", ["node-b", "node-c"])
        node_c = manager("node-c", ["node-a"])
        refused(node_a, node_c.create_token("node-a"), AuthReason.WRONG_ISSUER, expected_issuer="node-b")
        assert node_a.verify_token(node_c.create_token("node-a"), expected_issuer="node-c").issuer == "node-c"

    @pytest.mark.parametrize("claim", REQUIRED)
    def test_missing_claim(self, node_a: AuthManager, claim: str) -> None:
        error = refused(node_a, sign(claims(drop=[claim])), AuthReason.MISSING_CLAIM)
        assert repr(claim) in error.detail

    @pytest.mark.parametrize("claim", REQUIRED)
    def test_null_claim_counts_as_missing(self, node_a: AuthManager, claim: str) -> None:
        token = hand_token({"alg": "HS512", "kid": KID}, claims(**{claim: None}), SECRET.encode())
        refused(node_a, token, AuthReason.MISSING_CLAIM)

    @pytest.mark.parametrize("jti", ["", "short", "x" * 129], ids=["empty", "short", "long"])
    def test_unusable_jti(self, node_a: AuthManager, jti: str) -> None:
        refused(node_a, sign(claims(jti=jti)), AuthReason.MISSING_CLAIM)

    def test_replay(self, node_a: AuthManager, node_b: AuthManager) -> None:
        token = node_b.create_token("node-a")
        node_a.verify_token(token)
        refused(node_a, token, AuthReason.REPLAY)
        # A different token that reuses the jti is a replay too.
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        refused(node_a, sign(claims(jti=jti)), AuthReason.REPLAY)


class TestClockSkew:
    """The configured leeway absorbs small clock differences in exp and iat, and no more."""

    def test_recently_expired_token_is_accepted_within_leeway(self, node_a: AuthManager) -> None:
        assert node_a.config.leeway == 5
        assert node_a.verify_token(sign(claims(iat_offset=-62, ttl=60))).issuer == "node-b"

    def test_expired_beyond_leeway_is_refused(self, node_a: AuthManager) -> None:
        refused(node_a, sign(claims(iat_offset=-70, ttl=60)), AuthReason.EXPIRED)

    def test_slightly_future_iat_is_accepted_within_leeway(self, node_a: AuthManager) -> None:
        assert node_a.verify_token(sign(claims(iat_offset=2))).issuer == "node-b"

    def test_no_leeway(self) -> None:
        strict = manager("node-a", ["node-b"], auth={"secret": SECRET, "leeway": "0s"})
        assert strict.config.leeway == 0
        refused(strict, sign(claims(iat_offset=-62, ttl=60)), AuthReason.EXPIRED)
        refused(strict, sign(claims(iat_offset=3)), AuthReason.ISSUED_IN_FUTURE)


class TestKeyRotation:
    """The kid picks the verification key, so old and new secrets are accepted side by side during a rotation."""

    def test_accepts_old_and_new_and_signs_with_new(self) -> None:
        rotating = manager("node-a", ["node-b"], auth={"secrets": [NEW, OLD]})
        old_peer = manager("node-b", ["node-a"], auth={"secret": OLD})
        new_peer = manager("node-b", ["node-a"], auth={"secret": NEW})
        assert rotating.verify_token(old_peer.create_token("node-a")).issuer == "node-b"
        assert rotating.verify_token(new_peer.create_token("node-a")).issuer == "node-b"
        assert jwt.get_unverified_header(old_peer.create_token("node-a"))["kid"] == Secret(OLD).kid
        minted = rotating.create_token("node-b")
        assert jwt.get_unverified_header(minted)["kid"] == Secret(NEW).kid
        assert new_peer.verify_token(minted).issuer == "node-a"
        # A peer that has not learnt the new secret yet cannot verify it: rotate verifiers first.
        refused(old_peer, rotating.create_token("node-b"), AuthReason.UNKNOWN_KID)

    def test_token_without_kid_is_tried_against_every_key(self) -> None:
        rotating = manager("node-a", ["node-b"], auth={"secrets": [NEW, OLD]})
        assert rotating.verify_token(sign(claims(), OLD, kid=None)).issuer == "node-b"
        assert rotating.verify_token(sign(claims(), NEW, kid=None)).issuer == "node-b"
        refused(rotating, sign(claims(), OTHER, kid=None), AuthReason.BAD_SIGNATURE)

    def test_retired_secret_is_refused(self) -> None:
        rotated = manager("node-a", ["node-b"], auth={"secret": NEW})
        refused(rotated, sign(claims(), OLD, kid=Secret(OLD).kid), AuthReason.UNKNOWN_KID)

    def test_per_peer_secret_overrides_auth_secret(self) -> None:
        node_a = manager("node-a", [{"id": "node-b", "secret": OTHER}, "node-c"])
        assert node_a.verify_token(sign(claims(), OTHER, kid=Secret(OTHER).kid)).issuer == "node-b"
        refused(node_a, sign(claims()), AuthReason.UNKNOWN_KID)  # [auth] secret is not valid for node-b
        assert node_a.verify_token(sign(claims(iss="node-c"))).issuer == "node-c"
        assert jwt.get_unverified_header(node_a.create_token("node-b"))["kid"] == Secret(OTHER).kid
        assert jwt.get_unverified_header(node_a.create_token("node-c"))["kid"] == KID

    def test_per_peer_secrets_rotate_too(self) -> None:
        node_a = manager("node-a", [{"id": "node-b", "secrets": [NEW, OLD]}])
        assert node_a.verify_token(sign(claims(), OLD, kid=Secret(OLD).kid)).issuer == "node-b"
        assert jwt.get_unverified_header(node_a.create_token("node-b"))["kid"] == Secret(NEW).kid


class TestEdDSA:
    """EdDSA nodes sign with their private key and accept only tokens that verify under a peer's public key."""

    def test_round_trip_with_key_files_and_pem_text(self, keys: dict[str, KeyPair]) -> None:
        node_a = ed_manager("node-a", keys["node-a"], {"node-b": str(keys["node-b"].public_path)})
        node_b = ed_manager("node-b", keys["node-b"], {"node-a": keys["node-a"].public_pem})
        assert node_a.config.algorithm == "EdDSA"
        token = node_a.create_token("node-b")
        assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": keys["node-a"].kid, "typ": "JWT"}
        assert node_b.verify_token(token, expected_issuer="node-a").issuer == "node-a"
        assert node_a.verify_token(node_b.create_token("node-a"), expected_issuer="node-b").issuer == "node-b"

    def test_token_signed_by_another_key(self, keys: dict[str, KeyPair]) -> None:
        node_b = ed_manager("node-b", keys["node-b"], {"node-a": str(keys["node-a"].public_path)})
        forger = keys["mallory"].private
        refused(node_b, sign(claims("node-a", "node-b"), forger, algorithm="EdDSA", kid=keys["mallory"].kid),
                AuthReason.UNKNOWN_KID)
        refused(node_b, sign(claims("node-a", "node-b"), forger, algorithm="EdDSA", kid=keys["node-a"].kid),
                AuthReason.BAD_SIGNATURE)
        refused(node_b, sign(claims("node-a", "node-b"), forger, algorithm="EdDSA", kid=None),
                AuthReason.BAD_SIGNATURE)

    def test_mallory_node_cannot_speak_for_node_a(self, keys: dict[str, KeyPair]) -> None:
        node_b = ed_manager("node-b", keys["node-b"], {"node-a": str(keys["node-a"].public_path)})
        mallory = ed_manager("node-a", keys["mallory"], {"node-b": str(keys["node-b"].public_path)})
        refused(node_b, mallory.create_token("node-b"), AuthReason.UNKNOWN_KID)

    def test_public_key_used_as_hmac_secret_is_refused(self, keys: dict[str, KeyPair]) -> None:
        node_b = ed_manager("node-b", keys["node-b"], {"node-a": str(keys["node-a"].public_path)})
        confused = hand_token({"alg": "HS512", "kid": keys["node-a"].kid}, claims("node-a", "node-b"),
                              keys["node-a"].public_pem.encode())
        refused(node_b, confused, AuthReason.WRONG_ALGORITHM)
        refused(node_b, sign(claims("node-a", "node-b")), AuthReason.WRONG_ALGORITHM)

    def test_peer_with_several_public_keys_rotates(self, keys: dict[str, KeyPair]) -> None:
        node_b = ed_manager("node-b", keys["node-b"],
                            {"node-a": [str(keys["node-a"].public_path), keys["node-c"].public_pem]})
        for name in ("node-a", "node-c"):  # node-a's old and new key
            token = sign(claims("node-a", "node-b"), keys[name].private, algorithm="EdDSA", kid=keys[name].kid)
            assert node_b.verify_token(token).issuer == "node-a"
        token = sign(claims("node-a", "node-b"), keys["node-c"].private, algorithm="EdDSA", kid=None)
        assert node_b.verify_token(token).issuer == "node-a"

    def test_missing_claims_and_expiry_apply_to_eddsa(self, keys: dict[str, KeyPair]) -> None:
        node_b = ed_manager("node-b", keys["node-b"], {"node-a": str(keys["node-a"].public_path)})
        key, kid = keys["node-a"].private, keys["node-a"].kid
        refused(node_b, sign(claims("node-a", "node-b", drop=["jti"]), key, algorithm="EdDSA", kid=kid),
                AuthReason.MISSING_CLAIM)
        refused(node_b, sign(claims("node-a", "node-b", iat_offset=-100), key, algorithm="EdDSA", kid=kid),
                AuthReason.EXPIRED)


class TestReplayCache:
    """The replay cache refuses a token id it has seen until that token expires, then forgets it."""

    def test_entries_expire(self) -> None:
        now = [1000.0]
        cache = ReplayCache(clock=lambda: now[0])
        assert cache.check_and_remember("node-b", "jti-1", forget_at=1100.0)
        assert not cache.check_and_remember("node-b", "jti-1", forget_at=1100.0)
        now[0] = 1099.0
        assert not cache.check_and_remember("node-b", "jti-1", forget_at=1200.0)
        assert cache.check_and_remember("node-b", "jti-2", forget_at=1150.0)
        assert len(cache) == 2
        now[0] = 1100.5
        assert cache.check_and_remember("node-b", "jti-1", forget_at=1300.0)
        assert len(cache) == 2  # jti-1 was forgotten, then remembered again
        now[0] = 1160.0
        assert cache.check_and_remember("node-b", "jti-3", forget_at=1400.0)
        assert len(cache) == 2  # jti-2 pruned

    def test_same_jti_from_different_issuers_is_no_replay(self) -> None:
        cache = ReplayCache(clock=lambda: 0.0)
        assert cache.check_and_remember("node-b", "jti-1", forget_at=10.0)
        assert cache.check_and_remember("node-c", "jti-1", forget_at=10.0)
        assert not cache.check_and_remember("node-c", "jti-1", forget_at=10.0)

    def test_verify_forgets_expired_token_ids(self, node_a: AuthManager) -> None:
        now = [time.time()]
        node_a.replay = ReplayCache(clock=lambda: now[0])
        jti = "jti-" + uuid.uuid4().hex
        node_a.verify_token(sign(claims(jti=jti, ttl=60)))
        refused(node_a, sign(claims(jti=jti, ttl=60)), AuthReason.REPLAY)
        now[0] += 60 + node_a.config.leeway + 1  # past the first token's expiry (and leeway)
        node_a.verify_token(sign(claims(jti=jti, ttl=60)))
        assert len(node_a.replay) == 1

    def test_refused_tokens_are_not_remembered(self, node_b: AuthManager) -> None:
        node_a = manager("node-a", [])
        token = node_b.create_token("node-a")
        refused(node_a, token, AuthReason.UNKNOWN_ISSUER)
        assert len(node_a.replay) == 0
        node_a.set_peer(fednode.PeerConfig(id="node-b"))
        assert node_a.verify_token(token).issuer == "node-b"
        assert len(node_a.replay) == 1


# -- over loopback WebSockets -------------------------------------------------------------------

@attrs.define
class Handshake:
    """The outcome of a raw client handshake: a rejection, another failure, or the response headers of a 101."""

    rejected: trio_websocket.ConnectionRejected | None = None
    failed: trio_websocket.HandshakeError | None = None
    headers: list[tuple[bytes, bytes]] = attrs.field(factory=list)


async def raw_handshake(url: str, token: str | None = None, headers: Sequence[tuple[bytes, bytes]] = (),
                        *, connect_timeout: float = 30.0) -> Handshake:
    """Open (then close) a WebSocket to ``url`` presenting ``token`` as a bearer token."""
    extra = list(headers)
    if token is not None:
        extra.append((b"authorization", b"Bearer " + token.encode()))
    try:
        async with trio_websocket.open_websocket_url(url, extra_headers=extra, connect_timeout=connect_timeout) as ws:
            return Handshake(headers=list(ws.handshake_headers))
    except trio_websocket.ConnectionRejected as exc:
        return Handshake(rejected=exc)
    except trio_websocket.HandshakeError as exc:
        return Handshake(failed=exc)


def record_tokens(node: fednode.Node) -> list[str]:
    """Record every token ``node`` mints from now on (to check that none of them is ever logged)."""
    minted: list[str] = []
    create = node.auth.create_token

    def recording(audience: str, *, now: float | None = None) -> str:
        minted.append(create(audience, now=now))
        return minted[-1]

    node.auth.create_token = recording  # type: ignore[method-assign]
    return minted


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def assert_not_logged(logs: list[dict[str, Any]], *secrets: str) -> None:
    for entry in logs:
        text = repr(entry)
        for secret in secrets:
            assert secret not in text, f"{secret[:12]}... leaked into {entry['event']}"


@pytest.fixture
def capture() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


#: (reason, HTTP status, token factory given node-b's AuthManager); None = no Authorization header.
BAD_TOKENS: list[tuple[AuthReason, int, Callable[[AuthManager], str | None]]] = [
    (AuthReason.MISSING, 401, lambda b: None),
    (AuthReason.GARBAGE, 401, lambda b: "definitely-not-a-jwt"),
    (AuthReason.ALG_NONE, 401, lambda b: jwt.encode(claims(), None, algorithm="none")),
    (AuthReason.WRONG_ALGORITHM, 401, lambda b: sign(claims(), algorithm="HS256")),
    (AuthReason.UNKNOWN_KID, 401, lambda b: sign(claims(), OTHER, kid=Secret(OTHER).kid)),
    (AuthReason.BAD_SIGNATURE, 401, lambda b: sign(claims(), OTHER, kid=KID)),
    (AuthReason.EXPIRED, 401, lambda b: b.create_token("node-a", now=time.time() - 300)),
    (AuthReason.ISSUED_IN_FUTURE, 401, lambda b: sign(claims(iat_offset=600))),
    (AuthReason.TOO_LONG_LIVED, 401, lambda b: sign(claims(ttl=24 * 3600))),
    (AuthReason.WRONG_AUDIENCE, 403, lambda b: b.create_token("node-c")),
    (AuthReason.UNKNOWN_ISSUER, 403, lambda b: sign(claims(iss="node-z"))),
    (AuthReason.MISSING_CLAIM, 401, lambda b: sign(claims(drop=["jti"]))),
]


class TestListenerRefusals:
    """The listener refuses a bad token inside the HTTP handshake (401/403) and logs one warning without it."""

    @pytest.mark.parametrize(("reason", "status", "make_token"), BAD_TOKENS, ids=[r.value for r, _, _ in BAD_TOKENS])
    async def test_bad_token_is_rejected(self, capture: list[dict[str, Any]], reason: AuthReason, status: int,
                                         make_token: Callable[[AuthManager], str | None]) -> None:
        node_b = manager("node-b", ["node-a", "node-c"])
        token = make_token(node_b)
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a", peers=[{"id": "node-b"}])) as node:
                outcome = await raw_handshake(node.control_url, token)
                assert outcome.rejected is not None, "the handshake was accepted"
                assert outcome.rejected.status_code == status
                assert outcome.rejected.body == reason.value.encode()
                assert node.refused == {reason.value: 1}
                assert node.connected_peers() == []
        warnings = events(capture, "auth.refused")
        assert len(warnings) == 1, warnings
        assert warnings[0]["log_level"] == "warning"
        assert warnings[0]["reason"] == reason.value
        assert warnings[0]["remote"].startswith("127.0.0.1:")
        assert events(capture, "link.up") == []
        if token:
            assert_not_logged(capture, token, token.rsplit(".", 1)[-1] or token)

    async def test_replayed_token_is_rejected(self, capture: list[dict[str, Any]], node_b: AuthManager) -> None:
        token = node_b.create_token("node-a")
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a", peers=[{"id": "node-b"}])) as node:
                first = await raw_handshake(node.control_url, token)
                assert first.rejected is None
                second = await raw_handshake(node.control_url, token)
                assert second.rejected is not None
                assert (second.rejected.status_code, second.rejected.body) == (401, b"replay")
                assert node.refused == {"replay": 1}
        assert [e["reason"] for e in events(capture, "auth.refused")] == ["replay"]
        assert_not_logged(capture, token)

    async def test_token_in_the_url_is_not_accepted(self, capture: list[dict[str, Any]],
                                                    node_b: AuthManager) -> None:
        token = node_b.create_token("node-a")
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a", peers=[{"id": "node-b"}])) as node:
                for query in ("token", "access_token", "jwt"):
                    outcome = await raw_handshake(f"{node.control_url}/?{query}={token}")
                    assert outcome.rejected is not None
                    assert (outcome.rejected.status_code, outcome.rejected.body) == (401, b"missing")
                assert node.refused == {"missing": 3}
        assert_not_logged(capture, token)

    @pytest.mark.parametrize("headers", [
        [(b"authorization", b"Basic " + base64.b64encode(b"node-b:" + SECRET.encode()))],
        [(b"authorization", b"Bearer")],
        [(b"authorization", b"Bearer one.two.three"), (b"authorization", b"Bearer four.five.six")],
    ], ids=["basic-scheme", "empty-bearer", "two-headers"])
    async def test_malformed_authorization_header(self, capture: list[dict[str, Any]],
                                                  headers: list[tuple[bytes, bytes]]) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a", peers=[{"id": "node-b"}])) as node:
                outcome = await raw_handshake(node.control_url, headers=headers)
                assert outcome.rejected is not None
                assert (outcome.rejected.status_code, outcome.rejected.body) == (401, b"missing")
        assert [e["reason"] for e in events(capture, "auth.refused")] == ["missing"]
        assert_not_logged(capture, SECRET)

    async def test_refusals_are_counted_per_reason(self, node_b: AuthManager) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a", peers=[{"id": "node-b"}])) as node:
                for token in ("garbage", "more-garbage", sign(claims(iat_offset=-300)), None):
                    assert (await raw_handshake(node.control_url, token)).rejected is not None
                assert node.refused == {"garbage": 2, "expired": 1, "missing": 1}


    async def test_removed_peer_is_forbidden(self, node_b: AuthManager) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a", peers=[{"id": "node-b"}])) as node:
                await node.remove_peer("node-b")
                outcome = await raw_handshake(node.control_url, node_b.create_token("node-a"))
                assert outcome.rejected is not None
                assert (outcome.rejected.status_code, outcome.rejected.body) == (403, b"unknown_issuer")

    async def test_absurdly_large_exp_gets_a_401(self, capture: list[dict[str, Any]]) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a", peers=[{"id": "node-b"}])) as node:
                outcome = await raw_handshake(node.control_url, sign(claims(exp=10**400)), connect_timeout=30)
                refused_count = sum(node.refused.values())
        assert events(capture, "listener.connection_failed") == []
        assert outcome.rejected is not None and outcome.rejected.status_code == 401
        assert refused_count == 1


class TestListenerAccepts:
    """A good token gets a 101 whose X-Fednode-Token proves the listener's identity back to the dialer."""

    async def test_good_token_gets_proof_of_identity(self, capture: list[dict[str, Any]],
                                                     node_b: AuthManager) -> None:
        token = node_b.create_token("node-a")
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a", peers=[{"id": "node-b"}])) as node, \
                    trio_websocket.open_websocket_url(
                        node.control_url, extra_headers=[(b"authorization", b"Bearer " + token.encode())]) as ws:
                proofs = [value for key, value in ws.handshake_headers if key.lower() == TOKEN_HEADER]
                assert len(proofs) == 1
                proof = node_b.verify_token(proofs[0].decode(), expected_issuer="node-a")
                assert (proof.issuer, proof.audience) == ("node-a", "node-b")
                # Finish the handshake as node-b would: the link comes up, inbound on node-a.
                await ws.send_message(wire.encode(wire.Hello(node="node-b", software="test")))
                hello = wire.decode(await ws.get_message())
                assert isinstance(hello, wire.Hello) and hello.node == "node-a"
                await node.wait_connected("node-b", timeout=30)
                assert node.peer_states()["node-b"].direction == "inbound"
                assert node.refused == {}
        assert events(capture, "auth.refused") == []
        assert_not_logged(capture, token, proofs[0].decode())


class TestMutualAuthentication:
    """Both ends of a link prove who they are; if either proof fails, no link comes up on either side."""

    async def test_dialer_with_the_wrong_secret_is_refused(self, capture: list[dict[str, Any]]) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-b", peers=[{"id": "node-a", "secret": OTHER}])) as b, \
                    fednode.open_node(node_config("node-a")) as a:
                minted = record_tokens(a)
                with pytest.raises(fednode.PeerConnectError):
                    await a.register_peer(peer(b), keep_retrying=False)
                assert minted
                assert b.refused["unknown_kid"] >= 1
                assert a.connected_peers() == [] and b.connected_peers() == []
                assert not a.has_peer("node-b")
                assert b.peer_states()["node-a"].state is fednode.PeerState.WAITING
        assert events(capture, "link.up") == []
        assert_not_logged(capture, *minted)

    @pytest.mark.parametrize("scheme", ["eddsa", "hs512"])
    async def test_listener_with_a_bad_proof_is_refused_by_the_dialer(
            self, capture: list[dict[str, Any]], keys: dict[str, KeyPair], scheme: str) -> None:
        if scheme == "eddsa":
            # node-b knows node-a's real key; node-a holds a wrong public key for node-b.
            config_b = fednode.NodeConfig.from_mapping(
                ed_raw("node-b", keys["node-b"], {"node-a": str(keys["node-a"].public_path)}))
            config_a = fednode.NodeConfig.from_mapping(ed_raw("node-a", keys["node-a"], {}))
            wrong_key = keys["mallory"].private.public_key()

            def peer_b(b: fednode.Node) -> fednode.PeerConfig:
                return fednode.PeerConfig(id="node-b", control=b.control_url, public_keys=(wrong_key,))
        else:
            # node-b accepts node-a's secret but signs its reply with a secret node-a does not know.
            config_b = node_config("node-b", peers=[{"id": "node-a", "secrets": [OTHER, SECRET]}])
            config_a = node_config("node-a")

            def peer_b(b: fednode.Node) -> fednode.PeerConfig:
                return fednode.PeerConfig(id="node-b", control=b.control_url)

        with trio.fail_after(60):
            async with fednode.open_node(config_b) as b, fednode.open_node(config_a) as a:
                minted_a, minted_b = record_tokens(a), record_tokens(b)
                with pytest.raises(fednode.PeerConnectError) as caught:
                    await a.register_peer(peer_b(b), keep_retrying=False)
                assert "proof of identity refused" in str(caught.value)
                assert a.refused["unknown_kid"] >= 1
                assert b.refused == {}  # node-a's own token was fine
                # node-b sees the dialer close the connection before any link is up.
                while not events(capture, "handshake.failed"):
                    await trio.sleep(0.01)
                assert a.connected_peers() == [] and b.connected_peers() == []
        assert events(capture, "link.up") == []
        assert all(e["remote"].startswith("127.0.0.1:") for e in events(capture, "handshake.failed"))
        assert minted_a and minted_b  # node-a dialed with a token and node-b answered with its proof
        assert_not_logged(capture, *minted_a, *minted_b)

    async def test_dialing_the_wrong_node_is_forbidden(self) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-c", peers=[{"id": "node-a"}])) as c, \
                    fednode.open_node(node_config("node-a")) as a:
                impostor = fednode.PeerConfig(id="node-b", control=c.control_url)
                with pytest.raises(fednode.PeerConnectError):
                    await a.register_peer(impostor, keep_retrying=False)
                assert c.refused == {"wrong_audience": 1}
                assert a.connected_peers() == [] and c.connected_peers() == []

    @pytest.mark.parametrize(("listener_secret", "target_id", "expected"), [
        # node-c holds another secret for node-a
        (OTHER, "node-c", f"peer 'node-c' does not know this node's key (kid {KID}): the shared secret differs"
                          " (refused with HTTP 401 unknown_kid)"),
        # node-a dials node-c believing it is node-b
        (SECRET, "node-b", "the node at {url} is not 'node-b' (check the control URL of peer 'node-b')"
                           " (refused with HTTP 403 wrong_audience)"),
    ], ids=["wrong-secret", "wrong-node"])
    async def test_dialer_reports_the_status_and_reason(self, capture: list[dict[str, Any]], listener_secret: str,
                                                        target_id: str, expected: str) -> None:
        listener_peers = [{"id": "node-a", "secret": listener_secret}]
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-c", peers=listener_peers)) as c, \
                    fednode.open_node(node_config("node-a")) as a:
                target = fednode.PeerConfig(id=target_id, control=c.control_url)
                with pytest.raises(fednode.PeerConnectError) as caught:
                    await a.register_peer(target, keep_retrying=False)
                assert c.refused  # the listener did refuse the dial
        assert events(capture, "peer.unexpected_error") == []
        assert str(caught.value).endswith(": " + expected.format(url=c.control_url))

    async def test_a_wrong_secret_is_named_in_words_everywhere(self, capture: list[dict[str, Any]]) -> None:
        """Two nodes with different secrets: the dialer's error, last_error, log and status all say what is wrong."""
        with trio.fail_after(20):
            async with fednode.open_node(node_config("node-b", peers=[{"id": "node-a"}],
                                                     auth={"secret": OTHER})) as b, \
                    fednode.open_node(node_config("node-a")) as a:
                minted = record_tokens(a)
                with pytest.raises(fednode.PeerConnectError) as caught:
                    await a.register_peer(peer(b))  # keeps retrying
                status = format_status(a.status())
                last_error = a.peer_states()["node-b"].last_error
        words = (f"peer 'node-b' does not know this node's key (kid {KID}): the shared secret differs"
                 " (refused with HTTP 401 unknown_kid)")
        assert str(caught.value) == f"cannot connect to peer 'node-b' at {b.control_url}: {words}"
        assert last_error == words
        assert words in status  # what `fednode status` prints for node-a
        assert words in [e["error"] for e in events(capture, "peer.connect_failed")]
        for text in (str(caught.value), status, json.dumps(a.status())):
            assert SECRET not in text and OTHER not in text
            assert not any(token in text for token in minted)
        assert_not_logged(capture, SECRET, OTHER, *minted)

    @pytest.mark.parametrize("reason", list(AuthReason))
    def test_every_refusal_reason_is_put_in_words(self, reason: AuthReason, keys: dict[str, KeyPair]) -> None:
        for auth in (manager("node-a", ["node-b"]), ed_manager("node-a", keys["node-a"], {})):
            target = fednode.PeerConfig(id="node-b", control="ws://127.0.0.1:7002")
            text = describe_rejection(trio_websocket.ConnectionRejected(401, (), reason.value.encode()),
                                      auth, target)
            assert text.endswith(f" (refused with HTTP 401 {reason.value})")
            assert not text.startswith("refused by peer")
            assert "'node-b'" in text or "ws://127.0.0.1:7002" in text
        kid = auth.signing_kid("node-b")
        assert kid == keys["node-a"].kid
        if reason is AuthReason.UNKNOWN_KID:
            assert text.startswith(f"peer 'node-b' does not know this node's public key (kid {kid})")
        if reason in (AuthReason.EXPIRED, AuthReason.ISSUED_IN_FUTURE):
            assert "clocks differ" in text

    async def test_a_refusal_nested_in_groups_is_still_put_in_words(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def dial(handshake: _handshake.Handshake, target: fednode.PeerConfig, nursery: trio.Nursery) -> Any:
            refusal = trio_websocket.ConnectionRejected(401, (), b"unknown_kid")
            raise ExceptionGroup("reader", [ExceptionGroup("inner", [refusal])])

        monkeypatch.setattr(_supervisor, "dial", dial)
        with trio.fail_after(10):
            async with fednode.open_node(node_config("node-a")) as a:
                with pytest.raises(fednode.PeerConnectError, match="does not know this node's key"):
                    await a.register_peer(fednode.PeerConfig(id="node-b", control="ws://127.0.0.1:9"),
                                          keep_retrying=False)

    def test_a_refusal_body_fednode_does_not_send_is_shown_shortened(self) -> None:
        auth = manager("node-a", ["node-b"])
        target = fednode.PeerConfig(id="node-b", control="ws://127.0.0.1:7002")
        hostile = trio_websocket.ConnectionRejected(401, (), b"\x1b[31mnot\nmine\x00" * 100)
        text = describe_rejection(hostile, auth, target)
        assert text.startswith("refused by peer: HTTP 401 [31mnotmine[31mnotmine")
        assert len(text) <= len("refused by peer: HTTP 401 ") + 100 and text.isprintable()
        assert describe_rejection(trio_websocket.ConnectionRejected(503, (), b"node is shutting down"),
                                  auth, target) == (
            "peer 'node-b' is shutting down (refused with HTTP 503 node is shutting down)")

    async def test_eddsa_nodes_link_up(self, keys: dict[str, KeyPair]) -> None:
        config_a = fednode.NodeConfig.from_mapping(
            ed_raw("node-a", keys["node-a"], {"node-b": str(keys["node-b"].public_path)}))
        config_b = fednode.NodeConfig.from_mapping(
            ed_raw("node-b", keys["node-b"], {"node-a": keys["node-a"].public_pem}))
        with trio.fail_after(60):
            async with fednode.open_node(config_b) as b, fednode.open_node(config_a) as a:
                await a.register_peer(fednode.PeerConfig(
                    id="node-b", control=b.control_url, public_keys=config_a.peers[0].public_keys))
                await b.wait_connected("node-a", timeout=30)
                assert await a.request("node-b", "echo", "hi") == "hi"
                assert a.refused == {} and b.refused == {}


class TestRotationOverTheWire:
    """Links come up throughout a rotation in which every node learns the new secret before signing with it."""

    @pytest.mark.parametrize(("secrets_a", "secrets_b"), [
        ([OLD], [OLD, NEW]),  # node-b has learnt NEW
        ([OLD, NEW], [NEW, OLD]),  # node-b signs with NEW, node-a still with OLD
        ([NEW, OLD], [NEW]),  # node-b has dropped OLD
    ], ids=["learn", "switch", "retire"])
    async def test_link_comes_up_mid_rotation(self, secrets_a: list[str], secrets_b: list[str]) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-b", peers=[{"id": "node-a", "secrets": secrets_b}])) as b, \
                    fednode.open_node(node_config("node-a", peers=[{"id": "node-b", "control": b.control_url,
                                                                     "secrets": secrets_a}])) as a:
                await a.wait_connected("node-b", timeout=30)
                await b.wait_connected("node-a", timeout=30)
                assert await a.request("node-b", "echo", [1]) == [1]
                assert a.refused == {} and b.refused == {}


class TestNoReconnectStorm:
    """A peer whose credentials are refused is retried with growing backoff, not in a tight loop."""

    async def test_refused_dialer_backs_off(self, capture: list[dict[str, Any]]) -> None:
        # Half the cap is full jitter's mean delay: a typical schedule, made deterministic. The exact
        # schedule is tested under MockClock (test_backoff); here: a refusal goes through it too.
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-b", peers=[{"id": "node-a", "secret": OTHER}])) as b, \
                    fednode.open_node(node_config("node-a"), jitter=lambda cap: cap / 2) as a:
                assert a.config.backoff.initial == 0.05 and a.config.backoff.max == 0.5
                minted = record_tokens(a)
                start = trio.current_time()
                await a.register_peer(peer(b), wait=False)
                while sum(b.refused.values()) < 6:
                    await trio.sleep(0.01)
                elapsed = trio.current_time() - start
                status = a.peer_states()["node-b"]
                assert status.state is not fednode.PeerState.UP
                assert status.last_error is not None
                assert a.supervisor("node-b") is not None
                assert a.supervisor("node-b").backoff.attempt >= 5
                assert b.connected_peers() == []
        total = sum(b.refused.values())  # the nodes are closed: no more attempts
        # Each refusal is followed by a wait twice as long as the one before, up to the cap: no tight loop.
        delays = [e["delay"] for e in events(capture, "peer.backoff")]
        assert delays[:5] == [0.025, 0.05, 0.1, 0.2, 0.25]
        assert elapsed >= sum(delays[:5])  # those waits came before the sixth attempt
        assert len(delays) in (total - 1, total)  # one wait after each refusal (the last may be cut short)
        assert len(events(capture, "auth.refused")) == total
        assert {e["reason"] for e in events(capture, "auth.refused")} == {"unknown_kid"}
        assert len(minted) >= total  # one fresh token per attempt, none of them logged
        assert_not_logged(capture, *minted)

    async def test_last_error_names_the_refusal(self, capture: list[dict[str, Any]]) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-b", peers=[{"id": "node-a", "secret": OTHER}])) as b, \
                    fednode.open_node(node_config("node-a"), jitter=lambda cap: cap) as a:
                await a.register_peer(peer(b), wait=False)
                while sum(b.refused.values()) < 2:
                    await trio.sleep(0.01)
                last_error = a.peer_states()["node-b"].last_error
        assert events(capture, "peer.unexpected_error") == []
        assert last_error is not None
        assert "401" in last_error or "refused" in last_error
