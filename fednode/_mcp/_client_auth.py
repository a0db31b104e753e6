"""Who an HTTP client of the edge is: static ``[clients] tokens``, ``[clients.oauth]`` access tokens, or nobody.

:class:`ClientAuth` decides, for each HTTP request, whether it may go on and as which
:class:`~fednode._config._callers.Caller` (with the key its requests are rate-limited under), or
which refusal to answer: 401 with ``WWW-Authenticate: Bearer resource_metadata=...`` (RFC 9728,
so that a client with no token can find the authorization server), 403 ``insufficient_scope``, or
503 when the issuer's keys cannot be fetched. It also serves the Protected Resource Metadata.
The client's token stays here: nothing passes it on (the caller is what travels).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import structlog
import trio
from mcp.server.auth.handlers.metadata import ProtectedResourceMetadataHandler
from mcp.server.auth.routes import build_resource_metadata_url, cors_middleware
from mcp.shared.auth import ProtectedResourceMetadata
from pydantic import AnyHttpUrl, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from .._config._callers import Caller
from .._config._config import ClientsConfig
from .._config._oauth_config import OAuthConfig
from .._errors import KeysUnavailable, TokenRefused
from ._oauth import RETRY_INTERVAL, OAuthVerifier

__all__ = ["METADATA_PATH", "Admitted", "ClientAuth", "is_open"]

#: Where the Protected Resource Metadata is served (RFC 9728: the well-known URL, and with the
#: resource's path after it: /mcp, or whatever path ``audience`` has behind a proxy).
METADATA_PATH = "/.well-known/oauth-protected-resource"
METADATA_PATHS = (METADATA_PATH, METADATA_PATH + "/{resource:path}")

#: On a refusal: the request's body was not read, so the connection cannot carry another request;
#: saying so keeps a client from sending its next one on it as the server closes it.
_CLOSE = {"Connection": "close"}

Admitted = tuple[Caller, str]
"""A request let through: its caller, and the key its requests are rate-limited under."""


def _hashed(kind: str, *parts: str | bytes) -> str:
    """A rate-limit key naming a client by a short hash (never its token or subject in clear)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return f"{kind}:{digest.hexdigest()[:16]}"


