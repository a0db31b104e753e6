"""Who is calling: the caller of an MCP request, and the rules that say which callers may use what.

A :class:`Caller` is established by the entry node, the node the client is connected to: from the
client's OAuth access token (``[clients.oauth]``), the name of its static ``[clients] tokens`` entry,
or nobody (``anonymous``). The entry node states it, signed, in every request it forwards; the owning
node believes the statement as far as ``[[peers]] callers`` allows, else the caller is just the peer
it came through (``Caller.of_node``).

A caller is matched by its *principals*, strings of the form ``node:<entry node>``,
``sub:<subject>``, ``client:<client id>``, ``scope:<scope>`` and ``anonymous``. A rule list
(:class:`CallerRules`, ``[[servers]] callers``) holds globs over them (``sub:*@example.org``), ``*``
for everybody, and exclusions written ``!rule`` that win over any inclusion. Parts joined by ``&``
must all match (``node:node-a&scope:eng``: callers of node-a with the ``eng`` scope, whatever
another node says of its own callers).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

#: How a caller's identity was established.
KINDS = ("oauth", "token", "anonymous", "node")
#: Prefixes a rule may have; a rule is one of these followed by a glob, ``*`` or ``anonymous``.
PRINCIPAL_PREFIXES = ("node:", "sub:", "client:", "scope:")
_MAX_TEXT = 256  # longest subject, client id or scope kept from a token or a peer's statement
_MAX_SCOPES = 64
MAX_RULES = 256  # rules in one list: a sane policy is far shorter


@attrs.frozen
class Caller:
    """The caller of one request.

    Attributes:
        entry: the entry node (where the client is connected); for a caller a peer is not believed
            about, that peer.
        kind: ``oauth`` (an access token), ``token`` (a named static client token), ``anonymous``
            (no token, or an unnamed one) or ``node`` (only the node is known: see :meth:`of_node`).
        subject: the token's ``sub``, or a static token's name.
        client: the OAuth client id (``client_id`` or ``azp``).
        scopes: the access token's scopes.
    """

    entry: str
    kind: str = "anonymous"
    subject: str | None = None
    client: str | None = None
    scopes: tuple[str, ...] = ()

    @classmethod
    def of_node(cls, node_id: str) -> Caller:
        """A caller known only as the node it came from (``node:<id>``)."""
        return cls(entry=node_id, kind="node")

    def principals(self) -> tuple[str, ...]:
        """What rules match this caller against: ``node:``, ``sub:``, ``client:``, ``scope:``, ``anonymous``."""
        found = [f"node:{self.entry}"]
        if self.kind == "node":
            return tuple(found)
        if self.subject is not None:
            found.append(f"sub:{self.subject}")
        if self.client is not None:
            found.append(f"client:{self.client}")
        found += [f"scope:{scope}" for scope in self.scopes]
        if self.kind == "anonymous":
            found.append("anonymous")
        return tuple(found)

    def to_wire(self) -> dict[str, Any]:
        """As JSON (in a forwarded request's caller statement and in audit lines)."""
        wire: dict[str, Any] = {"node": self.entry, "kind": self.kind}
        if self.subject is not None:
            wire["sub"] = self.subject
        if self.client is not None:
            wire["client"] = self.client
        if self.scopes:
            wire["scopes"] = list(self.scopes)
        return wire

    @classmethod
    def from_wire(cls, item: object) -> Caller:
        """Parse a caller as :meth:`to_wire` writes it, checking its shape and sizes.

        Raises:
            ValueError: saying what is wrong.
        """
        if not isinstance(item, Mapping):
            raise ValueError("caller must be an object")
        node, kind = item.get("node"), item.get("kind")
        subject, client, scopes = item.get("sub"), item.get("client"), item.get("scopes", [])
        if not isinstance(node, str) or not 0 < len(node) <= 63:
            raise ValueError("caller node must be a node id")
        if kind not in KINDS:
            raise ValueError(f"caller kind must be one of {', '.join(KINDS)}")
        for name, value in (("sub", subject), ("client", client)):
            if value is not None and not (isinstance(value, str) and 0 < len(value) <= _MAX_TEXT):
                raise ValueError(f"caller {name} must be a string of 1 to {_MAX_TEXT} characters")
        if not (isinstance(scopes, list) and len(scopes) <= _MAX_SCOPES
                and all(isinstance(s, str) and 0 < len(s) <= _MAX_TEXT for s in scopes)):
            raise ValueError(f"caller scopes must be a list of at most {_MAX_SCOPES} strings")
        return cls(entry=node, kind=kind, subject=subject, client=client, scopes=tuple(scopes))

    def __str__(self) -> str:
        """How errors and logs name the caller: its subject (or anonymous) at its entry node."""
        if self.kind == "node":
            return f"node:{self.entry}"
        who = f"sub:{self.subject}" if self.subject is not None else \
            f"client:{self.client}" if self.client is not None else "anonymous"
        return f"{who} at node:{self.entry}"


def rule_problem(rule: object) -> str | None:
    """Why ``rule`` is not a valid caller rule, or None."""
    if not isinstance(rule, str) or not rule:
        return "a caller rule must be a non-empty string"
    if len(rule) > _MAX_TEXT:
        return f"caller rule {rule[:40]!r}... is longer than {_MAX_TEXT} characters"
    body = rule[1:] if rule.startswith("!") else rule
    for part in body.split("&"):
        if part in ("*", "anonymous"):
            continue
        if not part.startswith(PRINCIPAL_PREFIXES) or part.endswith(":"):
            return (f"caller rule {rule[:80]!r} must be '*', 'anonymous' or start with one of "
                    f"{', '.join(PRINCIPAL_PREFIXES)} followed by a name or glob (e.g. 'sub:*@example.org'), "
                    f"parts joined by '&' all matching")
    return None


def _matches(body: str, principals: tuple[str, ...]) -> bool:
    return all(part == "*" or any(fnmatch.fnmatchcase(p, part) for p in principals) for part in body.split("&"))


@attrs.frozen
class CallerRules:
    """Which callers may use something: globs over a caller's principals (see the module docstring).

    ``None`` rules (the default) allow everybody; an empty list allows nobody.
    """

    rules: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, rules: Iterable[str] | None) -> CallerRules:
        """Check and keep ``rules``.

        Raises:
            ValueError: naming the first bad rule.
        """
        if rules is None:
            return cls(None)
        kept = tuple(rules)
        if len(kept) > MAX_RULES:
            raise ValueError(f"at most {MAX_RULES} caller rules")
        for rule in kept:
            problem = rule_problem(rule)
            if problem is not None:
                raise ValueError(problem)
        return cls(kept)

    @property
    def everybody(self) -> bool:
        """Whether every caller is allowed (no rules given)."""
        return self.rules is None

    def allows(self, caller: Caller) -> bool:
        """Whether ``caller`` matches an inclusion and no exclusion."""
        if self.rules is None:
            return True
        principals = caller.principals()
        allowed = False
        for rule in self.rules:
            excluded = rule.startswith("!")
            body = rule[1:] if excluded else rule
            if _matches(body, principals):
                if excluded:
                    return False
                allowed = True
        return allowed

    def to_wire(self) -> list[str] | None:
        """As advertised with a route (None: everybody)."""
        return None if self.rules is None else list(self.rules)


#: The rules that allow every caller (no ``callers`` given).
EVERYBODY = CallerRules()
