"""Client-side ``fednode`` commands: ``keygen``, ``token``, ``tools``, ``call`` and ``status``.

They act on files or on a running node from outside (as an MCP client of its ``{data}/mcp``, or over
plain HTTP for ``{data}/status``); none of them starts a node. :func:`register` adds them to the
``fednode`` click group. How answers are shown to people (tables, tool results) is in
:mod:`fednode._cli._formatting`.

Every failure a user can cause (bad input, an unreachable node, a refused token, an unknown tool)
ends with one line on stderr, ``fednode: <what went wrong>``, and a non-zero exit: 2 for a usage
error (as click does), 1 otherwise. ``--debug`` also prints the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import sys
import traceback
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import attrs
import click
import trio

from .._config._auth import AuthManager
from .._config._config import NodeConfig, load_config
from .._errors import UNKNOWN_NAME, ConfigError, FednodeError, StatusError
from .._errors import leaves as _leaves
from ._formatting import format_result, format_status, format_tools

if TYPE_CHECKING:
    import httpx2
    from mcp import Client

EXIT_ERROR = 1
EXIT_USAGE = 2
#: Exit status after Ctrl-C, as shells report a SIGINT death.
EXIT_INTERRUPTED = 130
DEFAULT_TIMEOUT = 30.0
#: Pages of tools/list read at most; a node that keeps returning cursors is broken, not big.
MAX_PAGES = 1000

T = TypeVar("T")


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``fednode: <message>`` as one line on stderr and exit with ``code``."""
    click.echo(f"fednode: {' '.join(message.splitlines())}", err=True)
    sys.exit(code)


#: The environment variable naming the configuration file when the command line does not.
CONFIG_ENV = "FEDNODE_CONFIG"

F = TypeVar("F", bound=Callable[..., Any])


def config_file_options(function: F) -> F:
    """Add ``--config FILE`` and an optional positional ``FILE`` (``run``, ``mcp``, ``check-config``).

    Both, because launchers such as the MCP Inspector claim ``--config`` for themselves. The
    command resolves them with :func:`config_path_from`.
    """
    function = click.argument("config_file", metavar="[FILE]", required=False,
                              type=click.Path(dir_okay=False))(function)
    return click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False),
                        help=f"The node's configuration file (.toml or .json); or give it as FILE, "
                             f"or in the environment as {CONFIG_ENV}.")(function)


def config_path_from(option: str | None, positional: str | None,
                     environ: Mapping[str, str] | None = None) -> str:
    """The configuration file to use: ``--config``, else the positional FILE, else ``$FEDNODE_CONFIG``.

    The environment is a default that the command line overrides; ``--config`` and FILE are both
    explicit, so naming two different files is an error rather than a guess.

    Raises:
        click.UsageError: no file named anywhere, or ``--config`` and FILE name different files.
    """
    if option is not None and positional is not None and not _same_path(option, positional):
        raise click.UsageError(f"--config {option} and FILE {positional} name different files; give one of them")
    path = option or positional or (os.environ if environ is None else environ).get(CONFIG_ENV) or None
    if path is None:
        raise click.UsageError(f"no configuration file: give FILE or --config FILE, or set {CONFIG_ENV}")
    return path


