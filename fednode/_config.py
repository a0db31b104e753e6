"""Configuration: attrs models, loading from TOML or JSON, and validation.

Validation walks the raw mapping by hand rather than through a generic structurer so that every
problem is reported with its exact key path (``peers[1].control``) and all problems are reported
at once. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._errors import ConfigError

NODE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MIN_HS512_SECRET_BYTES = 64
#: Longest link-token lifetime; peers refuse tokens that live longer.
MAX_TOKEN_TTL = 3600.0
MAX_REQUEST_TIMEOUT = 86400.0  # longest deadline of a forwarded request: a day
MAX_FIRST_LIST_WAIT = 300.0  # longest a client's first list may be held at start-up
ALGORITHMS = ("HS512", "EdDSA")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\$")


class Secret:
    """A shared secret whose value never shows in a repr, str or log line."""

    __slots__ = ("_value", "kid")

    def __init__(self, value: str | bytes) -> None:
        self._value = value.encode() if isinstance(value, str) else bytes(value)
        # The kid names the key without revealing it: a truncated hash of a >= 64-byte secret.
        self.kid = "hs-" + hashlib.sha256(self._value).hexdigest()[:16]

    def reveal(self) -> bytes:
        """Return the secret's bytes (for signing and verifying only)."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self.kid)

    def __repr__(self) -> str:
        return f"Secret(kid={self.kid!r})"

    __str__ = __repr__


def public_key_kid(key: Ed25519PublicKey) -> str:
    """The kid of an Ed25519 public key: a truncated hash of its raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed-" + hashlib.sha256(raw).hexdigest()[:16]


def parse_duration(value: object) -> float:
    """Parse ``"500ms"``, ``"5s"``, ``"1.5m"``, ``"2h"`` or a number of seconds.

    Raises:
        ValueError: the value is not a non-negative duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like \"5s\", got {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("duration is too large") from None
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise ValueError(f"bad duration {value[:40]!r} (use a number with ms, s, m or h, e.g. \"5s\")")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a duration like \"5s\", got {type(value).__name__}")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"duration must be finite and >= 0, got {value!r}")
    return seconds


