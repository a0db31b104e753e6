"""Configuration: the attrs models, loading from TOML or JSON, and the checks across fields.

Each field's type says what a file may give for it (``Annotated[float, Duration()]``); cattrs
structures the file with those rules (see :mod:`fednode._config._config_load`), reporting every problem with
its key path (``peers[1].control``) and all of them at once. The checks that involve several fields
or sections (duplicate ids, command or url, EdDSA needs keys) run afterwards on whatever structured
cleanly, so they are reported together with the rest. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .._errors import ConfigError, InvalidValue
from ._audit_config import AuditConfig
from ._callers import MAX_RULES, CallerRules, rule_problem
from ._config_load import (
    Duration,
    FilePath,
    Loader,
    RateRule,
    StringTable,
    at_least,
    min_length,
    one_of,
    pattern,
    unknown_keys,
    url_of,
    url_problem,
)
from ._config_load import Rate as Rate
from ._config_load import Secret as Secret
from ._config_load import parse_duration as parse_duration
from ._config_load import parse_rate as parse_rate
from ._export_rules import SERVER_ID_RE as SERVER_ID_RE
from ._export_rules import NameRules, PeerRules
from ._export_rules import problems as rule_problems
from ._oauth_config import OAuthConfig, TokenItem

NODE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MIN_HS512_SECRET_BYTES = 64
#: Longest link-token lifetime; peers refuse tokens that live longer.
MAX_TOKEN_TTL = 3600.0
MAX_REQUEST_TIMEOUT = 86400.0  # longest deadline of a forwarded request: a day
MAX_FIRST_LIST_WAIT = 300.0  # longest a client's first list may be held at start-up
ALGORITHMS = ("HS512", "EdDSA")
CALLER_TRUST = ("any", "own", "none")  # [[peers]] callers

# What the file may give, as field types (see fednode._config._config_load for the rules).
NodeId = Annotated[str, pattern(NODE_ID_RE, "must match [a-z0-9][a-z0-9-]{0,62}")]
WsUrl = Annotated[str, url_of(("ws", "wss"))]
HttpUrl = Annotated[str, url_of(("http", "https"))]
Seconds = Annotated[float, Duration()]
UpToADay = Annotated[float, Duration(at_most=MAX_REQUEST_TIMEOUT)]
HS512Secret = Annotated[Secret, min_length(
    MIN_HS512_SECRET_BYTES, "HS512 secret is {length} bytes; at least {minimum} are required (make one with: "
    "python3 -c 'import secrets; print(secrets.token_urlsafe(64))')")]
ReadableFile = Annotated[Path, FilePath(readable=True)]
RateLimit = Annotated[Rate, RateRule()]

#: Requests a peer may send by default: several times what a busy link carries on a small machine
#: (about 260 forwarded calls a second through one link in the MCP benchmark).
DEFAULT_PEER_RATE = Rate(60_000, 60.0)
#: Requests one client token (or, without tokens, one source address) may send by default.
DEFAULT_CLIENT_RATE = Rate(6_000, 60.0)
#: Concurrent HTTP connections (requests and streams in progress) per source address by default.
DEFAULT_MAX_CONNECTIONS = 100


def public_key_kid(key: Ed25519PublicKey) -> str:
    """The kid of an Ed25519 public key: a truncated hash of its raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed-" + hashlib.sha256(raw).hexdigest()[:16]


