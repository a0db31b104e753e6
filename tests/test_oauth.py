"""OAuth 2.1 at ``{data}/mcp``: a real `fednode run` process as a resource server, the tests' own issuer.

An SDK client with a bearer token from :class:`~oauth_issuer.TestIssuer` calls tools; tokens for
another audience, expired, from another issuer, with an unknown key, ``alg: none`` or HMAC with the
public key are refused with 401; a missing scope with 403; a client with no token finds the
authorization server from the 401 alone. The client's token reaches neither an attached server nor
a peer. The verifier's own rules (key rotation and its refetch limit) run under MockClock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm
from jwt.utils import base64url_encode
from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend
from mcp.server.mcpserver import MCPServer
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from mcp.shared.exceptions import MCPError
from oauth_issuer import RSA_KID, TestIssuer, serve_app
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from test_cli_run import fednode_run as cli_run

import fednode
from fednode._config._callers import Caller
from fednode._config._config import ClientsConfig, Secret
from fednode._config._describe import describe
from fednode._config._oauth_config import NamedToken, OAuthConfig
from fednode._errors import FORBIDDEN, FetchError, TokenRefused
from fednode._mcp._client_auth import ClientAuth
from fednode._mcp._oauth import KeySet, OAuthVerifier, fetch_json, jwks_loader, metadata_urls

from conftest import SECRET, node_config, raw_config
from helpers import BlackholeProxy

FEDNODE = str(Path(sys.executable).parent / "fednode")
FIXTURE = str(Path(__file__).parent / "mcp_fixtures" / "test_server.py")
STATIC = "static-token-0123456789"
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}}}
HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28",
           "Mcp-Method": "tools/list"}


def node_toml(node_id: str, issuer: TestIssuer | str, extra: str = "") -> str:
    """A node's configuration: OAuth from ``issuer`` (keys found from its metadata), a named static token."""
    issuer_url = issuer if isinstance(issuer, str) else issuer.url
    return (f'[node]\nid = "{node_id}"\ncontrol = "ws://127.0.0.1:0"\ndata = "http://127.0.0.1:0"\n'
            'shutdown_grace = "2s"\n[auth]\nsecret = "${TEST_SECRET}"\n'
            '[heartbeat]\ninterval = "0.5s"\ntimeout = "30s"\n'
            f'[clients]\ntokens = [{{ token = "{STATIC}", name = "ops" }}]\n'
            f'[clients.oauth]\nissuer = "{issuer_url}"\nscopes = ["mcp"]\n{extra}')


@asynccontextmanager
async def fednode_run(path: Path) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """`fednode run` as a child process (test_cli_run's); yields its ``{data}/mcp`` URL and its log events."""
    async with cli_run(path) as (_process, events, _control, _nursery):
        yield next(str(e["url"]) for e in events if e["event"] == "edge.listening"), events


async def test_fednode_mcp_stays_local(tmp_path: Path) -> None:
    """`fednode mcp` (stdio) is the node's own process: [clients.oauth] does not apply to it (nor is its
    issuer, unreachable here, ever asked)."""
    path = tmp_path / "node-s.toml"
    path.write_text(node_toml("node-s", "https://idp.invalid", f'[[servers]]\nid = "fx"\n'
                              f'command = {json.dumps(sys.executable)}\nargs = [{json.dumps(FIXTURE)}]\n'))
    params = StdioServerParameters(command=FEDNODE, args=["mcp", "--config", str(path)],
                                   env={"PATH": "/usr/bin:/bin", "TEST_SECRET": SECRET})
    with trio.fail_after(120):
        async with Client(params, mode="2026-07-28", cache=None) as client:
            with trio.fail_after(60):
                while "fx__add" not in {t.name for t in (await client.list_tools()).tools}:
                    await trio.sleep(0.1)
            result = await client.call_tool("fx__add", {"a": 1, "b": 2})
            assert not result.is_error


def bearer(token: str) -> httpx2.AsyncClient:
    return create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})


async def call_add(url: str, http_client: httpx2.AsyncClient, mode: str = "2026-07-28") -> int:
    """List the tools until ``fx__add`` is there (the server may still be starting), then call it."""
    async with http_client, Client(streamable_http_client(url, http_client=http_client), mode=mode,
                                   cache=None) as client:
        with trio.fail_after(60):
            while "fx__add" not in {t.name for t in (await client.list_tools()).tools}:
                await trio.sleep(0.1)
        result = await client.call_tool("fx__add", {"a": 20, "b": 22})
        assert not result.is_error and result.structured_content is not None
        return int(next(iter(result.structured_content.values())))