def _same_path(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:  # one does not exist (yet): compare the names; loading reports what is missing
        return Path(first).resolve() == Path(second).resolve()


def load_config_or_exit(path: str) -> NodeConfig:
    """Load a configuration file, or print every problem in it and exit 2 (all commands taking --config)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)


def _quiet_logging(debug: bool) -> None:
    """Keep library log lines (the SDK logs tracebacks of failed requests) off stderr unless --debug."""
    root = logging.getLogger()
    if root.handlers:
        return
    if debug:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    else:
        root.addHandler(logging.NullHandler())


def debug_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--debug", is_flag=True, help="On failure, also print the traceback.")(function)


# -- keygen -------------------------------------------------------------------------------------


def _create_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file readable by its owner only; never replace an existing file."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    return json.dumps(value)


@click.command("keygen")
@click.option("--algorithm", type=click.Choice(["HS512", "EdDSA"], case_sensitive=False), default="HS512",
              show_default=True, help="HS512: a shared secret. EdDSA: an Ed25519 key pair.")
@click.option("--out", "prefix", default="fednode-key", show_default=True, metavar="PATH_PREFIX",
              help="Write PATH_PREFIX.secret (HS512), or PATH_PREFIX.pem and PATH_PREFIX.pub (EdDSA).")
def keygen(algorithm: str, prefix: str) -> None:
    """Generate a new link secret or key pair into files only the owner can read (mode 0600).

    Existing files are never overwritten. The secret itself is never printed.
    """
    if algorithm == "HS512":
        _keygen_hs512(Path(prefix + ".secret"))
    else:
        _keygen_eddsa(Path(prefix + ".pem"), Path(prefix + ".pub"))


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if os.path.lexists(path):
            fail(f"{path} already exists; not overwriting it (choose another prefix with --out)")


def _write_new(path: Path, data: bytes) -> None:
    try:
        _create_private_file(path, data)
    except FileExistsError:
        fail(f"{path} already exists; not overwriting it (choose another prefix with --out)")
    except OSError as exc:
        fail(f"cannot create {path}: {exc.strerror or exc}")


def _keygen_hs512(path: Path) -> None:
    _refuse_existing(path)
    secret = secrets.token_urlsafe(64)  # 64 random bytes, 86 characters
    _write_new(path, secret.encode() + b"\n")
    shown = str(path.absolute())
    click.echo(f"wrote a new HS512 secret ({len(secret)} characters) to {shown} (mode 0600)")
    click.echo("Use the same secret on this node and on each peer it links with. Set the variable from the file:")
    click.echo(f'  export FEDNODE_SECRET="$(cat {shlex.quote(shown)})"')
    click.echo("and reference it in the configuration:")
    click.echo("  [auth]")
    click.echo('  secret = "${FEDNODE_SECRET}"')


def _keygen_eddsa(private_path: Path, public_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    _refuse_existing(private_path, public_path)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private_path, private_pem)
    try:
        _create_private_file(public_path, public_pem)
    except OSError as exc:
        private_path.unlink()  # a private key without its public half is of no use to anyone
        if isinstance(exc, FileExistsError):
            fail(f"{public_path} already exists; not overwriting it (choose another prefix with --out)")
        fail(f"cannot create {public_path}: {exc.strerror or exc}")
    private_shown, public_shown = str(private_path.absolute()), str(public_path.absolute())
    click.echo("wrote a new Ed25519 key pair (mode 0600):")
    click.echo(f"  private key: {private_shown}  (keep it on this node only)")
    click.echo(f"  public key:  {public_shown}  (give it to the peers)")
    click.echo("In this node's configuration:")
    click.echo("  [auth]")
    click.echo('  algorithm = "EdDSA"')
    click.echo(f"  private_key = {_toml_string(private_shown)}")
    click.echo('In each peer\'s configuration (also algorithm = "EdDSA"), in its [[peers]] entry for this node:')
    click.echo("  [[peers]]")
    click.echo('  id = "<this node\'s id>"')
    click.echo(f"  public_key = {_toml_string(public_shown)}  # a path or the PEM text")


# -- token --------------------------------------------------------------------------------------


@click.command("token")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="This node's configuration file (.toml or .json).")
@click.option("--peer", "peer_id", required=True, help="The peer the token is for (its audience).")
@debug_option
def token(config_path: str, peer_id: str, debug: bool) -> None:
    """Print a link token from this node to a configured peer, alone on stdout.

    The token is valid for [auth] token_ttl and is accepted once (its jti is remembered).
    """
    _quiet_logging(debug)
    config = load_config_or_exit(config_path)
    peers = {peer.id: peer for peer in config.peers}
    if peer_id not in peers:
        known = ", ".join(sorted(peers)) or "none"
        fail(f"no peer {peer_id!r} in {config.source}; configured peers: {known}")
    auth = AuthManager(config.id, config.auth)
    auth.set_peer(peers[peer_id])
    try:
        minted = auth.create_token(peer_id)
    except FednodeError as exc:
        if debug:
            traceback.print_exception(exc)
        fail(f"cannot mint a token for {peer_id!r}: {exc}")
    click.echo(minted)


# -- talking to a node --------------------------------------------------------------------------


@attrs.frozen
class Target:
    """Where a node's data endpoints are and how to authenticate to them.

    Attributes:
        base: the node's data base URL, without a trailing slash (``http://127.0.0.1:8101``).
        token: the client bearer token, or None.
        verify: TLS verification for https (a CA file from the configuration's ``[tls] ca``, or True).
    """

    base: str
    token: str | None = attrs.field(default=None, repr=False)
    verify: str | bool = True

    @property
    def mcp_url(self) -> str:
        """The node's Streamable HTTP MCP endpoint."""
        return self.base + "/mcp"

    @property
    def status_url(self) -> str:
        """The node's status endpoint."""
        return self.base + "/status"

    def headers(self) -> dict[str, str]:
        """HTTP headers for every request (the bearer token when there is one)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def _base_url(url: str, where: str) -> str:
    """``scheme://host:port`` of a node's data URL; the edge serves at the root whatever the path."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        fail(f"{where}: expected the node's data URL (http://host:port or https://host:port), got {url!r}",
             EXIT_USAGE)
    try:
        port = parsed.port
    except ValueError:
        fail(f"{where}: invalid port in {url!r}", EXIT_USAGE)
    if port == 0:
        fail(f"{where}: the data address has port 0 (any free port); pass the node's actual address with --url",
             EXIT_USAGE)
    return f"{parsed.scheme}://{parsed.netloc}"


def _target(url: str | None, config_path: str | None, token: str | None) -> Target:
    if (url is None) == (config_path is None):
        fail("give exactly one of --url URL or --config FILE", EXIT_USAGE)
    if url is not None:
        path = urllib.parse.urlsplit(url.strip()).path.rstrip("/")
        if path not in ("", "/mcp"):
            fail(f"--url: expected the node's data URL, with or without /mcp, got path {path!r}", EXIT_USAGE)
        return Target(base=_base_url(url, "--url"), token=token or None)
    assert config_path is not None
    config = load_config_or_exit(config_path)
    if token is None and config.clients.tokens:
        token = config.clients.tokens[0].reveal().decode()
    verify: str | bool = str(config.tls.ca) if config.tls.ca is not None else True
    return Target(base=_base_url(config.data, f"{config.source}: node.data"), token=token or None, verify=verify)


def _target_options(function: Callable[..., Any]) -> Callable[..., Any]:
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("--url", help="The node's data URL, e.g. http://127.0.0.1:8101 (with or without /mcp)."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="Take the data URL (and the first [clients] token) from this configuration file."),
        click.option("--token", envvar="FEDNODE_TOKEN", show_envvar=True,
                     help="Client bearer token for a node with [clients] tokens (prefer the variable: "
                          "command lines are visible to other users)."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TIMEOUT,
                     show_default=True, help="Seconds allowed for connecting and getting the answer."),
        click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON instead of a table."),
        debug_option,
    ]
    for option in reversed(options):
        function = option(function)
    return function


