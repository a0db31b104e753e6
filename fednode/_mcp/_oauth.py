"""Checking OAuth 2.1 access tokens (JWTs) for ``[clients.oauth]``: the issuer's keys, and each token's claims.

:class:`OAuthVerifier` is the SDK's ``TokenVerifier`` for this node: a token is a JWT signed with one
of the issuer's keys (a JWKS, fetched from ``jwks``, or from the issuer's RFC 8414 / OpenID metadata,
and cached), with an allowed asymmetric algorithm the key's type fits, the configured ``iss``, this
resource as ``aud`` (RFC 8707), and ``exp``/``nbf`` within the leeway. PyJWT parses and checks the
token and the keys; nothing here parses either by hand.

The keys are fetched again when a token names a key the cached set lacks (a rotation), at most every
:data:`REFETCH_INTERVAL` seconds so that tokens with made-up key ids cannot make the node hammer the
issuer; one fetch runs at a time and the requests that need it wait for it. Keys that cannot be
fetched make the request fail with :class:`KeysUnavailable` (the edge answers 503), never crash it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx2
import jwt
import trio
from mcp.server.auth.provider import AccessToken

from .._config._oauth_config import OAuthConfig, is_loopback_url
from .._errors import FetchError, KeysUnavailable, TokenRefused

__all__ = ["REFETCH_INTERVAL", "KeySet", "OAuthVerifier", "fetch_json", "metadata_urls"]

#: Least seconds between two fetches of the issuer's keys prompted by an unknown key id.
REFETCH_INTERVAL = 30.0
#: Least seconds between two attempts while no keys could be fetched at all.
RETRY_INTERVAL = 5.0
FETCH_TIMEOUT = 10.0
MAX_DOCUMENT_BYTES = 512 * 1024  # a JWKS or metadata document: a few KB in practice
_MAX_TEXT = 256  # longest subject, client id or scope kept (as a Caller allows)
_MAX_SCOPES = 64

Loader = Callable[[], Awaitable[Any]]


def _secure(url: str) -> bool:
    return url.startswith("https://") or (url.startswith("http://") and is_loopback_url(url))


async def fetch_json(url: str, *, timeout: float = FETCH_TIMEOUT, max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """GET ``url`` as JSON (no redirects; at most ``max_bytes``; ``timeout`` for the whole exchange).

    Raises:
        FetchError: it could not be fetched, was not 200, too large, or not JSON.
    """
    body = bytearray()
    try:
        with trio.fail_after(timeout):
            async with httpx2.AsyncClient(timeout=timeout, follow_redirects=False) as http, \
                    http.stream("GET", url, headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise FetchError(f"{url}: HTTP {response.status_code}")
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise FetchError(f"{url}: larger than {max_bytes} bytes")
    except trio.TooSlowError:
        raise FetchError(f"{url}: no answer within {timeout:g}s") from None
    except (httpx2.HTTPError, OSError) as exc:
        raise FetchError(f"{url}: {type(exc).__name__}: {str(exc)[:200]}") from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise FetchError(f"{url}: not JSON: {str(exc)[:100]}") from None


async def read_json_file(path: str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """A JSON file (a JWKS given as a file), read off the event loop."""
    try:
        data = await trio.Path(path).read_bytes()
    except OSError as exc:
        raise FetchError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise FetchError(f"{path!r}: larger than {max_bytes} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise FetchError(f"{path!r}: not JSON: {str(exc)[:100]}") from None


def metadata_urls(issuer: str) -> list[str]:
    """Where the issuer's metadata is: RFC 8414's well-known URL, then OpenID Connect discovery's."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    return [f"{origin}/.well-known/oauth-authorization-server{path}",
            f"{issuer.rstrip('/')}/.well-known/openid-configuration"]