def challenge(response: httpx2.Response) -> dict[str, str]:
    """The parameters of a ``WWW-Authenticate: Bearer`` challenge."""
    scheme, _, rest = response.headers["www-authenticate"].partition(" ")
    assert scheme == "Bearer"
    found = {}
    for part in rest.split('", '):
        key, _, value = part.partition('="')
        found[key.strip()] = value.rstrip('"')
    return found


def hs256_with_public_key(issuer: TestIssuer, audience: str) -> str:
    """A token whose header says HS256, MAC'd with the issuer's public key (the classic confusion attack)."""
    public = issuer.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    payload = jwt.decode(issuer.token(audience), options={"verify_signature": False})
    # PyJWT refuses to MAC with a PEM key, so the forgery is made by hand, as an attacker would.
    header = base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": RSA_KID}).encode())
    body = base64url_encode(json.dumps(payload).encode())
    signature = base64url_encode(hmac.new(public, header + b"." + body, hashlib.sha256).digest())
    return (header + b"." + body + b"." + signature).decode()


class MemoryStorage:
    """The SDK client's token storage, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


async def test_fednode_run_is_an_oauth_resource_server(tmp_path: Path) -> None:
    issuer = TestIssuer()
    path = tmp_path / "node-a.toml"
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            await nursery.start(issuer.serve)
            path.write_text(node_toml("node-a", issuer, f'[[servers]]\nid = "fx"\n'
                                      f'command = {json.dumps(sys.executable)}\nargs = [{json.dumps(FIXTURE)}]\n'))
            async with fednode_run(path) as (url, events), httpx2.AsyncClient(timeout=30) as http:
                base = url.removesuffix("/mcp")
                metadata_url = f"{base}/.well-known/oauth-protected-resource/mcp"
                # Both key types of the issuer, both eras; and the named static token beside OAuth.
                assert await call_add(url, bearer(issuer.token(url))) == 42
                assert await call_add(url, bearer(issuer.token(url, alg="EdDSA")), mode="legacy") == 42
                assert await call_add(url, bearer(STATIC)) == 42

                refused = {
                    "another audience": issuer.token("http://127.0.0.1:1/mcp"),
                    "expired": issuer.token(url, lifetime=-120),
                    "another issuer": issuer.token(url, issuer="http://127.0.0.1:1"),
                    "unknown key": issuer.token(url, kid="rotated-7"),
                    "alg none": jwt.encode(jwt.decode(issuer.token(url), options={"verify_signature": False}),
                                           None, algorithm="none"),
                    "HS256 with the public key": hs256_with_public_key(issuer, url),
                    "not a JWT": "definitely-not-a-jwt",
                }
                for case, token in refused.items():
                    response = await http.post(url, json=LIST, headers=HEADERS | {"Authorization": f"Bearer {token}"})
                    assert response.status_code == 401, case
                    found = challenge(response)
                    assert found["error"] == "invalid_token", case
                    assert found["resource_metadata"] == metadata_url and found["scope"] == "mcp", case
                    assert response.json()["error"] == "invalid_token"

                response = await http.post(url, json=LIST, headers=HEADERS | {
                    "Authorization": f"Bearer {issuer.token(url, scopes='files.read')}"})
                assert response.status_code == 403
                assert challenge(response)["error"] == "insufficient_scope" and challenge(response)["scope"] == "mcp"

                # A client with no token: the 401 alone leads it to the authorization server.
                response = await http.post(url, json=LIST, headers=HEADERS)
                assert response.status_code == 401
                found = challenge(response)
                assert "error" not in found and found["scope"] == "mcp"
                resource = (await http.get(found["resource_metadata"])).json()
                assert resource == {"resource": url, "authorization_servers": [issuer.url],
                                    "scopes_supported": ["mcp"], "bearer_methods_supported": ["header"]}
                assert (await http.get(f"{base}/.well-known/oauth-protected-resource")).json() == resource
                preflight = await http.options(found["resource_metadata"], headers={
                    "Origin": "https://client.example", "Access-Control-Request-Method": "GET"})
                assert preflight.status_code == 200  # browser-based clients may read it cross-origin
                assert preflight.headers["access-control-allow-origin"] == "*"
                server = resource["authorization_servers"][0]
                as_metadata = (await http.get(f"{server}/.well-known/oauth-authorization-server")).json()
                assert as_metadata["token_endpoint"] == f"{issuer.url}/token"
                assert (await http.get(f"{base}/healthz")).status_code == 200
                assert (await http.get(f"{base}/status")).status_code == 401

                # The SDK's own client-credentials client does the same discovery, gets a token, calls.
                provider = ClientCredentialsOAuthProvider(url, MemoryStorage(), "machine", issuer.clients["machine"],
                                                          scope="mcp", issuer=issuer.url)
                assert await call_add(url, httpx2.AsyncClient(auth=provider, timeout=30)) == 42
                assert issuer.token_requests and issuer.token_requests[-1]["resource"] == url

                metrics = (await http.get(f"{base}/metrics", headers={"Authorization": f"Bearer {STATIC}"})).text
                for reason in ("audience", "expired", "issuer", "unknown_key", "algorithm", "malformed", "scope",
                               "missing"):
                    assert f'fednode_client_refused_total{{reason="{reason}"}}' in metrics, reason
            logged = json.dumps(events)
            assert "edge.client_refused" in logged
            assert STATIC not in logged and not any(token in logged for token in refused.values())  # never a token
            nursery.cancel_scope.cancel()


# -- in-process nodes: the caller the edge establishes, and no token passthrough ----------------


def oauth_clients(issuer: TestIssuer, **extra: Any) -> dict[str, Any]:
    return {"tokens": [{"token": STATIC, "name": "ops"}, "unnamed-token-0123456789"],
            "oauth": {"issuer": issuer.url, "scopes": ["mcp"], **extra}}


class RecordingProxy(BlackholeProxy):
    """A loopback TCP proxy that keeps every byte it carries."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.carried = bytearray()

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            while data := await source.receive_some(65536):
                self.carried += data
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