class _Observed:
    """What the HTTP client saw: the first error status (the MCP SDK reports a 401 as a generic error)."""

    def __init__(self) -> None:
        self.status: int | None = None

    async def on_response(self, response: httpx2.Response) -> None:
        if response.status_code >= 400 and self.status is None:
            self.status = response.status_code


def _explain(exc: BaseException, target: Target, status: int | None, what: str) -> str:
    """One line saying why talking to the node failed, from the leaf exceptions and the HTTP status seen."""
    import httpx2
    from mcp.shared.exceptions import MCPError

    if status == 401:
        if target.token:
            return f"{target.base} refused the client token (401 Unauthorized); check --token or FEDNODE_TOKEN"
        return f"{target.base} requires a client token (401 Unauthorized); pass --token or set FEDNODE_TOKEN"
    leaves = list(_leaves(exc))
    by_kind: dict[type[BaseException], BaseException] = {}
    for leaf in leaves:
        for kind in (MCPError, httpx2.TimeoutException, trio.TooSlowError, httpx2.TransportError, OSError):
            if isinstance(leaf, kind):
                by_kind.setdefault(kind, leaf)
    for kind in (httpx2.TimeoutException, trio.TooSlowError):
        if kind in by_kind:
            return f"no answer from {target.base} within the timeout ({what}); raise it with --timeout"
    for kind in (httpx2.TransportError, OSError):
        if kind in by_kind:
            return f"cannot reach {target.base} (is the node running there?): {by_kind[kind]}"
    if status is not None:
        return f"{target.base} answered HTTP {status} ({what})"
    if MCPError in by_kind:
        error = by_kind[MCPError]
        assert isinstance(error, MCPError)
        return f"{what} failed: {error.message} (error {error.code})"
    shown = []  # every distinct cause, in order: a group of several says what each one was
    for leaf in leaves or [exc]:
        detail = str(leaf).strip().splitlines()
        shown.append(type(leaf).__name__ + (f": {detail[0]}" if detail else ""))
    return f"{what} failed: " + "; ".join(dict.fromkeys(shown))