def jwks_loader(config: OAuthConfig, fetch: Callable[[str], Awaitable[Any]] = fetch_json) -> Loader:
    """How to load the issuer's JWKS document: from ``jwks`` (URL or file), else from its metadata's ``jwks_uri``."""
    source = config.jwks

    async def load() -> Any:
        if source is not None:
            return await (fetch(source) if source.startswith(("http://", "https://")) else read_json_file(source))
        problems = []
        for url in metadata_urls(config.issuer):
            try:
                metadata = await fetch(url)
            except FetchError as exc:
                problems.append(str(exc))
                continue
            if not isinstance(metadata, dict) or metadata.get("issuer") != config.issuer:
                problems.append(f"{url}: its issuer is not {config.issuer!r}")
                continue
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not _secure(jwks_uri):
                problems.append(f"{url}: no https jwks_uri")
                continue
            return await fetch(jwks_uri)
        raise FetchError("no usable issuer metadata: " + "; ".join(problems))

    return load


class KeySet:
    """The issuer's signing keys by key id, loaded by ``load`` and cached.

    Args:
        load: returns the JWKS document (raises :class:`FetchError`).
        clock: the time for the refetch limits (Trio's clock: MockClock in tests).
        log: where failed fetches are logged.
    """

    def __init__(self, load: Loader, *, clock: Callable[[], float] = trio.current_time, log: Any = None) -> None:
        self._load = load
        self._clock = clock
        self._log = log
        self._keys: dict[str, dict[str, Any]] | None = None
        self._attempted: float | None = None
        self._error = ""
        self._generation = 0  # fetches done: a waiter that sees it changed need not fetch again
        self._lock = trio.Lock()
        #: fetches attempted (tests count them)
        self.fetches = 0

    async def find(self, kid: str | None) -> dict[str, Any] | None:
        """The JWK named ``kid`` (None: the only key, if there is one), fetching when allowed.

        Raises:
            KeysUnavailable: no keys are cached and they cannot be fetched, or a fetch for an
                unknown key id failed.
        """
        if self._keys is None:
            await self._refresh(self._generation, RETRY_INTERVAL)
        found = self._pick(kid)
        if found is None and kid is not None:
            await self._refresh(self._generation, REFETCH_INTERVAL)
            found = self._pick(kid)
        return found

    def _pick(self, kid: str | None) -> dict[str, Any] | None:
        keys = self._keys or {}
        if kid is None:
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)

    async def _refresh(self, seen: int, interval: float) -> None:
        async with self._lock:
            if self._generation != seen:
                return  # another request fetched while this one waited: use what it found
            now = self._clock()
            if self._attempted is not None and now - self._attempted < interval:
                if self._keys is None:
                    raise KeysUnavailable(self._error)
                return  # too soon to ask the issuer again: the key is unknown
            self._attempted = now
            self.fetches += 1
            try:
                keys = _usable_keys(await self._load())
            except FetchError as exc:
                self._error = f"cannot fetch the issuer's keys: {exc}"
                if self._log is not None:
                    self._log.error("edge.oauth_keys_unavailable", error=self._error)
                raise KeysUnavailable(self._error) from None
            self._keys = keys
            self._generation += 1


def _usable_keys(document: Any) -> dict[str, dict[str, Any]]:
    """The signing keys of a JWKS document, by kid (PyJWT decides which are usable)."""
    if not isinstance(document, dict):
        raise FetchError("the JWKS is not a JSON object")
    try:
        keyset = jwt.PyJWKSet.from_dict(document)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:  # whatever odd key material raises
        raise FetchError(f"no usable keys in the JWKS: {exc}") from None
    usable = {key.key_id for key in keyset.keys if key.public_key_use in (None, "sig")}
    raw = document.get("keys") or []
    # Keys without a kid are kept under "" (used only when the set has that one key).
    return {str(item.get("kid") or ""): item for item in raw
            if isinstance(item, dict) and (item.get("kid") or None) in usable}


# PyJWT's errors, as reasons (the first that matches wins: subclasses before their bases).
_REASONS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "the token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "the token is not valid yet"),
    (jwt.InvalidAudienceError, "audience", "the token is not for this resource"),
    (jwt.InvalidIssuerError, "issuer", "the token is from another issuer"),
    (jwt.MissingRequiredClaimError, "claims", "the token lacks a required claim"),
    (jwt.InvalidSignatureError, "signature", "the token's signature is not valid"),
    (jwt.InvalidAlgorithmError, "algorithm", "the token's algorithm is not accepted for its key"),
)