def recording_server(seen: list[list[tuple[bytes, bytes]]]) -> Any:
    """A Streamable HTTP MCP server (SDK) whose every HTTP request's headers are kept in ``seen``."""
    server = MCPServer("recorder")

    @server.tool()
    def hello(name: str) -> str:
        """Greet."""
        return f"hello {name}"

    app = server.streamable_http_app()

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(list(scope["headers"]))
        await app(scope, receive, send)

    return recording


async def test_callers_reach_the_forwarder() -> None:
    """An OAuth token's subject, client and scopes, a static token's name, or anonymous: as EdgeCall.caller."""
    issuer = TestIssuer()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(issuer.serve)
            async with fednode.open_node(node_config("node-a", clients=oauth_clients(issuer))) as a:
                await a.add_server(fednode.ServerConfig(id="fx", command=sys.executable, args=(FIXTURE,)), timeout=60)
                callers: list[Caller | None] = []
                forward = a.edge.forwarder.forward

                async def spy(method: str, params: dict[str, Any], call: Any) -> dict[str, Any]:
                    callers.append(call.caller)
                    return await forward(method, params, call)

                a.edge.forwarder.forward = spy  # type: ignore[method-assign]
                url = a.mcp_url
                token = issuer.token(url, subject="alice@example.org", scopes="mcp files.read", client_id=None,
                                     azp="desk-app")
                for http_client in (bearer(token), bearer(STATIC), bearer("unnamed-token-0123456789")):
                    assert await call_add(url, http_client) == 42
                assert callers == [
                    Caller(entry="node-a", kind="oauth", subject="alice@example.org", client="desk-app",
                           scopes=("mcp", "files.read")),
                    Caller(entry="node-a", kind="token", subject="ops"),
                    Caller(entry="node-a", kind="anonymous"),
                ]
            nursery.cancel_scope.cancel()