def _run_client(target: Target, timeout: float, debug: bool, what: str,
                body: Callable[[Client], Awaitable[T]],
                explain: Callable[[BaseException], str | None] = lambda exc: None) -> T:
    """Connect an MCP client to the node, run ``body`` with it (all within ``timeout``), and return its value.

    Any failure exits with one line (``explain`` may word it for the command), and the traceback with --debug.
    """
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    observed = _Observed()

    async def session() -> T:
        with trio.fail_after(timeout):
            http = httpx2.AsyncClient(headers=target.headers(), timeout=httpx2.Timeout(timeout),
                                      verify=target.verify, event_hooks={"response": [observed.on_response]})
            async with http, Client(streamable_http_client(target.mcp_url, http_client=http), mode="auto",
                                    cache=None, read_timeout_seconds=timeout) as client:
                return await body(client)

    _quiet_logging(debug)
    try:
        return trio.run(session)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # includes the exception groups Trio and anyio raise
        if debug:
            traceback.print_exception(exc)
        fail(explain(exc) or _explain(exc, target, observed.status, what))
    except BaseExceptionGroup as group:  # Ctrl-C that reached a task inside a task group
        if group.subgroup(KeyboardInterrupt) is None:
            raise
        fail("interrupted", EXIT_INTERRUPTED)


# -- tools --------------------------------------------------------------------------------------


def _dump(model: Any) -> dict[str, Any]:
    result: dict[str, Any] = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    return result


async def _list_tools(client: Client) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools += [_dump(tool) for tool in page.tools]
        cursor = page.next_cursor
        if not cursor:
            return tools
    raise RuntimeError(f"tools/list still returned a cursor after {MAX_PAGES} pages")


@click.command("tools")
@_target_options
def tools(url: str | None, config_path: str | None, token: str | None, timeout: float, as_json: bool,
          debug: bool) -> None:
    """List the tools an MCP client of the node sees (every tool in the federation it can reach)."""
    target = _target(url, config_path, token)
    listed = _run_client(target, timeout, debug, "tools/list", _list_tools)
    if as_json:
        click.echo(json.dumps(listed, indent=2))
    else:
        click.echo(format_tools(listed))


# -- call ---------------------------------------------------------------------------------------


def parse_arguments(json_args: str | None, args: Sequence[str]) -> dict[str, Any]:
    """Build a tool's arguments from ``--json-args`` (an object) then ``--arg key=value`` (which override).

    A ``--arg`` value is parsed as JSON when it parses (numbers, true/false, null, objects, "quoted"
    strings) and taken as a plain string otherwise.

    Raises:
        click.BadParameter: with what is wrong.
    """
    arguments: dict[str, Any] = {}
    if json_args is not None:
        try:
            parsed = json.loads(json_args)
        except (ValueError, RecursionError) as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--json-args") from None
        if not isinstance(parsed, dict):
            raise click.BadParameter(f"expected a JSON object, got {type(parsed).__name__}",
                                     param_hint="--json-args")
        arguments.update(parsed)
    for item in args:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--arg")
        try:
            value: Any = json.loads(raw)
        except (ValueError, RecursionError):
            value = raw
        arguments[key.strip()] = value
    return arguments