def _check_id(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not NODE_ID_RE.match(value):
        raise ValueError(f"{attribute.name} {value!r} must match [a-z0-9][a-z0-9-]{{0,62}}")


def _check_ws_url(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None:
        error = url_problem(value, ("ws", "wss"), allow_port_zero=False)
        if error:
            raise ValueError(f"{attribute.name}: {error}")


@attrs.frozen
class PeerConfig(PeerRules):
    """One peer of this node.

    Attributes:
        id: the peer's node id.
        control: the peer's control URL (``ws://`` or ``wss://``); ``None`` for a peer that only dials in.
        secrets: HS512 secrets for this pair (the first signs, all verify); empty = use ``[auth]``'s.
        public_keys: EdDSA public keys of the peer (any verifies).
        export: what this node shares with the peer (None = all): server ids, ``server.glob`` for
            tools and prompts, ``!`` in front to exclude (see :mod:`fednode._config._export_rules`).
        import_: what this node accepts from the peer (None = all), written as ``export``.
        transit: whether routes learned from other peers are re-advertised to this peer.
        rate: requests this peer may send (each over it is answered with a rate-limit error).
        vouch: whether routes from this peer whose origin or path cannot be verified are accepted on
            its word (and passed on signed by this node) instead of refused.
        pin: whether the definitions learned from this peer are pinned (a changed one held until accepted).
        callers: whose identity this peer is believed about in the requests it sends: ``any`` (every
            caller whose entry node's signed statement verifies), ``own`` (only callers whose entry
            node is the peer itself) or ``none`` (every caller arriving through it is ``node:<peer>``).
    """

    id: str = attrs.field(validator=_check_id)
    control: str | None = attrs.field(default=None, validator=_check_ws_url)
    secrets: tuple[Secret, ...] = attrs.field(default=(), repr=False)
    public_keys: tuple[Ed25519PublicKey, ...] = attrs.field(default=(), repr=False)
    export: tuple[str, ...] | None = None
    import_: tuple[str, ...] | None = None
    transit: bool = True
    vouch: bool = False
    rate: Rate = DEFAULT_PEER_RATE
    pin: bool = True
    callers: str = "any"
    #: ``export`` and ``import_`` parsed (see :class:`PeerRules`, which decides with them)
    export_rules: NameRules | None = attrs.field(init=False, eq=False, repr=False)
    import_rules: NameRules | None = attrs.field(init=False, eq=False, repr=False)


@attrs.frozen
class NodeKeys:
    """The keys of a node this node does not link to (``[[nodes]]``), whose routes it may receive through others.

    Attributes:
        id: the node's id.
        secrets: HS512 secrets that node signs with (its ``[auth]`` secret; any verifies).
        public_keys: its Ed25519 public keys (any verifies).
    """

    id: str = attrs.field(validator=_check_id)
    secrets: tuple[Secret, ...] = attrs.field(default=(), repr=False)
    public_keys: tuple[Ed25519PublicKey, ...] = attrs.field(default=(), repr=False)


@attrs.frozen
class ServerConfig:
    """One MCP server attached to this node (``[[servers]]``): a stdio command or a Streamable HTTP URL.

    Attributes:
        id: unique on this node, ``[a-z0-9][a-z0-9_-]{0,31}``; the same id on several nodes = replicas.
        prefix: exposed-name prefix for tools and prompts (``{prefix}__{name}``); None = the id, "" = none.
        timeout: deadline of requests forwarded to this server (None = the node's ``[mcp] request_timeout``).
        ping_interval: seconds between liveness pings while the server is up (0 = never ping).
        ping_timeout: a ping unanswered this long marks the server down: routes withdrawn, restarted.
        max_connections: connections this node keeps to the server at most, its shared one included:
            the others are opened for legacy client sessions and for calls whose server may ask
            their client a question, at most half of them for the callers arriving through any one
            peer (or this node's own clients); callers beyond that share the shared connection.
        pin: whether its tool and prompt definitions are pinned (a changed one is held until accepted).
        callers: who may use this server (see :class:`~fednode._config._callers.CallerRules`);
            None: everybody this node serves. Advertised with its routes, so other nodes hide its
            items from callers it would refuse.
    """

    id: Annotated[str, pattern(SERVER_ID_RE, "must match [a-z0-9][a-z0-9_-]{0,31}")]
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Annotated[tuple[tuple[str, str], ...], StringTable()] = attrs.field(default=(), repr=False)
    cwd: Annotated[str, FilePath()] | None = None
    url: HttpUrl | None = None
    headers: Annotated[tuple[tuple[str, str], ...], StringTable()] = attrs.field(default=(), repr=False)
    prefix: Annotated[str, pattern(re.compile(r"^(?:[A-Za-z0-9_.-]{1,64})?$"),
                                   "must be 1-64 characters of A-Z a-z 0-9 _ - . (or \"\")")] | None = None
    timeout: UpToADay | None = None
    ping_interval: Annotated[float, Duration(positive=False, at_most=MAX_REQUEST_TIMEOUT)] = 30.0
    ping_timeout: UpToADay = 10.0
    max_connections: Annotated[int, at_least(1)] = 8
    pin: bool = True
    callers: tuple[str, ...] | None = None

    @property
    def caller_rules(self) -> CallerRules:
        """``callers`` as rules (checked when the configuration was loaded)."""
        return CallerRules(self.callers)

    @property
    def exposed_prefix(self) -> str:
        """The prefix actually used: the configured one, or the id."""
        return self.id if self.prefix is None else self.prefix


@attrs.frozen
class MCPConfig:
    """MCP federation settings (``[mcp]``)."""

    request_timeout: UpToADay = 60.0
    transit: bool = True
    #: how long after start-up a client's list may be held until the federation has settled
    #: (0: never held)
    first_list_wait: Annotated[float, Duration(positive=False, at_most=MAX_FIRST_LIST_WAIT,
                                               too_long="must be between 0s and {limit:g}s")] = 10.0


@attrs.frozen
class ClientsConfig:
    """MCP client access (``[clients]``): a bearer token is required on ``{data}/mcp`` when tokens or
    ``oauth`` are set.

    Attributes:
        tokens: the static client tokens, each maybe named (none, and no ``oauth``: no token needed).
        oauth: JWT access tokens from an OAuth issuer (see :mod:`fednode._config._oauth_config`).
        rate: requests per client token, or per source address when no tokens are configured.
        max_connections: concurrent HTTP connections per source address.
    """

    tokens: tuple[TokenItem, ...] = attrs.field(default=(), repr=False)
    rate: RateLimit = DEFAULT_CLIENT_RATE
    max_connections: Annotated[int, at_least(1)] = DEFAULT_MAX_CONNECTIONS
    oauth: OAuthConfig | None = None

    @property
    def authenticated(self) -> bool:
        """Whether clients must present a token."""
        return bool(self.tokens) or self.oauth is not None


@attrs.frozen
class AuthConfig:
    """How links are authenticated (``[auth]``)."""

    algorithm: str = "HS512"
    secrets: tuple[Secret, ...] = attrs.field(default=(), repr=False)
    private_key: Ed25519PrivateKey | None = attrs.field(default=None, repr=False)
    token_ttl: float = 60.0
    leeway: float = 5.0


@attrs.frozen
class HeartbeatConfig:
    """Link liveness (``[heartbeat]``): ping every ``interval``; no pong for ``timeout`` = dead."""

    interval: Seconds = 5.0
    timeout: Seconds = 15.0


@attrs.frozen
class BackoffConfig:
    """Reconnect backoff (``[backoff]``): full jitter, doubling from ``initial`` up to ``max``.

    The attempt counter starts over after a link (or an attached server) stayed up for ``reset_after``.
    A peer link that ended sooner sets it to the number of such links in a row, less one (see
    :meth:`fednode.Backoff.link_ended`): the first redial is quick, a peer that keeps dropping waits longer.
    """

    initial: Seconds = 0.5
    max: Seconds = 30.0
    multiplier: Annotated[float, at_least(1.0)] = 2.0
    reset_after: Seconds = 10.0


@attrs.frozen
class LinkConfig:
    """Per-link limits (``[link]``)."""

    handshake_timeout: Seconds = 5.0
    max_message_size: Annotated[int, at_least(1024)] = 1024 * 1024
    max_protocol_errors: Annotated[int, at_least(1)] = 10
    max_inflight: Annotated[int, at_least(1)] = 128


@attrs.frozen
class TLSConfig:
    """TLS material (``[tls]``): cert/key for a wss:// listener, CA file for dialing wss:// peers."""

    cert: ReadableFile | None = None
    key: ReadableFile | None = None
    ca: ReadableFile | None = None


@attrs.frozen
class NodeConfig:
    """A whole node's configuration. Build one with :func:`load_config` or :meth:`from_mapping`."""

    id: str = attrs.field(validator=_check_id)
    control: str = "ws://127.0.0.1:0"
    data: str = "http://127.0.0.1:0"
    shutdown_grace: float = 5.0
    state_dir: Path | None = None  # where pinned definitions are kept (None: in memory only)
    auth: AuthConfig = attrs.field(factory=AuthConfig)
    heartbeat: HeartbeatConfig = attrs.field(factory=HeartbeatConfig)
    backoff: BackoffConfig = attrs.field(factory=BackoffConfig)
    link: LinkConfig = attrs.field(factory=LinkConfig)
    tls: TLSConfig = attrs.field(factory=TLSConfig)
    peers: tuple[PeerConfig, ...] = ()
    nodes: tuple[NodeKeys, ...] = ()
    servers: tuple[ServerConfig, ...] = ()
    mcp: MCPConfig = attrs.field(factory=MCPConfig)
    clients: ClientsConfig = attrs.field(factory=ClientsConfig)
    audit: AuditConfig = attrs.field(factory=AuditConfig)
    source: str = attrs.field(default="<config>", eq=False)

    @classmethod
    def from_mapping(
        cls,
        raw: Mapping[str, Any],
        *,
        source: str = "<config>",
        base_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> NodeConfig:
        """Validate a raw mapping (as parsed from TOML or JSON) into a NodeConfig.

        Raises:
            ConfigError: listing every problem found, each with its key path.
        """
        loader = Loader(os.environ if environ is None else environ, base_dir or Path.cwd())
        return _build(loader, raw, source)


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Load and validate a ``.toml`` or ``.json`` configuration file.

    Raises:
        ConfigError: the file cannot be read or parsed, or has problems (all of them listed).
    """
    file = Path(path)
    source = str(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(source, [("", f"cannot read file: {detail}")]) from None
    raw: Any
    if file.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            raise ConfigError(source, [("", f"invalid JSON at {where}: {exc.msg}")]) from None
        except (ValueError, RecursionError) as exc:  # e.g. an integer too long to convert
            raise ConfigError(source, [("", f"invalid JSON: {str(exc)[:200]}")]) from None
    else:
        try:
            raw = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError) as exc:
            raise ConfigError(source, [("", f"invalid TOML: {exc}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, [("", "the top level must be a table/object")])
    return NodeConfig.from_mapping(raw, source=source, base_dir=file.resolve().parent, environ=environ)


# -- the file's own shape, where it differs from the models -------------------------------------


@attrs.frozen
class _NodeSection:
    """``[node]``: its values are the top-level fields of :class:`NodeConfig`."""

    id: NodeId
    control: Annotated[str, url_of(("ws", "wss"), own=True)] = "ws://127.0.0.1:0"
    data: Annotated[str, url_of(("http", "https"), own=True)] = "http://127.0.0.1:0"
    shutdown_grace: Seconds = 5.0
    state_dir: Annotated[Path, FilePath()] | None = None


@attrs.frozen
class _AuthSection:
    """``[auth]`` as written: one ``secret`` or a list of ``secrets``, the private key as a file."""

    type: Annotated[str, one_of(("jwt",), "unsupported auth type {value!r}; only \"jwt\" is supported")] = "jwt"
    algorithm: Annotated[str, one_of(ALGORITHMS, "unsupported algorithm {value!r}; use HS512 or EdDSA")] = "HS512"
    secret: HS512Secret | None = None
    secrets: tuple[HS512Secret, ...] | None = None
    private_key: Annotated[Path, FilePath()] | None = None
    token_ttl: Annotated[float, Duration(at_most=MAX_TOKEN_TTL, too_long="must be at most {limit:g}s, got {value:g}s")
                         ] = 60.0
    leeway: Annotated[float, Duration(positive=False)] = 5.0


@attrs.frozen
class _PeerEntry:
    """``[[peers]]`` as written: ``secret``/``secrets``, ``public_key``/``public_keys``, ``import``."""

    id: NodeId
    control: WsUrl | None = None
    secret: HS512Secret | None = None
    secrets: tuple[HS512Secret, ...] | None = None
    public_key: Ed25519PublicKey | None = None
    public_keys: tuple[Ed25519PublicKey, ...] | None = None
    export: tuple[str, ...] | None = None
    import_: tuple[str, ...] | None = attrs.field(default=None, metadata={"key": "import"})
    transit: bool = True
    vouch: bool = False
    rate: RateLimit = DEFAULT_PEER_RATE
    pin: bool = True
    callers: Annotated[str, one_of(CALLER_TRUST, "callers must be one of \"any\", \"own\", \"none\"; "
                                                 "got {value!r}")] = "any"


@attrs.frozen
class _NodeEntry:
    """``[[nodes]]`` as written: a node's ``secret``/``secrets`` or ``public_key``/``public_keys``."""

    id: NodeId
    secret: HS512Secret | None = None
    secrets: tuple[HS512Secret, ...] | None = None
    public_key: Ed25519PublicKey | None = None
    public_keys: tuple[Ed25519PublicKey, ...] | None = None


_SECTIONS = ("node", "auth", "heartbeat", "backoff", "link", "tls", "peers", "nodes", "servers", "mcp", "clients",
             "audit")


def _build(load: Loader, raw: Mapping[str, Any], source: str) -> NodeConfig:
    """Structure every section of ``raw``, then check across fields; raise with every problem found."""
    load.problems += unknown_keys(list(raw), _SECTIONS, "")
    node = load.structure(raw.get("node", {}), _NodeSection, "node")
    auth_section = load.structure(raw.get("auth", {}), _AuthSection, "auth")
    auth = _auth(load, auth_section)
    heartbeat = load.structure(raw.get("heartbeat", {}), HeartbeatConfig, "heartbeat")
    if heartbeat is not None and heartbeat.timeout <= heartbeat.interval:
        load.problem("heartbeat.timeout", f"must be longer than heartbeat.interval ({heartbeat.interval:g}s)")
    backoff = load.structure(raw.get("backoff", {}), BackoffConfig, "backoff")
    if backoff is not None and backoff.max < backoff.initial:
        load.problem("backoff.max", f"must be >= backoff.initial ({backoff.initial:g}s)")
    link = load.structure(raw.get("link", {}), LinkConfig, "link")
    tls = load.structure(raw.get("tls", {}), TLSConfig, "tls")
    if tls is not None:
        if (tls.cert is None) != (tls.key is None):
            load.problem("tls", "cert and key must be given together")
        if node is not None and node.control.startswith("wss://") and tls.cert is None:
            load.problem("node.control", "a wss:// control address needs [tls] cert and key")
        if node is not None and node.data.startswith("https://") and tls.cert is None:
            load.problem("node.data", "an https:// data address needs [tls] cert and key")
    # A peer with this node's id is reported even when another [node] key has a problem.
    node_table = raw.get("node")
    node_id = node.id if node else node_table.get("id") if isinstance(node_table, dict) else None
    peers = _peers(load, raw, node_id, auth_section)
    nodes = _nodes(load, raw, node_id, peers)
    servers = _servers(load, raw)
    mcp = load.structure(raw.get("mcp", {}), MCPConfig, "mcp")
    clients = load.structure(raw.get("clients", {}), ClientsConfig, "clients")
    audit = load.structure(raw.get("audit", {}), AuditConfig, "audit")
    if (load.problems or node is None or auth is None or heartbeat is None or backoff is None or link is None
            or tls is None or mcp is None or clients is None or audit is None):
        raise ConfigError(source, load.problems or [("node", "incomplete configuration")])
    return NodeConfig(id=node.id, control=node.control, data=node.data, shutdown_grace=node.shutdown_grace,
                      state_dir=node.state_dir, auth=auth, heartbeat=heartbeat, backoff=backoff, link=link, tls=tls,
                      peers=peers, nodes=nodes, servers=servers, mcp=mcp, clients=clients, audit=audit, source=source)


def _secrets(load: Loader, entry: _AuthSection | _PeerEntry | _NodeEntry, path: str) -> tuple[Secret, ...]:
    """The shared secrets of ``[auth]`` or a peer: ``secret`` or ``secrets``, not both, not an empty list."""
    if entry.secret is not None and entry.secrets is not None:
        load.problem(f"{path}.secrets", "give either secret or secrets, not both")
    elif entry.secrets == ():
        load.problem(f"{path}.secrets", "expected a non-empty list of strings")
    return (entry.secret,) if entry.secret is not None else entry.secrets or ()


def _auth(load: Loader, section: _AuthSection | None) -> AuthConfig | None:
    """``[auth]`` as an AuthConfig, with the private key read from its file."""
    if section is None:
        return None
    before = len(load.problems)
    secrets = _secrets(load, section, "auth")
    private_key = None
    if section.algorithm == "EdDSA":
        if secrets:
            load.problem("auth.secret", "EdDSA uses private_key, not shared secrets")
        if section.private_key is None:
            load.problem("auth.private_key", "EdDSA needs this node's private key file")
        else:
            private_key = _private_key(load, section.private_key)
    elif section.private_key is not None:
        load.problem("auth.private_key", "private_key is only used with algorithm = \"EdDSA\"")
    if len(load.problems) > before:
        return None
    return AuthConfig(algorithm=section.algorithm, secrets=secrets, private_key=private_key,
                      token_ttl=section.token_ttl, leeway=section.leeway)


def _private_key(load: Loader, file: Path) -> Ed25519PrivateKey | None:
    try:
        loaded = serialization.load_pem_private_key(load.read(file), password=None)
    except InvalidValue as exc:
        load.problem("auth.private_key", str(exc))
    except (ValueError, TypeError) as exc:
        load.problem("auth.private_key", f"not an unencrypted PEM private key: {exc}")
    else:
        if isinstance(loaded, Ed25519PrivateKey):
            return loaded
        load.problem("auth.private_key", "not an Ed25519 private key")
    return None


def _peers(load: Loader, raw: Mapping[str, Any], node_id: str | None,
           auth: _AuthSection | None) -> tuple[PeerConfig, ...]:
    """``[[peers]]``: each checked against ``[auth]``, none with this node's id, no id twice."""
    result: list[PeerConfig] = []
    seen: dict[str, int] = {}
    for index, _, entry in load.items(raw, "peers", _PeerEntry):
        path = f"peers[{index}]"
        before = len(load.problems)
        secrets = _secrets(load, entry, path)
        keys = (entry.public_key,) if entry.public_key is not None else entry.public_keys or ()
        if auth is not None and auth.algorithm == "HS512":
            for key in ("public_key", "public_keys"):
                if getattr(entry, key) is not None:
                    load.problem(f"{path}.{key}", "public keys are only used with algorithm = \"EdDSA\"")
            if not (secrets or entry.secrets is not None or auth.secret is not None or auth.secrets is not None):
                load.problem(path, "no HS512 secret for this peer: set [auth] secret or this peer's secret")
        elif auth is not None:
            for key in ("secret", "secrets"):
                if getattr(entry, key) is not None:
                    load.problem(f"{path}.{key}", "shared secrets are only used with algorithm = \"HS512\"")
            if entry.public_key is None and entry.public_keys is None:
                load.problem(f"{path}.public_key", "EdDSA needs this peer's public key")
        for key, entries in (("export", entry.export), ("import", entry.import_)):
            for at, why in rule_problems(entries or ()):
                load.problem(f"{path}.{key}[{at}]", why)
        if entry.id == node_id:
            load.problem(f"{path}.id", f"peer id {entry.id!r} is this node's own id")
        elif entry.id in seen:
            load.problem(f"{path}.id", f"duplicate peer id {entry.id!r} (also peers[{seen[entry.id]}])")
        if len(load.problems) == before:
            seen[entry.id] = index
            result.append(PeerConfig(id=entry.id, control=entry.control, secrets=secrets, public_keys=keys,
                                     export=entry.export, import_=entry.import_, transit=entry.transit,
                                     vouch=entry.vouch, rate=entry.rate, callers=entry.callers, pin=entry.pin))
    return tuple(result)


def _nodes(load: Loader, raw: Mapping[str, Any], node_id: str | None,
           peers: tuple[PeerConfig, ...]) -> tuple[NodeKeys, ...]:
    """``[[nodes]]``: keys of nodes that are not peers; secrets or public keys (not both), no id twice."""
    result: list[NodeKeys] = []
    seen: dict[str, int] = {}
    peer_ids = {peer.id for peer in peers}
    for index, _, entry in load.items(raw, "nodes", _NodeEntry):
        path = f"nodes[{index}]"
        before = len(load.problems)
        secrets = _secrets(load, entry, path)
        if entry.public_key is not None and entry.public_keys is not None:
            load.problem(f"{path}.public_keys", "give either public_key or public_keys, not both")
        elif entry.public_keys == ():
            load.problem(f"{path}.public_keys", "expected a non-empty list of public keys")
        keys = (entry.public_key,) if entry.public_key is not None else entry.public_keys or ()
        if secrets and keys:
            load.problem(path, "give either a secret (HS512) or a public key (Ed25519), not both")
        elif not secrets and not keys and len(load.problems) == before:
            load.problem(path, "give this node's secret (HS512) or public_key (Ed25519)")
        if entry.id == node_id:
            load.problem(f"{path}.id", f"node id {entry.id!r} is this node's own id")
        elif entry.id in peer_ids:
            load.problem(f"{path}.id", f"{entry.id!r} is a peer: its [[peers]] keys verify its routes")
        elif entry.id in seen:
            load.problem(f"{path}.id", f"duplicate node id {entry.id!r} (also nodes[{seen[entry.id]}])")
        if len(load.problems) == before:
            seen[entry.id] = index
            result.append(NodeKeys(id=entry.id, secrets=secrets, public_keys=keys))
    return tuple(result)


def _servers(load: Loader, raw: Mapping[str, Any]) -> tuple[ServerConfig, ...]:
    """``[[servers]]``: a command or a url (and only the keys that go with it), no id twice."""
    result: list[ServerConfig] = []
    seen: dict[str, int] = {}
    for index, table, server in load.items(raw, "servers", ServerConfig):
        path = f"servers[{index}]"
        before = len(load.problems)
        if (server.command is None) == (server.url is None):
            load.problem(path, "give either command (a stdio server) or url (a Streamable HTTP server)")
        elif server.command is not None and "headers" in table:
            load.problem(f"{path}.headers", "headers are only used with url")
        elif server.url is not None and any(key in table for key in ("args", "env", "cwd")):
            load.problem(path, "args, env and cwd are only used with command")
        for rule_index, rule in enumerate(server.callers or ()):
            if (problem := rule_problem(rule)) is not None:
                load.problem(f"{path}.callers[{rule_index}]", problem)
        if server.callers is not None and len(server.callers) > MAX_RULES:
            load.problem(f"{path}.callers", f"at most {MAX_RULES} caller rules")
        if server.id in seen:
            load.problem(f"{path}.id", f"duplicate server id {server.id!r} (also servers[{seen[server.id]}])")
        if len(load.problems) == before:
            seen[server.id] = index
            # The interpreter fednode runs under, which has the SDK and the shipped examples.
            python = server.command in ("python", "python3")
            result.append(attrs.evolve(server, command=sys.executable) if python else server)
    return tuple(result)