async def test_the_clients_token_reaches_no_attached_server_nor_peer() -> None:
    """Token passthrough is forbidden: the attached HTTP servers (at the entry node and at a peer) and the
    peer link carry the call, never the client's Authorization header or token."""
    issuer = TestIssuer()
    seen: list[list[tuple[bytes, bytes]]] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(issuer.serve)
            port = await nursery.start(serve_app, recording_server(seen))
            recorder = f"http://127.0.0.1:{port}/mcp"
            async with fednode.open_node(node_config("node-a", peers=[{"id": "node-b"}],
                                                     clients=oauth_clients(issuer))) as a:
                proxy = RecordingProxy(int(a.control_url.rsplit(":", 1)[1]))
                await nursery.start(proxy.serve)
                # node-b dials node-a: node-a's frames to it are unmasked, so the proxy reads them as sent.
                b_config = node_config("node-b", peers=[{"id": "node-a", "control": proxy.url}])
                async with fednode.open_node(b_config) as b:
                    await a.add_server(fednode.ServerConfig(id="reca", url=recorder), timeout=60)
                    await b.add_server(fednode.ServerConfig(id="recb", url=recorder), timeout=60)
                    await a.federation.wait_for("recb__hello", timeout=60)
                    token = issuer.token(a.mcp_url)
                    http_client = bearer(token)
                    async with http_client, Client(streamable_http_client(a.mcp_url, http_client=http_client),
                                                   mode="2026-07-28", cache=None) as client:
                        for name in ("reca__hello", "recb__hello"):
                            result = await client.call_tool(name, {"name": "x"})
                            assert result.content[0].text == "hello x"  # type: ignore[union-attr]
            nursery.cancel_scope.cancel()
    assert b"fed/forward" in proxy.carried and b"recb" in proxy.carried  # the call crossed the link in clear
    # (The link's own handshake carries node-b's link token: that is the only bearer on it.)
    assert token.encode() not in proxy.carried and token.rsplit(".", 1)[1].encode() not in proxy.carried
    assert seen  # the recorder was called over HTTP, from both nodes
    for headers in seen:
        assert all(name.lower() != b"authorization" for name, _ in headers), headers
        assert not any(token.encode() in value for _, value in headers)


# -- the verifier's rules (no network: the JWKS comes from a function; MockClock for the limits) ----

AUDIENCE = "https://node-a.example.org/mcp"


def verifier_for(issuer: TestIssuer, document: dict[str, Any], loads: list[float], *, delay: float = 0.0,
                 **config: Any) -> OAuthVerifier:
    """A verifier of tokens from ``issuer`` whose JWKS is ``document`` as it is at each load (times kept)."""
    async def load() -> Any:
        loads.append(trio.current_time())
        await trio.sleep(delay)
        return json.loads(json.dumps(document))

    return OAuthVerifier(OAuthConfig(issuer=issuer.url, **config), lambda: AUDIENCE, load=load)


async def refused(verifier: OAuthVerifier, token: str) -> str:
    """The reason ``token`` is refused for."""
    with pytest.raises(TokenRefused) as caught:
        await verifier.verify(token)
    return caught.value.reason


async def test_rotated_key_is_fetched_at_most_every_30_seconds(autojump_clock: trio.testing.MockClock) -> None:
    issuer = TestIssuer()
    document, loads = issuer.jwks(), list[float]()
    verifier = verifier_for(issuer, document, loads)
    start = trio.current_time()
    assert (await verifier.verify(issuer.token(AUDIENCE))).subject == "alice@example.org"
    assert loads == [start]
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rotated = issuer.token(AUDIENCE, key=new_key, kid="rsa-2")
    # Unknown within 30 s of the last fetch: refused without asking the issuer again.
    assert await refused(verifier, rotated) == "unknown_key"
    await trio.sleep(29.5)
    assert await refused(verifier, rotated) == "unknown_key"
    assert loads == [start]
    document["keys"].append({**RSAAlgorithm.to_jwk(new_key.public_key(), as_dict=True), "kid": "rsa-2"})
    await trio.sleep(0.5)
    assert (await verifier.verify(rotated)).subject == "alice@example.org"  # fetched again: 30 s since
    assert loads == [start, start + 30.0]
    # Many requests naming unknown keys at once, 30 s on: one fetch, the others wait for it.
    await trio.sleep(30)
    reasons: list[str] = []

    async def one(kid: str) -> None:
        reasons.append(await refused(verifier, issuer.token(AUDIENCE, kid=kid)))

    verifier.keys = KeySet(verifier.keys._load, log=None)  # a fresh cache, to count its fetches alone
    await verifier.verify(issuer.token(AUDIENCE))
    await trio.sleep(30)
    async with trio.open_nursery() as nursery:
        for index in range(10):
            nursery.start_soon(one, f"made-up-{index}")
    assert reasons == ["unknown_key"] * 10
    assert verifier.keys.fetches == 2