def _check_id(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not NODE_ID_RE.match(value):
        raise ValueError(f"{attribute.name} {value!r} must match [a-z0-9][a-z0-9-]{{0,62}}")


def _check_ws_url(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None:
        error = _url_problem(value, ("ws", "wss"), allow_port_zero=False)
        if error:
            raise ValueError(f"{attribute.name}: {error}")


@attrs.frozen
class PeerConfig:
    """One peer of this node.

    Attributes:
        id: the peer's node id.
        control: the peer's control URL (``ws://`` or ``wss://``); ``None`` for a peer that only dials in.
        secrets: HS512 secrets for this pair (the first signs, all verify); empty = use ``[auth]``'s.
        public_keys: EdDSA public keys of the peer (any verifies).
        export: server ids whose routes this node shares with the peer (None = all).
        import_: server ids whose routes this node accepts from the peer (None = all).
        transit: whether routes learned from other peers are re-advertised to this peer.
    """

    id: str = attrs.field(validator=_check_id)
    control: str | None = attrs.field(default=None, validator=_check_ws_url)
    secrets: tuple[Secret, ...] = attrs.field(default=(), repr=False)
    public_keys: tuple[Ed25519PublicKey, ...] = attrs.field(default=(), repr=False)
    export: tuple[str, ...] | None = None
    import_: tuple[str, ...] | None = None
    transit: bool = True

    def exports(self, server_id: str) -> bool:
        """Whether routes to ``server_id`` may be advertised to this peer (``export``; default all)."""
        return self.export is None or server_id in self.export

    def imports(self, server_id: str) -> bool:
        """Whether routes to ``server_id`` are accepted from this peer (``import``; default all)."""
        return self.import_ is None or server_id in self.import_


SERVER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@attrs.frozen
class ServerConfig:
    """One MCP server attached to this node (``[[servers]]``): a stdio command or a Streamable HTTP URL.

    Attributes:
        id: unique on this node, ``[a-z0-9][a-z0-9_-]{0,31}``; the same id on several nodes = replicas.
        prefix: exposed-name prefix for tools and prompts (``{prefix}__{name}``); None = the id, "" = none.
        timeout: deadline of requests forwarded to this server (None = the node's ``[mcp] request_timeout``).
        ping_interval: seconds between liveness pings while the server is up (0 = never ping).
        ping_timeout: a ping unanswered this long marks the server down: routes withdrawn, restarted.
    """

    id: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    cwd: str | None = None
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    prefix: str | None = None
    timeout: float | None = None
    ping_interval: float = 30.0
    ping_timeout: float = 10.0

    @property
    def exposed_prefix(self) -> str:
        """The prefix actually used: the configured one, or the id."""
        return self.id if self.prefix is None else self.prefix


@attrs.frozen
class MCPConfig:
    """MCP federation settings (``[mcp]``)."""

    request_timeout: float = 60.0
    transit: bool = True
    #: how long after start-up a client's list may be held until the federation has settled
    #: (0: never held)
    first_list_wait: float = 10.0


@attrs.frozen
class ClientsConfig:
    """MCP client access (``[clients]``): bearer tokens required on ``{data}/mcp`` when any are set."""

    tokens: tuple[Secret, ...] = attrs.field(default=(), repr=False)


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

    interval: float = 5.0
    timeout: float = 15.0


@attrs.frozen
class BackoffConfig:
    """Reconnect backoff (``[backoff]``): full jitter, doubling from ``initial`` up to ``max``.

    The attempt counter starts over after a link (or an attached server) stayed up for ``reset_after``.
    A peer link that ended sooner sets it to the number of such links in a row, less one (see
    :meth:`fednode.Backoff.link_ended`): the first redial is quick, a peer that keeps dropping waits longer.
    """

    initial: float = 0.5
    max: float = 30.0
    multiplier: float = 2.0
    reset_after: float = 10.0


@attrs.frozen
class LinkConfig:
    """Per-link limits (``[link]``)."""

    handshake_timeout: float = 5.0
    max_message_size: int = 1024 * 1024
    max_protocol_errors: int = 10
    max_inflight: int = 128


@attrs.frozen
class TLSConfig:
    """TLS material (``[tls]``): cert/key for a wss:// listener, CA file for dialing wss:// peers."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


@attrs.frozen
class NodeConfig:
    """A whole node's configuration. Build one with :func:`load_config` or :meth:`from_mapping`."""

    id: str = attrs.field(validator=_check_id)
    control: str = "ws://127.0.0.1:0"
    data: str = "http://127.0.0.1:0"
    shutdown_grace: float = 5.0
    auth: AuthConfig = attrs.field(factory=AuthConfig)
    heartbeat: HeartbeatConfig = attrs.field(factory=HeartbeatConfig)
    backoff: BackoffConfig = attrs.field(factory=BackoffConfig)
    link: LinkConfig = attrs.field(factory=LinkConfig)
    tls: TLSConfig = attrs.field(factory=TLSConfig)
    peers: tuple[PeerConfig, ...] = ()
    servers: tuple[ServerConfig, ...] = ()
    mcp: MCPConfig = attrs.field(factory=MCPConfig)
    clients: ClientsConfig = attrs.field(factory=ClientsConfig)
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
        return _Builder(source, base_dir or Path.cwd(), os.environ if environ is None else environ).build(raw)


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


def _shown_url(value: str) -> str:
    """The URL as safe to show in a message: credentials masked, length capped."""
    shown = re.sub(r"(//)[^/@]*@", r"\1***@", value)
    return repr(shown if len(shown) <= 200 else shown[:200] + "...")


def _url_problem(value: object, schemes: tuple[str, ...], *, allow_port_zero: bool) -> str | None:
    if not isinstance(value, str):
        return f"expected a URL string, got {type(value).__name__}"
    shown = _shown_url(value)
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return f"bad URL {shown}: {exc}"
    if parts.scheme not in schemes:
        return f"bad URL {shown}: scheme must be {' or '.join(s + '://' for s in schemes)}"
    if not parts.hostname:
        return f"bad URL {shown}: no host"
    if parts.query or parts.fragment or parts.username or parts.password:
        return f"bad URL {shown}: no query, fragment or credentials allowed"
    if port == 0 and not allow_port_zero:
        return f"bad URL {shown}: port 0 is only allowed for this node's own addresses"
    return None


class _Builder:
    """Walks a raw mapping, collecting every problem with its key path."""

    def __init__(self, source: str, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.source = source
        self.base_dir = base_dir
        self.environ = environ
        self.problems: list[tuple[str, str]] = []
        self.auth_secret_given = False

    def problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    # -- primitives -------------------------------------------------------------------------

    def expand(self, path: str, value: str) -> str | None:
        missing: list[str] = []

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "$"
            if name not in self.environ:
                missing.append(name)
                return ""
            return self.environ[name]

        result = _ENV_RE.sub(sub, value)
        for name in missing:
            self.problem(path, f"environment variable {name} is not set")
        return None if missing else result

    def table(self, raw: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.problem(path, f"expected a table, got {type(value).__name__}")
            return {}
        return value

    def unknown_keys(self, raw: Mapping[str, Any], allowed: set[str], path: str) -> None:
        for key in raw:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                hint = f" (allowed: {', '.join(sorted(allowed))})"
                self.problem(where, f"unknown key{hint}")

    def string(self, raw: Mapping[str, Any], key: str, path: str, default: str | None = None,
               *, required: bool = False) -> str | None:
        where = f"{path}.{key}" if path else key
        if key not in raw:
            if required:
                self.problem(where, "required key is missing")
            return default
        value = raw[key]
        if not isinstance(value, str):
            self.problem(where, f"expected a string, got {type(value).__name__}")
            return default
        return self.expand(where, value)

    def duration(self, raw: Mapping[str, Any], key: str, path: str, default: float,
                 *, positive: bool = True) -> float:
        where = f"{path}.{key}"
        if key not in raw:
            return default
        value = raw[key]
        if isinstance(value, str):
            expanded = self.expand(where, value)
            if expanded is None:
                return default
            value = expanded
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problem(where, str(exc))
            return default
        if positive and seconds <= 0:
            self.problem(where, "must be greater than 0")
            return default
        return seconds

    def integer(self, raw: Mapping[str, Any], key: str, path: str, default: int, minimum: int) -> int:
        where = f"{path}.{key}"
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(where, f"expected an integer, got {type(value).__name__}")
            return default
        if value < minimum:
            self.problem(where, f"must be >= {minimum}, got {value}")
            return default
        return value

    def number(self, raw: Mapping[str, Any], key: str, path: str, default: float, minimum: float) -> float:
        where = f"{path}.{key}"
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(where, f"expected a number, got {type(value).__name__}")
            return default
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number) or number < minimum:
            self.problem(where, f"must be a finite number >= {minimum:g}")
            return default
        return number

    def url(self, raw: Mapping[str, Any], key: str, path: str, schemes: tuple[str, ...],
            default: str | None, *, own: bool, required: bool = False) -> str | None:
        value = self.string(raw, key, path, None, required=required)
        if value is None:
            return default
        error = _url_problem(value, schemes, allow_port_zero=own)
        if error:
            self.problem(f"{path}.{key}", error)
            return default
        return value

    def path_value(self, raw: Mapping[str, Any], key: str, path: str) -> Path | None:
        value = self.string(raw, key, path)
        if value is None:
            return None
        file = Path(value)
        return file if file.is_absolute() else self.base_dir / file

    def readable(self, where: str, file: Path) -> bytes | None:
        try:
            return file.read_bytes()
        except OSError as exc:
            self.problem(where, f"cannot read {str(file)!r}: {exc.strerror or exc}")
            return None

    def secrets(self, raw: Mapping[str, Any], path: str) -> tuple[Secret, ...]:
        if "secret" in raw and "secrets" in raw:
            self.problem(f"{path}.secrets", "give either secret or secrets, not both")
            return ()
        values: list[tuple[str, object]] = []
        if "secret" in raw:
            values = [(f"{path}.secret", raw["secret"])]
        elif "secrets" in raw:
            listed = raw["secrets"]
            if not isinstance(listed, list) or not listed:
                self.problem(f"{path}.secrets", "expected a non-empty list of strings")
                return ()
            values = [(f"{path}.secrets[{i}]", v) for i, v in enumerate(listed)]
        result: list[Secret] = []
        for where, value in values:
            if not isinstance(value, str):
                self.problem(where, f"expected a string, got {type(value).__name__}")
                continue
            expanded = self.expand(where, value)
            if expanded is None:
                continue
            secret = Secret(expanded)
            if len(secret) < MIN_HS512_SECRET_BYTES:
                # The length is safe to report; the value never is.
                self.problem(where, f"HS512 secret is {len(secret)} bytes; at least "
                                    f"{MIN_HS512_SECRET_BYTES} are required (make one with: python3 -c "
                                    f"'import secrets; print(secrets.token_urlsafe(64))')")
                continue
            result.append(secret)
        return tuple(result)

    def public_keys(self, raw: Mapping[str, Any], path: str) -> tuple[Ed25519PublicKey, ...]:
        values: list[tuple[str, object]] = []
        if "public_key" in raw:
            values.append((f"{path}.public_key", raw["public_key"]))
        if "public_keys" in raw:
            listed = raw["public_keys"]
            if not isinstance(listed, list):
                self.problem(f"{path}.public_keys", "expected a list of strings")
            else:
                values += [(f"{path}.public_keys[{i}]", v) for i, v in enumerate(listed)]
        keys: list[Ed25519PublicKey] = []
        for where, value in values:
            if not isinstance(value, str):
                self.problem(where, f"expected a PEM string or a file path, got {type(value).__name__}")
                continue
            text = self.expand(where, value)
            if text is None:
                continue
            if "-----BEGIN" in text:
                pem: bytes | None = text.encode()
            else:
                file = Path(text) if Path(text).is_absolute() else self.base_dir / text
                pem = self.readable(where, file)
            if pem is None:
                continue
            try:
                key = serialization.load_pem_public_key(pem)
            except (ValueError, TypeError) as exc:
                self.problem(where, f"not a PEM public key: {exc}")
                continue
            if not isinstance(key, Ed25519PublicKey):
                self.problem(where, "not an Ed25519 public key")
                continue
            keys.append(key)
        return tuple(keys)

    # -- sections ---------------------------------------------------------------------------

    def build(self, raw: Mapping[str, Any]) -> NodeConfig:
        self.unknown_keys(raw, {"node", "auth", "heartbeat", "backoff", "link", "tls", "peers", "servers", "mcp",
                                "clients"}, "")
        node_ok = isinstance(raw.get("node", {}), dict)
        node_raw = self.table(raw, "node", "node")
        self.unknown_keys(node_raw, {"id", "control", "data", "shutdown_grace"}, "node")
        node_id = self.string(node_raw, "id", "node", required=node_ok)
        if node_id is not None and not NODE_ID_RE.match(node_id):
            self.problem("node.id", f"{node_id!r} must match [a-z0-9][a-z0-9-]{{0,62}}")
            node_id = None
        control = self.url(node_raw, "control", "node", ("ws", "wss"), "ws://127.0.0.1:0", own=True)
        data = self.url(node_raw, "data", "node", ("http", "https"), "http://127.0.0.1:0", own=True)
        grace = self.duration(node_raw, "shutdown_grace", "node", 5.0)

        auth = self.auth(self.table(raw, "auth", "auth"))
        heartbeat = self.heartbeat(self.table(raw, "heartbeat", "heartbeat"))
        backoff = self.backoff(self.table(raw, "backoff", "backoff"))
        link = self.link(self.table(raw, "link", "link"))
        tls = self.tls(self.table(raw, "tls", "tls"), control, data)
        peers = self.peers(raw.get("peers", []), node_id, auth)
        servers = self.servers(raw.get("servers", []))
        mcp = self.mcp(self.table(raw, "mcp", "mcp"))
        clients = self.clients(self.table(raw, "clients", "clients"))

        if self.problems or node_id is None or control is None or data is None:
            raise ConfigError(self.source, self.problems or [("node", "incomplete configuration")])
        return NodeConfig(id=node_id, control=control, data=data, shutdown_grace=grace, auth=auth,
                          heartbeat=heartbeat, backoff=backoff, link=link, tls=tls, peers=peers,
                          servers=servers, mcp=mcp, clients=clients, source=self.source)

    def string_list(self, raw: Mapping[str, Any], key: str, path: str) -> tuple[str, ...] | None:
        if key not in raw:
            return None
        value = raw[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(f"{path}.{key}", "expected a list of strings")
            return None
        result = []
        for index, item in enumerate(value):
            expanded = self.expand(f"{path}.{key}[{index}]", item)
            if expanded is not None:
                result.append(expanded)
        return tuple(result)

    def boolean(self, raw: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = raw.get(key, default)
        if not isinstance(value, bool):
            self.problem(f"{path}.{key}", f"expected true or false, got {type(value).__name__}")
            return default
        return value

    def string_table(self, raw: Mapping[str, Any], key: str, path: str) -> tuple[tuple[str, str], ...]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.problem(f"{path}.{key}", f"expected a table of strings, got {type(value).__name__}")
            return ()
        pairs = []
        for name, item in value.items():
            if not isinstance(item, str):
                self.problem(f"{path}.{key}.{name}", f"expected a string, got {type(item).__name__}")
                continue
            expanded = self.expand(f"{path}.{key}.{name}", item)
            if expanded is not None:
                pairs.append((str(name), expanded))
        return tuple(pairs)

    def servers(self, raw: object) -> tuple[ServerConfig, ...]:
        if not isinstance(raw, list):
            self.problem("servers", f"expected an array of tables ([[servers]]), got {type(raw).__name__}")
            return ()
        result: list[ServerConfig] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(raw):
            path = f"servers[{index}]"
            if not isinstance(item, dict):
                self.problem(path, f"expected a table, got {type(item).__name__}")
                continue
            server = self.server(item, path)
            if server is None:
                continue
            if server.id in seen:
                self.problem(f"{path}.id", f"duplicate server id {server.id!r} (also servers[{seen[server.id]}])")
                continue
            seen[server.id] = index
            result.append(server)
        return tuple(result)

    def server(self, raw: dict[str, Any], path: str) -> ServerConfig | None:
        self.unknown_keys(raw, {"id", "command", "args", "env", "cwd", "url", "headers", "prefix", "timeout",
                                "ping_interval", "ping_timeout"}, path)
        before = len(self.problems)
        server_id = self.string(raw, "id", path, required=True)
        if server_id is not None and not SERVER_ID_RE.match(server_id):
            self.problem(f"{path}.id", f"{server_id!r} must match [a-z0-9][a-z0-9_-]{{0,31}}")
        command = self.string(raw, "command", path)
        if command in ("python", "python3"):
            # The interpreter fednode runs under, which has the SDK and the shipped examples.
            command = sys.executable
        url = self.url(raw, "url", path, ("http", "https"), None, own=False)
        if (command is None) == ("url" not in raw):
            self.problem(path, "give either command (a stdio server) or url (a Streamable HTTP server)")
        args = self.string_list(raw, "args", path) or ()
        env = self.string_table(raw, "env", path)
        headers = self.string_table(raw, "headers", path)
        cwd = self.path_value(raw, "cwd", path)
        prefix = self.string(raw, "prefix", path)
        if prefix is not None and prefix and not re.match(r"^[A-Za-z0-9_.-]{1,64}$", prefix):
            self.problem(f"{path}.prefix", f"{prefix!r} must be 1-64 characters of A-Z a-z 0-9 _ - . (or \"\")")
        timeout = self.duration(raw, "timeout", path, 0.0) if "timeout" in raw else None
        if timeout is not None and timeout > MAX_REQUEST_TIMEOUT:
            self.problem(f"{path}.timeout", f"must be at most {MAX_REQUEST_TIMEOUT:g}s (a day)")
        ping_interval = self.duration(raw, "ping_interval", path, 30.0, positive=False)
        ping_timeout = self.duration(raw, "ping_timeout", path, 10.0)
        for key, value in (("ping_interval", ping_interval), ("ping_timeout", ping_timeout)):
            if value > MAX_REQUEST_TIMEOUT:
                self.problem(f"{path}.{key}", f"must be at most {MAX_REQUEST_TIMEOUT:g}s (a day)")
        if command is not None and ("headers" in raw):
            self.problem(f"{path}.headers", "headers are only used with url")
        if url is not None and any(k in raw for k in ("args", "env", "cwd")):
            self.problem(path, "args, env and cwd are only used with command")
        if len(self.problems) > before or server_id is None:
            return None
        return ServerConfig(id=server_id, command=command, args=args, env=env, cwd=str(cwd) if cwd else None,
                            url=url, headers=headers, prefix=prefix, timeout=timeout, ping_interval=ping_interval,
                            ping_timeout=ping_timeout)

    def mcp(self, raw: dict[str, Any]) -> MCPConfig:
        self.unknown_keys(raw, {"request_timeout", "transit", "first_list_wait"}, "mcp")
        request_timeout = self.duration(raw, "request_timeout", "mcp", 60.0)
        if request_timeout > MAX_REQUEST_TIMEOUT:
            self.problem("mcp.request_timeout", f"must be at most {MAX_REQUEST_TIMEOUT:g}s (a day)")
        first_list_wait = self.duration(raw, "first_list_wait", "mcp", 10.0, positive=False)
        if first_list_wait < 0 or first_list_wait > MAX_FIRST_LIST_WAIT:
            self.problem("mcp.first_list_wait", f"must be between 0s and {MAX_FIRST_LIST_WAIT:g}s")
            first_list_wait = 10.0
        return MCPConfig(request_timeout=request_timeout, transit=self.boolean(raw, "transit", "mcp", True),
                         first_list_wait=first_list_wait)

    def clients(self, raw: dict[str, Any]) -> ClientsConfig:
        self.unknown_keys(raw, {"tokens"}, "clients")
        tokens = self.string_list(raw, "tokens", "clients") or ()
        for index, token in enumerate(tokens):
            if len(token) < 16:
                self.problem(f"clients.tokens[{index}]", f"client token is {len(token)} characters; use at least 16")
        return ClientsConfig(tokens=tuple(Secret(t) for t in tokens))

    def auth(self, raw: dict[str, Any]) -> AuthConfig:
        self.unknown_keys(raw, {"type", "algorithm", "secret", "secrets", "private_key", "token_ttl",
                                "leeway"}, "auth")
        kind = self.string(raw, "type", "auth", "jwt")
        if kind != "jwt":
            self.problem("auth.type", f"unsupported auth type {kind!r}; only \"jwt\" is supported")
        algorithm = self.string(raw, "algorithm", "auth", "HS512") or "HS512"
        if algorithm not in ALGORITHMS:
            self.problem("auth.algorithm", f"unsupported algorithm {algorithm!r}; use HS512 or EdDSA")
        secrets = self.secrets(raw, "auth")
        self.auth_secret_given = "secret" in raw or "secrets" in raw
        private_key = None
        key_path = self.path_value(raw, "private_key", "auth")
        if algorithm == "EdDSA":
            if secrets:
                self.problem("auth.secret", "EdDSA uses private_key, not shared secrets")
            if key_path is None and "private_key" not in raw:
                self.problem("auth.private_key", "EdDSA needs this node's private key file")
            if key_path is not None:
                pem = self.readable("auth.private_key", key_path)
                if pem is not None:
                    try:
                        loaded = serialization.load_pem_private_key(pem, password=None)
                    except (ValueError, TypeError) as exc:
                        self.problem("auth.private_key", f"not an unencrypted PEM private key: {exc}")
                    else:
                        if isinstance(loaded, Ed25519PrivateKey):
                            private_key = loaded
                        else:
                            self.problem("auth.private_key", "not an Ed25519 private key")
        elif key_path is not None:
            self.problem("auth.private_key", "private_key is only used with algorithm = \"EdDSA\"")
        ttl = self.duration(raw, "token_ttl", "auth", 60.0)
        if ttl > MAX_TOKEN_TTL:
            # Peers refuse longer-lived tokens (they bound the replay cache): fail here, not at every dial.
            self.problem("auth.token_ttl", f"must be at most {MAX_TOKEN_TTL:g}s, got {ttl:g}s")
            ttl = 60.0
        leeway = self.duration(raw, "leeway", "auth", 5.0, positive=False)
        return AuthConfig(algorithm=algorithm, secrets=secrets, private_key=private_key, token_ttl=ttl,
                          leeway=leeway)

    def heartbeat(self, raw: dict[str, Any]) -> HeartbeatConfig:
        self.unknown_keys(raw, {"interval", "timeout"}, "heartbeat")
        before = len(self.problems)
        interval = self.duration(raw, "interval", "heartbeat", 5.0)
        timeout = self.duration(raw, "timeout", "heartbeat", 15.0)
        if len(self.problems) == before and timeout <= interval:
            self.problem("heartbeat.timeout", f"must be longer than heartbeat.interval ({interval:g}s)")
        return HeartbeatConfig(interval=interval, timeout=timeout)

    def backoff(self, raw: dict[str, Any]) -> BackoffConfig:
        self.unknown_keys(raw, {"initial", "max", "multiplier", "reset_after"}, "backoff")
        before = len(self.problems)
        initial = self.duration(raw, "initial", "backoff", 0.5)
        maximum = self.duration(raw, "max", "backoff", 30.0)
        if len(self.problems) == before and maximum < initial:
            self.problem("backoff.max", f"must be >= backoff.initial ({initial:g}s)")
        multiplier = self.number(raw, "multiplier", "backoff", 2.0, 1.0)
        reset_after = self.duration(raw, "reset_after", "backoff", 10.0)
        return BackoffConfig(initial=initial, max=maximum, multiplier=multiplier, reset_after=reset_after)

    def link(self, raw: dict[str, Any]) -> LinkConfig:
        self.unknown_keys(raw, {"handshake_timeout", "max_message_size", "max_protocol_errors",
                                "max_inflight"}, "link")
        return LinkConfig(
            handshake_timeout=self.duration(raw, "handshake_timeout", "link", 5.0),
            max_message_size=self.integer(raw, "max_message_size", "link", 1024 * 1024, 1024),
            max_protocol_errors=self.integer(raw, "max_protocol_errors", "link", 10, 1),
            max_inflight=self.integer(raw, "max_inflight", "link", 128, 1),
        )

    def tls(self, raw: dict[str, Any], control: str | None, data: str | None) -> TLSConfig:
        self.unknown_keys(raw, {"cert", "key", "ca"}, "tls")
        paths: dict[str, Path | None] = {}
        for key in ("cert", "key", "ca"):
            file = self.path_value(raw, key, "tls")
            if file is not None and self.readable(f"tls.{key}", file) is None:
                file = None
            paths[key] = file
        if ("cert" in raw) != ("key" in raw):
            self.problem("tls", "cert and key must be given together")
        if control is not None and control.startswith("wss://") and "cert" not in raw:
            self.problem("node.control", "a wss:// control address needs [tls] cert and key")
        if data is not None and data.startswith("https://") and "cert" not in raw:
            self.problem("node.data", "an https:// data address needs [tls] cert and key")
        return TLSConfig(cert=paths["cert"], key=paths["key"], ca=paths["ca"])

    def peers(self, raw: object, node_id: str | None, auth: AuthConfig) -> tuple[PeerConfig, ...]:
        if not isinstance(raw, list):
            self.problem("peers", f"expected an array of tables ([[peers]]), got {type(raw).__name__}")
            return ()
        result: list[PeerConfig] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(raw):
            path = f"peers[{index}]"
            if not isinstance(item, dict):
                self.problem(path, f"expected a table, got {type(item).__name__}")
                continue
            peer = self.peer(item, path, auth)
            if peer is None:
                continue
            if peer.id == node_id:
                self.problem(f"{path}.id", f"peer id {peer.id!r} is this node's own id")
                continue
            if peer.id in seen:
                self.problem(f"{path}.id", f"duplicate peer id {peer.id!r} (also peers[{seen[peer.id]}])")
                continue
            seen[peer.id] = index
            result.append(peer)
        return tuple(result)

    def peer(self, raw: dict[str, Any], path: str, auth: AuthConfig) -> PeerConfig | None:
        self.unknown_keys(raw, {"id", "control", "secret", "secrets", "public_key", "public_keys", "export", "import",
                                "transit"}, path)
        before = len(self.problems)
        peer_id = self.string(raw, "id", path, required=True)
        if peer_id is not None and not NODE_ID_RE.match(peer_id):
            self.problem(f"{path}.id", f"{peer_id!r} must match [a-z0-9][a-z0-9-]{{0,62}}")
        control = self.url(raw, "control", path, ("ws", "wss"), None, own=False)
        secrets: tuple[Secret, ...] = ()
        keys: tuple[Ed25519PublicKey, ...] = ()
        if auth.algorithm == "HS512":
            secrets = self.secrets(raw, path)
            for key in ("public_key", "public_keys"):
                if key in raw:
                    self.problem(f"{path}.{key}", "public keys are only used with algorithm = \"EdDSA\"")
            if not (secrets or auth.secrets or self.auth_secret_given or "secret" in raw or "secrets" in raw):
                self.problem(f"{path}", "no HS512 secret for this peer: set [auth] secret or this peer's secret")
        else:
            for key in ("secret", "secrets"):
                if key in raw:
                    self.problem(f"{path}.{key}", "shared secrets are only used with algorithm = \"HS512\"")
            keys = self.public_keys(raw, path)
            if not keys and "public_key" not in raw and "public_keys" not in raw:
                self.problem(f"{path}.public_key", "EdDSA needs this peer's public key")
        export = self.string_list(raw, "export", path)
        import_ = self.string_list(raw, "import", path)
        transit = self.boolean(raw, "transit", path, True)
        if len(self.problems) > before or peer_id is None:
            return None
        return PeerConfig(id=peer_id, control=control, secrets=secrets, public_keys=keys, export=export,
                          import_=import_, transit=transit)


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
    for peer in config.peers:
        how = f"dial {peer.control}" if peer.control else "dials in only"
        own = ""
        if peer.secrets:
            own = f", own secret ({len(peer.secrets)})"
        elif peer.public_keys:
            own = f", {len(peer.public_keys)} public key(s)"
        lines.append(f"    - {peer.id}: {how}{own}")
    lines.append(f"  servers   {len(config.servers)}")
    for server in config.servers:
        # Arguments and URLs can carry credentials: show the command only, and URLs masked.
        what = (f"stdio: {server.command} (+{len(server.args)} args)" if server.command
                else f"http: {_shown_url(server.url or '')}")
        lines.append(f"    - {server.id}: {what} (prefix {server.exposed_prefix!r})")
    return "\n".join(lines)