@click.command("call")
@click.argument("tool")
@click.option("--arg", "args", multiple=True, metavar="KEY=VALUE",
              help="A tool argument (repeatable); VALUE is JSON if it parses, else a string.")
@click.option("--json-args", metavar="OBJECT", help="Tool arguments as a JSON object (--arg entries override).")
@_target_options
def call(tool: str, args: tuple[str, ...], json_args: str | None, url: str | None, config_path: str | None,
         token: str | None, timeout: float, as_json: bool, debug: bool) -> None:
    """Call TOOL through the node and print its result (exit 1 if the tool reports an error)."""
    try:
        arguments = parse_arguments(json_args, args)
    except click.BadParameter as exc:
        fail(f"invalid value for {exc.param_hint}: {exc.message}", EXIT_USAGE)
    target = _target(url, config_path, token)

    async def body(client: Client) -> dict[str, Any]:
        return _dump(await client.call_tool(tool, arguments))

    def explain(exc: BaseException) -> str | None:
        from mcp.shared.exceptions import MCPError

        for leaf in _leaves(exc):
            if isinstance(leaf, MCPError) and leaf.code == UNKNOWN_NAME and "unknown tool" in leaf.message.lower():
                return f"unknown tool {tool!r} at {target.base} (list them with: fednode tools)"
        return None

    result = _run_client(target, timeout, debug, f"tools/call {tool}", body, explain)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        text = format_result(result)
        if text:
            click.echo(text)
    if result.get("isError"):
        fail(f"tool {tool!r} reported an error")


# -- status -------------------------------------------------------------------------------------


def _fetch_status(target: Target, timeout: float) -> Any:
    import httpx2

    with httpx2.Client(headers=target.headers(), timeout=httpx2.Timeout(timeout), verify=target.verify) as http:
        response = http.get(target.status_url)
    if response.status_code == 401:
        raise StatusError(_explain(RuntimeError("unauthorized"), target, 401, "status"))
    if response.status_code == 404:
        raise StatusError(f"{target.base} has no /status endpoint (is it a fednode node, and recent enough?)")
    if response.status_code != 200:
        raise StatusError(f"{target.status_url} answered HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise StatusError(f"{target.status_url} did not answer JSON") from None


def asked(target: Target, debug: bool, what: str, work: Callable[[], T]) -> T:
    """``work()``, a request to the node at ``target`` for ``what`` (``status``, ``pins``); a failure
    ends the command with one clear line (and the traceback with ``debug``)."""
    import httpx2

    _quiet_logging(debug)
    try:
        return work()
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except (StatusError, httpx2.HTTPError, OSError) as exc:
        if debug:
            traceback.print_exception(exc)
        fail(str(exc) if isinstance(exc, StatusError) else _explain(exc, target, None, what))


@click.command("status")
@_target_options
def status(url: str | None, config_path: str | None, token: str | None, timeout: float, as_json: bool,
           debug: bool) -> None:
    """Show a running node's state: peers, attached servers, routes, requests in flight."""

    target = _target(url, config_path, token)
    answer = asked(target, debug, "status", lambda: _fetch_status(target, timeout))
    if as_json:
        click.echo(json.dumps(answer, indent=2))
    elif isinstance(answer, dict):
        click.echo(format_status(answer))
    else:
        fail(f"{target.status_url} answered {type(answer).__name__}, not a JSON object")


def register(group: click.Group) -> None:
    """Add ``keygen``, ``token``, ``tools``, ``call`` and ``status`` to the ``fednode`` command group."""
    for command in (keygen, token, tools, call, status):
        group.add_command(command)