async def test_one_fetch_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    """Requests arriving while the keys are being fetched wait for that fetch, none starts its own."""
    issuer = TestIssuer()
    loads: list[float] = []
    verifier = verifier_for(issuer, issuer.jwks(), loads, delay=2.0)
    subjects: list[str | None] = []

    async def one() -> None:
        subjects.append((await verifier.verify(issuer.token(AUDIENCE, alg="EdDSA"))).subject)

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(one)
    assert subjects == ["alice@example.org"] * 20 and len(loads) == 1


async def test_keys_that_cannot_be_fetched_answer_503(autojump_clock: trio.testing.MockClock) -> None:
    issuer = TestIssuer()
    attempts: list[float] = []

    async def unreachable() -> Any:
        attempts.append(trio.current_time())
        raise FetchError("http://127.0.0.1:1/jwks.json: ConnectError: refused")

    refusals: list[str] = []
    clients = ClientsConfig(oauth=OAuthConfig(issuer=issuer.url))
    auth = ClientAuth("node-a", clients, resource=lambda: AUDIENCE, on_refused=refusals.append)
    assert auth.verifier is not None
    auth.verifier.keys = KeySet(unreachable)
    presented = f"Bearer {issuer.token(AUDIENCE)}".encode()
    scope = {"type": "http", "path": "/mcp", "headers": [(b"authorization", presented)]}
    for _ in range(3):  # within 5 s of the failure: answered at once, the issuer not asked again
        response = await auth.admit(scope, "127.0.0.1")
        assert isinstance(response, Response) and response.status_code == 503
        assert b"cannot fetch the issuer's keys" in response.body
    assert len(attempts) == 1 and refusals == ["keys_unavailable"] * 3
    await trio.sleep(5)
    assert isinstance(await auth.admit(scope, "127.0.0.1"), Response) and len(attempts) == 2


async def test_claims_and_key_types() -> None:
    issuer = TestIssuer()
    document = issuer.jwks()
    verifier = verifier_for(issuer, document, [])
    now = time.time()
    ok = [issuer.token(AUDIENCE, lifetime=-10),  # expired 10 s ago: within the 30 s leeway
          issuer.token(AUDIENCE, not_before=now + 10),
          issuer.token(AUDIENCE, aud=[AUDIENCE, "https://other.example.org/mcp"]),
          issuer.token(AUDIENCE, alg="EdDSA")]
    for token in ok:
        assert (await verifier.verify(token)).resource == AUDIENCE
    access = await verifier.verify(issuer.token(AUDIENCE, scopes=None, scp=["mcp", "files.read"], client_id=None,
                                                azp="desk"))
    assert (access.scopes, access.client_id) == (["mcp", "files.read"], "desk")
    cases = {
        issuer.token(AUDIENCE, not_before=now + 300): "not_yet_valid",
        issuer.token(AUDIENCE, lifetime=-100): "expired",
        issuer.token(AUDIENCE + "/"): "audience",
        issuer.token(AUDIENCE, kid="ed-1"): "algorithm",  # an RS256 token naming the Ed25519 key
        issuer.token(AUDIENCE, alg="ES256", key=ec.generate_private_key(ec.SECP256R1())): "algorithm",
        issuer.token(AUDIENCE, alg="RS256", key=rsa.generate_private_key(public_exponent=65537, key_size=2048)):
            "signature",
        issuer.token(AUDIENCE, subject="x" * 300): "claims",
    }
    for token, reason in cases.items():
        assert await refused(verifier, token) == reason, reason
    # Without "alg" in the JWKS, the key's type decides: PS256 fits the RSA key, RS256 not the Ed25519 one.
    for key in document["keys"]:
        del key["alg"]
    bare = verifier_for(issuer, document, [])
    assert (await bare.verify(issuer.token(AUDIENCE, alg="PS256"))).subject == "alice@example.org"
    assert await refused(bare, issuer.token(AUDIENCE, kid="ed-1")) == "algorithm"
    narrow = verifier_for(issuer, issuer.jwks(), [], algorithms=("EdDSA",))
    assert await refused(narrow, issuer.token(AUDIENCE)) == "algorithm"


