"""``[clients.oauth]`` and named ``[clients] tokens``: how MCP clients of the data address authenticate.

``[clients.oauth]`` makes ``{data}/mcp`` an OAuth 2.1 resource server: clients present JWT access
tokens from one issuer (checked by :mod:`fednode._mcp._oauth`). A ``[clients] tokens`` entry is a
string or a table ``{ token = "...", name = "alice" }``; the name is the caller's subject. Nothing
here touches the network: the issuer's keys are fetched by the edge when it needs them.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any
from urllib.parse import urlsplit

import attrs

from .._errors import InvalidValue
from ._config_load import Check, Duration, Rule, Secret, min_length, url_of, url_problem

__all__ = ["ALLOWED_ALGORITHMS", "DEFAULT_ALGORITHMS", "ClientToken", "NamedToken", "OAuthConfig",
           "TokenEntry", "TokenItem", "is_loopback_url"]

#: Signature algorithms an access token may use (asymmetric only: the node holds public keys).
ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
#: The default allow-list.
DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
MAX_LEEWAY = 300.0  # a clock skew beyond five minutes is a broken clock, not leeway
_MAX_SCOPES = 32

ClientToken = Annotated[Secret, min_length(16, "client token is {length} characters; use at least {minimum}",
                                          characters=True)]


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is a loopback address or ``localhost``."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secure_url_problem(value: str) -> str | None:
    """https:// anywhere; http:// only for a loopback host (tests, a local issuer)."""
    problem = url_problem(value, ("http", "https"), allow_port_zero=False)
    if problem is None and value.startswith("http://") and not is_loopback_url(value):
        return f"must be an https:// URL (http:// only for a loopback host), got {value[:200]!r}"
    return problem


def _algorithms_problem(value: tuple[str, ...]) -> str | None:
    if not value:
        return "give at least one algorithm"
    for algorithm in value:
        if algorithm.upper().startswith("HS"):
            return (f"{algorithm!r} is a shared-secret (HMAC) algorithm: an access token must be signed with the "
                    f"issuer's private key and checked with its public keys; use some of "
                    f"{', '.join(ALLOWED_ALGORITHMS)}")
        if algorithm not in ALLOWED_ALGORITHMS:
            return f"unsupported algorithm {algorithm[:40]!r}; use some of {', '.join(ALLOWED_ALGORITHMS)}"
    return None


def _scopes_problem(value: tuple[str, ...]) -> str | None:
    if len(value) > _MAX_SCOPES:
        return f"at most {_MAX_SCOPES} scopes"
    bad = [scope for scope in value if not scope or any(c.isspace() or c in '"\\' for c in scope)]
    return f"a scope is a non-empty word without spaces, quotes or backslashes, got {bad[0][:40]!r}" if bad else None


@attrs.frozen
class JwksSource(Rule):
    """``jwks``: an http(s) URL (see :func:`_secure_url_problem`) or a JWKS file (relative to the config)."""

    def structure(self, value: object, base: Any, loader: Any) -> str:
        text = loader.expand(value)
        if text.startswith(("http://", "https://")):
            problem = _secure_url_problem(text)
            if problem:
                raise InvalidValue(problem)
            return str(text)
        path = loader.path(text)  # (already expanded: FilePath would expand it a second time)
        loader.read(path)
        return str(path)


SecureUrl = Annotated[str, Check(_secure_url_problem)]


@attrs.frozen
class OAuthConfig:
    """``[clients.oauth]``: JWT access tokens from ``issuer`` are accepted on ``{data}/mcp``.

    Attributes:
        issuer: the authorization server's issuer (the tokens' ``iss``, exactly).
        jwks: where its public keys are: a URL or a file; None = found from the issuer's metadata
            (RFC 8414, then OpenID Connect discovery).
        audience: the tokens' required ``aud`` (RFC 8707 resource); None = this node's ``{data}/mcp``.
        scopes: scopes every request needs.
        algorithms: signature algorithms accepted (never ``none``, never HMAC).
        leeway: clock skew allowed on ``exp`` and ``nbf``.
    """

    issuer: SecureUrl
    jwks: Annotated[str, JwksSource()] | None = None
    # Any http(s) URL: it names this resource, and [node] data may be plain HTTP on a private network.
    audience: Annotated[str, url_of(("http", "https"))] | None = None
    scopes: Annotated[tuple[str, ...], Check(_scopes_problem)] = ()
    algorithms: Annotated[tuple[str, ...], Check(_algorithms_problem)] = DEFAULT_ALGORITHMS
    leeway: Annotated[float, Duration(positive=False, at_most=MAX_LEEWAY,
                                      too_long="must be at most {limit:g}s")] = 30.0


@attrs.frozen
class NamedToken:
    """A static client token and the name of whoever holds it (None: an anonymous caller)."""

    token: ClientToken = attrs.field(repr=False)
    name: Annotated[str, Check(lambda v: None if 0 < len(v) <= 256 else "must be 1 to 256 characters")] | None = None

    def reveal(self) -> bytes:
        """The token's bytes (for comparing only)."""
        return self.token.reveal()


@attrs.frozen
class TokenEntry(Rule):
    """A ``[clients] tokens`` entry: a string, or a table ``{ token = "...", name = "..." }``."""

    def structure(self, value: object, base: Any, loader: Any) -> NamedToken:
        if isinstance(value, str):
            value = {"token": value}
        elif not isinstance(value, dict):
            raise InvalidValue(f"expected a token string or a table {{ token = ..., name = ... }}, got "
                               f"{type(value).__name__}")
        return loader.converter.structure(value, NamedToken)  # type: ignore[no-any-return]


TokenItem = Annotated[NamedToken, TokenEntry()]

