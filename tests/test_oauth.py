"""OAuth 2.1 at ``{data}/mcp``: a real `fednode run` process as a resource server, the tests' own issuer.

An SDK client with a bearer token from :class:`~oauth_issuer.TestIssuer` calls tools; tokens for
another audience, expired, from another issuer, with an unknown key, ``alg: none`` or HMAC with the
public key are refused with 401; a missing scope with 403; a client with no token finds the
authorization server from the 401 alone. The client's token reaches neither an attached server nor
a peer. The verifier's own rules (key rotation and its refetch limit) run under MockClock.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
import trio
from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

import fednode

from conftest import SECRET
from oauth_issuer import RSA_KID, TestIssuer
from test_cli_run import read_events

FEDNODE = str(Path(sys.executable).parent / "fednode")
FIXTURE = str(Path(__file__).parent / "mcp_fixtures" / "test_server.py")
STATIC = "static-token-0123456789"
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28",
           "Mcp-Method": "tools/list"}


def node_toml(node_id: str, issuer: TestIssuer, extra: str = "") -> str:
    """A node's configuration: OAuth from ``issuer`` (keys found from its metadata), a named static token."""
    return (f'[node]\nid = "{node_id}"\ncontrol = "ws://127.0.0.1:0"\ndata = "http://127.0.0.1:0"\n'
            'shutdown_grace = "2s"\n[auth]\nsecret = "${TEST_SECRET}"\n'
            '[heartbeat]\ninterval = "0.5s"\ntimeout = "30s"\n'
            f'[clients]\ntokens = [{{ token = "{STATIC}", name = "ops" }}]\n'
            f'[clients.oauth]\nissuer = "{issuer.url}"\nscopes = ["mcp"]\n{extra}')


@asynccontextmanager
async def fednode_run(path: Path) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """`fednode run` as a child process; yields its ``{data}/mcp`` URL and its log events (live)."""
    events: list[dict[str, Any]] = []
    process = await trio.lowlevel.open_process(
        [FEDNODE, "run", "--config", str(path)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL, env={"TEST_SECRET": SECRET, "PATH": "/usr/bin:/bin"})
    try:
        async with trio.open_nursery() as nursery:
            assert process.stderr is not None
            nursery.start_soon(read_events, process.stderr, events)
            with trio.fail_after(60):
                while not any(e["event"] == "node.started" for e in events):
                    await trio.sleep(0.02)
            yield next(str(e["url"]) for e in events if e["event"] == "edge.listening"), events
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:  # only the process this test started, by its own handle
            process.kill()
            await process.wait()


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
    from cryptography.hazmat.primitives import serialization
    public = issuer.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    good = issuer.token(audience)
    payload = jwt.decode(good, options={"verify_signature": False})
    # PyJWT refuses to MAC with a PEM key, so the forgery is made by hand, as an attacker would.
    import hashlib
    import hmac

    from jwt.utils import base64url_encode
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
            path.write_text(node_toml("node-a", issuer, f'[[servers]]\nid = "fx"\ncommand = {json.dumps(sys.executable)}\n'
                                      f'args = [{json.dumps(FIXTURE)}]\n'))
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