class ClientAuth:
    """The edge's client authentication for one node.

    Args:
        entry: this node's id (every caller's entry node).
        clients: the ``[clients]`` section (tokens, oauth); None = no token needed.
        resource: this node's ``{data}/mcp`` URL now (the default audience, with the real port).
        tokens: static tokens given as strings (unnamed), beside those of ``clients``.
        log: where refusals are logged (never the token).
        on_refused: called with the reason of each refusal (metrics).
        clock: the time for the issuer's key refetch limits.
    """

    def __init__(self, entry: str = "local", clients: ClientsConfig | None = None, *,
                 resource: Callable[[], str] = lambda: "http://127.0.0.1/mcp", tokens: Sequence[str] = (),
                 log: Any = None, on_refused: Callable[[str], None] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.entry = entry
        self.resource = resource
        self.log: Any = log if log is not None else structlog.get_logger("fednode.edge")
        self.on_refused = on_refused
        self._clock = clock
        self._tokens: list[tuple[bytes, str | None]] = []
        self.verifier: OAuthVerifier | None = None
        self.update(clients, extra_tokens=tokens)

    def update(self, clients: ClientsConfig | None, *, extra_tokens: Sequence[str] = ()) -> None:
        """Apply a (reloaded) ``[clients]`` section; the cached issuer keys stay if ``oauth`` is unchanged."""
        self.set_tokens([(t.reveal(), t.name) for t in (clients.tokens if clients else ())]
                        + [(t.encode(), None) for t in extra_tokens])
        oauth = clients.oauth if clients is not None else None
        if oauth is None:
            self.verifier = None
        elif self.verifier is None or self.verifier.config != oauth:
            self.verifier = OAuthVerifier(oauth, self.resource, log=self.log, clock=self._clock or trio.current_time)

    def set_tokens(self, tokens: Iterable[tuple[bytes, str | None]]) -> None:
        """Replace the static tokens (token, name) at once."""
        self._tokens[:] = list(tokens)

    @property
    def required(self) -> bool:
        """Whether HTTP requests need a token."""
        return bool(self._tokens) or self.verifier is not None

    # -- per request ----------------------------------------------------------------------------

    async def admit(self, scope: Scope, address: str) -> Admitted | Response:
        """Let the request in ``scope`` through (its caller and rate key), or the response refusing it."""
        anonymous = Caller(entry=self.entry)
        if not self.required or is_open(str(scope.get("path", ""))):
            return anonymous, "address:" + address
        presented = _bearer(scope)
        if presented is None:
            return self._refuse("missing", 401, None, "no bearer token")
        named = self._static(presented)
        if named is not None:
            token, name = named
            caller = Caller(entry=self.entry, kind="token", subject=name) if name is not None else anonymous
            return caller, _hashed("token", token)
        verifier = self.verifier  # this one, even if a reload replaces it meanwhile
        if verifier is None:
            return self._refuse("token", 401, "invalid_token", "the token is not valid")
        try:
            access = await verifier.verify(presented.decode("ascii", "replace"))
        except TokenRefused as refused:
            return self._refuse(refused.reason, 401, "invalid_token", refused.description)
        except KeysUnavailable as exc:
            self._count("keys_unavailable")
            self.log.warning("edge.client_refused", reason="keys_unavailable", error=str(exc))
            return PlainTextResponse(f"Service Unavailable: {exc}", status_code=503,
                                     headers={"Retry-After": f"{RETRY_INTERVAL:.0f}", **_CLOSE})
        except Exception:  # a token PyJWT let through in a shape nobody foresaw: refused, never a 500
            self.log.exception("edge.token_check_failed")
            return self._refuse("malformed", 401, "invalid_token", "the token is not valid")
        missing = [needed for needed in verifier.config.scopes if needed not in access.scopes]
        if missing:
            return self._refuse("scope", 403, "insufficient_scope", f"the token lacks the scope {missing[0]!r}")
        caller = Caller(entry=self.entry, kind="oauth", subject=access.subject, client=access.client_id or None,
                        scopes=tuple(access.scopes))
        issuer = str((access.claims or {}).get("iss"))
        return caller, _hashed("oauth", issuer, access.subject or "", access.client_id)

    def _static(self, presented: bytes) -> tuple[bytes, str | None] | None:
        """The static token the request presents, and its name (None: none of them)."""
        # Compare against every token without stopping early: timing then says nothing about
        # which token (or how much of one) matched.
        matched = None
        for token, name in self._tokens:
            if hmac.compare_digest(presented, token):
                matched = (token, name)
        return matched

    def _count(self, reason: str) -> None:
        if self.on_refused is not None:
            self.on_refused(reason)

    def _refuse(self, reason: str, status: int, error: str | None, description: str) -> Response:
        """A 401 or 403 response with its ``WWW-Authenticate`` challenge; logged and counted."""
        self._count(reason)
        self.log.info("edge.client_refused", reason=reason, status=status, detail=description)
        verifier = self.verifier
        if verifier is None:  # static tokens only: as before OAuth, no metadata to point at
            parts = ['realm="fednode"'] + ([f'error="{error}"'] if error else [])
            return PlainTextResponse("Unauthorized", status_code=401,
                                     headers={"WWW-Authenticate": "Bearer " + ", ".join(parts), **_CLOSE})
        parts = []
        if error is not None:
            parts += [f'error="{error}"', f'error_description="{_quoted(description)}"']
        parts.append(f'resource_metadata="{self.metadata_url(verifier)}"')
        if verifier.config.scopes:
            parts.append(f'scope="{" ".join(verifier.config.scopes)}"')
        body = {"error": error or "invalid_request", "error_description": description}
        return JSONResponse(body, status_code=status,
                            headers={"WWW-Authenticate": "Bearer " + ", ".join(parts), **_CLOSE})

    # -- RFC 9728 metadata ----------------------------------------------------------------------

    def metadata_url(self, verifier: OAuthVerifier) -> str:
        """Where this resource's metadata is (RFC 9728 section 3.1, from the resource URL)."""
        return str(build_resource_metadata_url(AnyHttpUrl(verifier.resource)))

    def metadata(self) -> ProtectedResourceMetadata | None:
        """This resource's Protected Resource Metadata (None: no ``[clients.oauth]``)."""
        verifier = self.verifier
        if verifier is None:
            return None
        config: OAuthConfig = verifier.config
        try:
            # As strings, validated by the model, which keeps a path-less URL as is (an issuer is
            # compared exactly, RFC 8414: no trailing slash added).
            return ProtectedResourceMetadata.model_validate({
                "resource": verifier.resource, "authorization_servers": [config.issuer],
                "scopes_supported": list(config.scopes) or None, "bearer_methods_supported": ["header"]})
        except ValidationError:
            return None

    async def serve_metadata(self, request: Request) -> Response:
        """``GET /.well-known/oauth-protected-resource[/mcp]`` (404 without ``[clients.oauth]``)."""
        metadata = self.metadata()
        if metadata is None:
            return PlainTextResponse("Not Found", status_code=404)
        return await ProtectedResourceMetadataHandler(metadata).handle(request)

    def routes(self) -> list[Route]:
        """The metadata routes (served without a token)."""
        # With the SDK's CORS handling of these routes: browser-based clients read them cross-origin.
        return [Route(path, endpoint=cors_middleware(self.serve_metadata, ["GET", "OPTIONS"]),
                      methods=["GET", "OPTIONS"]) for path in METADATA_PATHS]


def is_open(path: str) -> bool:
    """Whether ``path`` is served without a token: ``/healthz`` and the resource metadata."""
    return path in ("/healthz", METADATA_PATH) or path.startswith(METADATA_PATH + "/")


def _bearer(scope: Scope) -> bytes | None:
    """The token of an ``Authorization: Bearer`` header (None: no such header)."""
    headers = cast(Iterable[tuple[bytes, bytes]], scope["headers"])
    value = next((v for k, v in headers if k == b"authorization"), None)
    if value is None:
        return None
    scheme, _, presented = value.partition(b" ")
    if scheme.lower() != b"bearer" or not presented.strip():
        return None
    return presented.strip()


def _quoted(text: str) -> str:
    """``text`` safe inside a quoted-string of a challenge."""
    return text.replace("\\", "").replace('"', "'")
