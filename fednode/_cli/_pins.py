"""``fednode pins list`` and ``fednode pins accept``: a running node's held definitions, over its data port."""

from __future__ import annotations

import json
from typing import Any

import click

from .._errors import StatusError
from ._commands import EXIT_USAGE, Target, _explain, _target, _target_options, asked, fail
from ._formatting import format_held

__all__ = ["pins"]


def _ask(target: Target, timeout: float, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The JSON a node answers at ``path`` (``/pins``...); a refusal or bad answer raises :class:`StatusError`."""
    import httpx2

    with httpx2.Client(headers=target.headers(), timeout=httpx2.Timeout(timeout), verify=target.verify) as http:
        response = http.request(method, target.base + path, json=body)
    if response.status_code == 401:
        raise StatusError(_explain(RuntimeError("unauthorized"), target, 401, "pins"))
    if response.status_code == 404 and path == "/pins":
        raise StatusError(f"{target.base} has no /pins endpoint (is it a fednode node, and recent enough?)")
    try:
        answer = response.json()
    except ValueError:
        raise StatusError(f"{target.base}{path} answered HTTP {response.status_code}, not JSON") from None
    if response.status_code != 200:
        error = answer.get("error") if isinstance(answer, dict) else None
        raise StatusError(f"{target.base} refused: {error}" if error else
                          f"{target.base}{path} answered HTTP {response.status_code}")
    if not isinstance(answer, dict):
        raise StatusError(f"{target.base}{path} answered {type(answer).__name__}, not a JSON object")
    return answer


def _run(target: Target, timeout: float, debug: bool, method: str, path: str,
         body: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = asked(target, debug, "pins", lambda: _ask(target, timeout, method, path, body))
    return answer


@click.group("pins")
def pins() -> None:
    """A running node's pinned tool and prompt definitions: those held because they changed, and accepting them.

    A definition that changed since the node pinned it is held (not listed, calls refused) until
    accepted here. Needs a static [clients] token when the node has tokens (--token, FEDNODE_TOKEN
    or --config), or runs on the node's host.
    """


@pins.command("list")
@_target_options
def list_pins(url: str | None, config_path: str | None, token: str | None, timeout: float, as_json: bool,
              debug: bool) -> None:
    """Show the held tools and prompts: what changed, which server on which node."""
    answer = _run(_target(url, config_path, token), timeout, debug, "GET", "/pins")
    click.echo(json.dumps(answer, indent=2) if as_json else format_held(answer))


@pins.command("accept")
@click.argument("names", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Accept every held tool and prompt.")
@_target_options
def accept(names: tuple[str, ...], every: bool, url: str | None, config_path: str | None, token: str | None,
           timeout: float, as_json: bool, debug: bool) -> None:
    """Accept the current definitions of the held NAMES (exposed names, as `pins list` shows them), or --all.

    They are pinned as they are now, listed and callable again.
    """
    if every == bool(names):
        fail("give the NAMES to accept, or --all", EXIT_USAGE)
    body: dict[str, Any] = {"all": True} if every else {"names": list(names)}
    answer = _run(_target(url, config_path, token), timeout, debug, "POST", "/pins/accept", body)
    accepted = answer.get("accepted") or []
    if as_json:
        click.echo(json.dumps(answer, indent=2))
    elif not accepted:
        click.echo("nothing was held")
    else:
        for item in accepted:
            click.echo(f"accepted {item.get('kind', '?')[:-1]} {item.get('name')} (server {item.get('server')} "
                       f"on {item.get('origin')}): {', '.join(item.get('changed') or [])}")
