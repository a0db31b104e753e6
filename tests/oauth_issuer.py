"""A small OAuth authorization server of the tests' own: RFC 8414 metadata, a JWKS, tokens, client credentials.

It listens on 127.0.0.1 (port 0) in the test's own nursery and signs access tokens with an RS256
key (kid ``rsa-1``) and an Ed25519 key (kid ``ed-1``, EdDSA). :meth:`TestIssuer.token` mints a
token with any claims a test needs (another audience, expired, a foreign key...); ``POST /token``
grants the client-credentials grant (``client_secret_basic`` or ``_post``) to :attr:`clients`, for
the audience the client names with RFC 8707's ``resource``.
"""

from __future__ import annotations

import base64
import logging
import time
from functools import partial
from typing import Any, cast
from urllib.parse import parse_qs, unquote

import hypercorn.config
import hypercorn.trio
import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

RSA_KID = "rsa-1"
ED_KID = "ed-1"


class TestIssuer:
    """The authorization server; :meth:`serve` it with ``nursery.start``, then use :attr:`url`."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ed = Ed25519PrivateKey.generate()
        #: client id -> secret, for the client-credentials grant
        self.clients = {"machine": "machine-secret-0123456789"}
        #: JWKS documents served, and token requests seen (their form fields)
        self.jwks_served = 0
        self.token_requests: list[dict[str, str]] = []
        self.port = 0

    @property
    def url(self) -> str:
        """The issuer identifier (``iss``) and base URL."""
        return f"http://127.0.0.1:{self.port}"

    def jwks(self) -> dict[str, Any]:
        """The public keys, as PyJWT writes JWKs."""
        rsa_jwk = cast(dict[str, Any], RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True))
        ed_jwk = cast(dict[str, Any], OKPAlgorithm.to_jwk(self.ed.public_key(), as_dict=True))
        return {"keys": [{**rsa_jwk, "kid": RSA_KID, "alg": "RS256", "use": "sig"},
                         {**ed_jwk, "kid": ED_KID, "alg": "EdDSA", "use": "sig"}]}

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 Authorization Server Metadata."""
        return {"issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks.json",
                "response_types_supported": ["code"], "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "scopes_supported": ["mcp", "files.read"]}

    def token(self, audience: str, *, subject: str | None = "alice@example.org", scopes: str | None = "mcp",
              alg: str = "RS256", kid: str | None = None, issuer: str | None = None, lifetime: float = 300,
              not_before: float | None = None, client_id: str | None = "test-client", key: Any = None,
              **claims: Any) -> str:
        """An access token for ``audience`` signed with the RS256 or EdDSA key (or ``key``)."""
        now = time.time()
        body: dict[str, Any] = {"iss": issuer or self.url, "aud": audience, "iat": int(now),
                                "exp": int(now + lifetime), **claims}
        for name, value in (("sub", subject), ("scope", scopes), ("client_id", client_id)):
            if value is not None:
                body[name] = value
        if not_before is not None:
            body["nbf"] = int(not_before)
        signing_key = key if key is not None else self.ed if alg == "EdDSA" else self.rsa
        headers = {"kid": kid if kid is not None else ED_KID if alg == "EdDSA" else RSA_KID}
        return jwt.encode(body, signing_key, algorithm=alg, headers=headers)

    # -- HTTP ---------------------------------------------------------------------------------

    async def _metadata(self, request: Request) -> Response:
        return JSONResponse(self.metadata())

    async def _jwks(self, request: Request) -> Response:
        self.jwks_served += 1
        return JSONResponse(self.jwks())

    async def _token(self, request: Request) -> Response:
        form = {key: values[0] for key, values in parse_qs((await request.body()).decode()).items()}
        self.token_requests.append(form)
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            decoded = base64.b64decode(basic[6:]).decode()
            client_id, _, secret = (unquote(part) for part in decoded.partition(":"))
        if client_id is None or self.clients.get(client_id) != secret:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if form.get("grant_type") != "client_credentials" or "resource" not in form:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        scope = form.get("scope", "mcp")
        token = self.token(form["resource"], subject=f"svc-{client_id}", scopes=scope, client_id=client_id)
        return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": scope})

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (``task_status.started()`` once :attr:`url` is right)."""
        app = Starlette(routes=[Route("/.well-known/oauth-authorization-server", self._metadata),
                                Route("/jwks.json", self._jwks), Route("/token", self._token, methods=["POST"])])
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(serve_app, app)
            task_status.started()


async def serve_app(app: Any, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve an ASGI app with hypercorn on 127.0.0.1 (a free port, reported by ``task_status``) until cancelled."""
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("tests.oauth_issuer")
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(hypercorn.trio.serve, cast(Any, app), config))
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