async def test_static_tokens_and_no_authentication() -> None:
    named = ClientsConfig(tokens=(NamedToken(Secret(STATIC), "ops"), NamedToken(Secret("unnamed-token-0123456789"))))
    auth = ClientAuth("node-a", named)

    def scope(token: str | None, path: str = "/mcp") -> dict[str, Any]:
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        return {"type": "http", "path": path, "headers": headers}

    admitted = await auth.admit(scope(STATIC), "10.0.0.1")
    assert not isinstance(admitted, Response)
    assert admitted[0] == Caller(entry="node-a", kind="token", subject="ops") and STATIC not in admitted[1]
    admitted = await auth.admit(scope("unnamed-token-0123456789"), "10.0.0.1")
    assert not isinstance(admitted, Response) and admitted[0] == Caller(entry="node-a", kind="anonymous")
    refusal = await auth.admit(scope("wrong-token-0123456789"), "10.0.0.1")
    assert isinstance(refusal, Response) and refusal.status_code == 401
    assert refusal.headers["www-authenticate"] == 'Bearer realm="fednode", error="invalid_token"'
    assert not isinstance(await auth.admit(scope(None, "/healthz"), "10.0.0.1"), Response)
    auth.update(ClientsConfig())  # a reload that removes the tokens
    assert await auth.admit(scope(None), "10.0.0.1") == (Caller(entry="node-a"), "address:10.0.0.1")


def test_configuration_problems_name_their_keys() -> None:
    raw = raw_config("node-a", clients={
        "tokens": ["short", {"token": STATIC, "name": ""}, 7],
        "oauth": {"issuer": "http://idp.example.org", "jwks": "missing.json", "audience": "ftp://x",
                  "algorithms": ["RS256", "HS256"], "leeway": "1h", "scope": ["mcp"]}})
    with pytest.raises(fednode.ConfigError) as caught:
        fednode.NodeConfig.from_mapping(raw)
    problems = dict(caught.value.problems)
    assert set(problems) == {"clients.tokens[0].token", "clients.tokens[1].name", "clients.tokens[2]",
                             "clients.oauth.issuer", "clients.oauth.jwks", "clients.oauth.audience",
                             "clients.oauth.algorithms", "clients.oauth.leeway", "clients.oauth.scope"}
    assert "HMAC" in problems["clients.oauth.algorithms"] and "https" in problems["clients.oauth.issuer"]
    for algorithm in ("none", "HS512"):
        raw = raw_config("node-a", clients={"oauth": {"issuer": "https://idp.example.org", "algorithms": [algorithm]}})
        with pytest.raises(fednode.ConfigError, match=r"clients\.oauth\.algorithms"):
            fednode.NodeConfig.from_mapping(raw)
    config = fednode.NodeConfig.from_mapping(raw_config("node-a", clients={
        "tokens": [STATIC, {"token": "unnamed-token-0123456789"}],
        "oauth": {"issuer": "https://idp.example.org", "audience": "https://node-a.example.org/mcp"}}))
    assert [t.name for t in config.clients.tokens] == [None, None]
    assert config.clients.oauth is not None and config.clients.oauth.leeway == 30.0
    assert "EdDSA" in config.clients.oauth.algorithms and "HS256" not in config.clients.oauth.algorithms
    summary = describe(config)  # fednode check-config: what authenticates clients, never a token
    assert "clients   2 static token(s), 0 named; oauth from 'https://idp.example.org'" in summary
    assert STATIC not in summary


async def test_reload_applies_oauth_at_once() -> None:
    """``[clients.oauth]`` added, changed and removed by a reload applies to the next request."""
    issuer = TestIssuer()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(issuer.serve)
            raw = raw_config("node-a")
            async with fednode.open_node(fednode.NodeConfig.from_mapping(raw)) as a, \
                    httpx2.AsyncClient(timeout=30) as http:
                async def status(token: str | None = None) -> int:
                    auth = {"Authorization": f"Bearer {token}"} if token else {}
                    return (await http.post(a.mcp_url, json=LIST, headers=HEADERS | auth)).status_code

                assert await status() == 200
                raw["clients"] = {"oauth": {"issuer": issuer.url, "scopes": ["mcp"]}}
                await a.reload(fednode.NodeConfig.from_mapping(raw))
                assert await status() == 401
                assert await status(issuer.token(a.mcp_url)) == 200
                raw["clients"]["oauth"]["scopes"] = ["files.read"]
                await a.reload(fednode.NodeConfig.from_mapping(raw))
                assert await status(issuer.token(a.mcp_url)) == 403
                raw["clients"] = {}
                await a.reload(fednode.NodeConfig.from_mapping(raw))
                assert await status() == 200
                assert (await http.get(a.data_url + "/.well-known/oauth-protected-resource")).status_code == 404
            nursery.cancel_scope.cancel()