class OAuthVerifier:
    """Checks access tokens for ``[clients.oauth]`` (the SDK's ``TokenVerifier``).

    Args:
        config: the ``[clients.oauth]`` section.
        resource: this node's ``{data}/mcp`` URL now (the audience when none is configured).
        load: overrides how the JWKS document is loaded (tests).
        clock: the time for the key refetch limits.
        log: where key fetch failures are logged.
    """

    def __init__(self, config: OAuthConfig, resource: Callable[[], str], *, load: Loader | None = None,
                 clock: Callable[[], float] = trio.current_time, log: Any = None) -> None:
        self.config = config
        self._resource = resource
        self.keys = KeySet(load or jwks_loader(config), clock=clock, log=log)

    @property
    def resource(self) -> str:
        """The resource tokens must be issued for: ``audience``, else this node's ``{data}/mcp``."""
        return self.config.audience or self._resource()

    async def verify_token(self, token: str) -> AccessToken | None:
        """The SDK's ``TokenVerifier``: the token's access info, or None when it is refused.

        Raises:
            KeysUnavailable: the issuer's keys cannot be fetched now.
        """
        try:
            return await self.verify(token)
        except TokenRefused:
            return None

    async def verify(self, token: str) -> AccessToken:
        """Check ``token`` and return what it grants.

        Raises:
            TokenRefused: saying why.
            KeysUnavailable: the issuer's keys cannot be fetched now.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused("malformed", "the token is not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.config.algorithms:
            raise TokenRefused("algorithm", f"the token's algorithm {str(alg)[:20]!r} is not accepted")
        if kid is not None and not (isinstance(kid, str) and len(kid) <= _MAX_TEXT):
            raise TokenRefused("malformed", "the token's kid is not a string")
        jwk = await self.keys.find(kid)
        if jwk is None:
            raise TokenRefused("unknown_key", "the token is signed with a key the issuer does not publish" if kid
                               else "the token names no key (kid) and the issuer has several")
        if jwk.get("alg") not in (None, alg):
            raise TokenRefused("algorithm", "the token's algorithm does not fit its key")
        try:
            # The key is bound to the token's algorithm: a key of another type (an RSA key for
            # EdDSA, any public key for HMAC) cannot be loaded for it and is refused here.
            key = jwt.PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWKError, jwt.InvalidKeyError):
            raise TokenRefused("algorithm", "the token's algorithm does not fit its key") from None
        try:
            claims = jwt.decode(token, key=key, algorithms=[alg], audience=self.resource, issuer=self.config.issuer,
                                leeway=self.config.leeway, options={"require": ["exp", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            reason, description = next(((r, d) for kind, r, d in _REASONS if isinstance(exc, kind)),
                                       ("malformed", "the token is not valid"))
            raise TokenRefused(reason, description) from None
        return _access(token, claims, self.resource)


def _access(token: str, claims: dict[str, Any], resource: str) -> AccessToken:
    """What a verified token grants (its subject, client and scopes, sizes checked)."""
    subject, client = claims.get("sub"), claims.get("client_id", claims.get("azp"))
    for name, value in (("sub", subject), ("client_id", client)):
        if value is not None and not (isinstance(value, str) and 0 < len(value) <= _MAX_TEXT):
            raise TokenRefused("claims", f"the token's {name} must be a string of 1 to {_MAX_TEXT} characters")
    raw_scopes = claims.get("scope", claims.get("scp", ""))
    scopes = raw_scopes.split() if isinstance(raw_scopes, str) else raw_scopes
    if not (isinstance(scopes, list) and len(scopes) <= _MAX_SCOPES
            and all(isinstance(s, str) and 0 < len(s) <= _MAX_TEXT for s in scopes)):
        raise TokenRefused("claims", f"the token's scopes must be at most {_MAX_SCOPES} words")
    expires = claims.get("exp")
    return AccessToken(token=token, client_id=client or "", scopes=list(scopes), resource=resource,
                       expires_at=int(expires) if isinstance(expires, int | float) else None,
                       subject=subject, claims={"iss": claims.get("iss"), "client_id": client})
