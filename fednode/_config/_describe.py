"""A configuration as a human reads it (``fednode check-config``): what it says, free of secrets."""

from __future__ import annotations

from ._config import NodeConfig
from ._config_load import shown_url


def describe(config: NodeConfig) -> str:
    """A human-readable summary of a configuration, free of secrets (for ``check-config``)."""
    auth = config.auth
    keys = (f"{len(auth.secrets)} shared secret(s)" if auth.algorithm == "HS512"
            else "Ed25519 key pair")
    lines = [
        f"node {config.id}",
        f"  control   {config.control}",
        f"  data      {config.data}",
        f"  auth      jwt {auth.algorithm}, {keys}, token ttl {auth.token_ttl:g}s, leeway {auth.leeway:g}s",
        f"  heartbeat every {config.heartbeat.interval:g}s, dead after {config.heartbeat.timeout:g}s",
        f"  backoff   {config.backoff.initial:g}s .. {config.backoff.max:g}s (full jitter)",
        f"  peers     {len(config.peers)}",
    ]
    if config.state_dir is not None:
        lines.insert(-1, f"  state     {config.state_dir} (pinned definitions)")
    for peer in config.peers:
        how = f"dial {peer.control}" if peer.control else "dials in only"
        own = ""
        if peer.secrets:
            own = f", own secret ({len(peer.secrets)})"
        elif peer.public_keys:
            own = f", {len(peer.public_keys)} public key(s)"
        vouch = ", vouches for others' routes" if peer.vouch else ""
        pin = ", definitions not pinned" if not peer.pin else ""
        lines.append(f"    - {peer.id}: {how}{own}{vouch}{pin}")
    if config.nodes:
        lines.append(f"  nodes     {len(config.nodes)} (keys of nodes that are not peers)")
    lines.append(f"  servers   {len(config.servers)}")
    for server in config.servers:
        # Arguments and URLs can carry credentials: show the command only, and URLs masked.
        what = (f"stdio: {server.command} (+{len(server.args)} args)" if server.command
                else f"http: {shown_url(server.url or '')}")
        pin = ", definitions not pinned" if not server.pin else ""
        lines.append(f"    - {server.id}: {what} (prefix {server.exposed_prefix!r}{pin})")
    clients = config.clients
    if clients.authenticated:
        named = sum(1 for token in clients.tokens if token.name is not None)
        ways = [f"{len(clients.tokens)} static token(s), {named} named"] if clients.tokens else []
        if clients.oauth is not None:
            oauth = clients.oauth
            ways.append(f"oauth from {shown_url(oauth.issuer)}, audience "
                       f"{shown_url(oauth.audience) if oauth.audience else '{data}/mcp'}, "
                       f"scopes {' '.join(oauth.scopes) or '(none)'}")
        lines.append(f"  clients   {'; '.join(ways)}")
    if config.audit.path is not None:
        lines.append(f"  audit     {config.audit.path}")
    return "\n".join(lines)