async def test_oauth_callers_are_rate_limited_per_subject() -> None:
    """The rate key of an OAuth caller is its issuer and subject (and client), hashed: a new token of the
    same subject shares its budget, another subject has its own, and the key shows neither."""
    issuer = TestIssuer()
    auth = ClientAuth("node-a", ClientsConfig(oauth=OAuthConfig(issuer=issuer.url)), resource=lambda: AUDIENCE)
    assert auth.verifier is not None
    auth.verifier.keys = KeySet(lambda: _document(issuer))

    async def key(token: str) -> str:
        admitted = await auth.admit({"type": "http", "path": "/mcp",
                                     "headers": [(b"authorization", f"Bearer {token}".encode())]}, "10.0.0.1")
        assert not isinstance(admitted, Response)
        return admitted[1]

    alice = await key(issuer.token(AUDIENCE, subject="alice@example.org"))
    assert alice == await key(issuer.token(AUDIENCE, subject="alice@example.org", lifetime=600, alg="EdDSA"))
    assert alice != await key(issuer.token(AUDIENCE, subject="bob@example.org"))
    assert alice.startswith("oauth:") and "alice" not in alice


async def _document(issuer: TestIssuer) -> Any:
    return issuer.jwks()


async def test_keys_from_a_file_and_unreachable_keys_over_http(tmp_path: Path) -> None:
    """``jwks`` as a file; ``jwks`` at an address nobody answers: 503 with a clear message, the node carries on."""
    issuer = TestIssuer()
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(issuer.jwks()))
    idp = "https://idp.example.org"  # never asked: the keys are in the file
    raw = raw_config("node-a", clients={"oauth": {"issuer": idp, "jwks": str(jwks_file)}})
    with trio.fail_after(60):
        async with fednode.open_node(fednode.NodeConfig.from_mapping(raw)) as a, \
                httpx2.AsyncClient(timeout=30) as http:
            async def post(token: str) -> httpx2.Response:
                return await http.post(a.mcp_url, json=LIST, headers=HEADERS | {"Authorization": f"Bearer {token}"})

            assert (await post(issuer.token(a.mcp_url, alg="EdDSA", issuer=idp))).status_code == 200
            raw["clients"]["oauth"]["jwks"] = "http://127.0.0.1:1/jwks.json"  # nothing listens on port 1
            await a.reload(fednode.NodeConfig.from_mapping(raw))
            response = await post(issuer.token(a.mcp_url, issuer=idp))
            assert response.status_code == 503 and response.headers["retry-after"] == "5"
            assert "cannot fetch the issuer's keys: http://127.0.0.1:1/jwks.json" in response.text
            assert (await http.get(a.data_url + "/healthz")).status_code == 200
            # Behind a proxy the resource may have another path: its metadata is served there too.
            raw["clients"]["oauth"]["audience"] = "https://node-a.example.org/tenant/mcp"
            await a.reload(fednode.NodeConfig.from_mapping(raw))
            response = await http.post(a.mcp_url, json=LIST, headers=HEADERS)
            metadata_url = challenge(response)["resource_metadata"]
            assert metadata_url == "https://node-a.example.org/.well-known/oauth-protected-resource/tenant/mcp"
            metadata = (await http.get(a.data_url + "/.well-known/oauth-protected-resource/tenant/mcp")).json()
            assert metadata["resource"] == "https://node-a.example.org/tenant/mcp"


async def test_an_oauth_subject_two_hops_away_meets_the_owners_policy() -> None:
    """node-a (OAuth) - node-b - node-c, whose server allows ``sub:*@example.org`` only: alice's token
    lists and calls it from node-a; mallory's neither sees it nor may call it."""
    issuer = TestIssuer()
    fx = fednode.ServerConfig(id="fx", command=sys.executable, args=(FIXTURE,), callers=("sub:*@example.org",))
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(issuer.serve)
            async with fednode.open_node(node_config("node-a", clients=oauth_clients(issuer))) as a, \
                    fednode.open_node(node_config("node-b")) as b, fednode.open_node(node_config("node-c")) as c:
                for left, right in ((a, b), (b, c)):
                    await right.register_peer(fednode.PeerConfig(id=left.id), wait=False)
                    await left.register_peer(fednode.PeerConfig(id=right.id, control=right.control_url))
                await c.add_server(fx, timeout=60)
                await a.federation.wait_for("fx__add", timeout=60)
                url = a.mcp_url
                assert await call_add(url, bearer(issuer.token(url, subject="alice@example.org"))) == 42
                http_client = bearer(issuer.token(url, subject="mallory@evil.example"))
                async with http_client, Client(streamable_http_client(url, http_client=http_client),
                                               mode="2026-07-28", cache=None) as client:
                    assert "fx__add" not in {t.name for t in (await client.list_tools()).tools}
                    with pytest.raises(MCPError) as refused:
                        await client.call_tool("fx__add", {"a": 1, "b": 2})
                    assert refused.value.error.code == FORBIDDEN
            nursery.cancel_scope.cancel()


async def test_the_verifier_is_the_sdks_token_verifier() -> None:
    """OAuthVerifier is the SDK's ``TokenVerifier``: its bearer backend accepts and refuses with it."""
    issuer = TestIssuer()
    backend = BearerAuthBackend(verifier_for(issuer, issuer.jwks(), []))

    def connection(token: str) -> HTTPConnection:
        return HTTPConnection({"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())]})

    authenticated = await backend.authenticate(connection(issuer.token(AUDIENCE, alg="EdDSA")))
    assert authenticated is not None
    credentials, user = authenticated
    assert credentials.scopes == ["mcp"] and user.access_token.subject == "alice@example.org"  # type: ignore[attr-defined]
    assert await backend.authenticate(connection(issuer.token("https://other.example.org/mcp"))) is None


async def test_keys_found_from_the_issuers_metadata() -> None:
    """RFC 8414 metadata first, then OpenID Connect discovery; metadata naming another issuer, or keys at
    a plain http:// address off loopback, are not followed."""
    idp = "https://idp.example.org/tenant"
    assert metadata_urls(idp) == ["https://idp.example.org/.well-known/oauth-authorization-server/tenant",
                                  "https://idp.example.org/tenant/.well-known/openid-configuration"]
    documents: dict[str, Any] = {metadata_urls(idp)[1]: {"issuer": idp, "jwks_uri": "https://keys.example.org/k"},
                                 "https://keys.example.org/k": {"keys": []}}
    asked: list[str] = []

    async def fetch(url: str) -> Any:
        asked.append(url)
        if url not in documents:
            raise FetchError(f"{url}: HTTP 404")
        return documents[url]

    load = jwks_loader(OAuthConfig(issuer=idp), fetch)
    assert await load() == {"keys": []}
    assert asked == [*metadata_urls(idp), "https://keys.example.org/k"]
    documents[metadata_urls(idp)[1]] = {"issuer": "https://evil.example.org", "jwks_uri": "https://keys.example.org/k"}
    with pytest.raises(FetchError, match="its issuer is not"):
        await load()
    documents[metadata_urls(idp)[1]] = {"issuer": idp, "jwks_uri": "http://keys.example.org/k"}
    with pytest.raises(FetchError, match="no https jwks_uri"):
        await load()


async def test_fetched_documents_are_bounded() -> None:
    """A JWKS or metadata document is read up to a size, only from a 200, and must be JSON."""
    async def huge(request: Any) -> Response:
        return PlainTextResponse("x" * 2_000_000)

    async def missing(request: Any) -> Response:
        return PlainTextResponse("no", status_code=404)

    async def redirect(request: Any) -> Response:
        return Response(status_code=302, headers={"Location": "/huge"})

    app = Starlette(routes=[Route("/huge", huge), Route("/missing", missing), Route("/redirect", redirect)])
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            base = f"http://127.0.0.1:{await nursery.start(serve_app, app)}"
            for path, problem in (("/huge", "larger than 524288 bytes"), ("/missing", "HTTP 404"),
                                  ("/redirect", "HTTP 302")):
                with pytest.raises(FetchError, match=problem):
                    await fetch_json(base + path)
            with pytest.raises(FetchError, match="not JSON"):
                await fetch_json(base + "/huge", max_bytes=3_000_000)
            nursery.cancel_scope.cancel()
