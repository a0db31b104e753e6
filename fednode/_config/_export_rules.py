"""Which servers, tools and prompts a ``[[peers]]`` ``export`` or ``import`` list lets through.

A list entry is a server id (``notes``: all of that server), ``server.glob`` (the tools and prompts
of that server whose name *at the server* matches the glob, :func:`fnmatch.fnmatchcase`), or either
with ``!`` in front (excluded). Exclusions win over inclusions. A list of exclusions only means
"everything except them"; an empty list lets nothing through. Resources and resource templates
follow the server-level decision: a server that an including entry names (its id, or a glob of it)
goes with all its resources, unless ``!server`` excludes it whole.

No I/O, no knowledge of routes: :mod:`fednode._federation._name_policy` applies the rules to catalogs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

import attrs

#: A server id: ``[a-z0-9][a-z0-9_-]{0,31}`` (never a dot, so ``server.glob`` splits at the first one).
SERVER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
#: Kinds whose items are named and matched one by one; the others follow the server.
NAMED_KINDS = ("tools", "prompts")
_MAX_ENTRY = 256


def entry_problem(entry: object) -> str | None:
    """Why ``entry`` is not a valid export/import entry (None: it is)."""
    if not isinstance(entry, str):
        return "must be a string: a server id, server.glob, or either with ! in front"
    if len(entry) > _MAX_ENTRY:
        return f"is longer than {_MAX_ENTRY} characters"
    body = entry[1:] if entry.startswith("!") else entry
    if not body:
        return "is empty" if not entry else "'!' needs a server id or server.glob after it"
    if body != body.strip() or any(c.isspace() for c in body):
        return f"{entry!r} contains whitespace"
    server, dot, glob = body.partition(".")
    if not SERVER_ID_RE.match(server):
        return (f"{entry!r}: server id {server!r} must match [a-z0-9][a-z0-9_-]{{0,31}} "
                "(write server.glob for tools and prompts, e.g. files.read_*)")
    if dot and not glob:
        return f"{entry!r}: the tool/prompt glob after {server + '.'!r} is empty (write {server!r} for all of it)"
    if glob.startswith("!"):
        return f"{entry!r}: put ! before the server id (!{server}.{glob[1:]})"
    return None


def problems(entries: Sequence[object]) -> list[tuple[int, str]]:
    """Each invalid entry of a list, by index, with why."""
    return [(index, why) for index, entry in enumerate(entries) if (why := entry_problem(entry)) is not None]


def _globs(pairs: Iterable[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {}
    for server, glob in pairs:
        found.setdefault(server, []).append(glob)
    return {server: tuple(globs) for server, globs in found.items()}


@attrs.frozen
class NameRules:
    """A parsed ``export`` or ``import`` list. Build one with :meth:`parse`.

    Attributes:
        entries: the list as written.
        servers: servers included whole.
        globs: server -> globs of the tools and prompts included.
        excluded_servers: servers excluded whole (``!server``).
        excluded_globs: server -> globs of the tools and prompts excluded.
    """

    entries: tuple[str, ...]
    servers: frozenset[str] = frozenset()
    globs: dict[str, tuple[str, ...]] = attrs.field(factory=dict, eq=False)
    excluded_servers: frozenset[str] = frozenset()
    excluded_globs: dict[str, tuple[str, ...]] = attrs.field(factory=dict, eq=False)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> NameRules:
        """Parse a list (see the module's docstring).

        Raises:
            ValueError: naming the first invalid entry and why.
        """
        entries = tuple(entries)
        found = problems(entries)
        if found:
            index, why = found[0]
            raise ValueError(f"entry {index} {why}")
        include: list[tuple[str, str]] = []
        exclude: list[tuple[str, str]] = []
        for entry in entries:
            excluded = entry.startswith("!")
            server, _, glob = (entry[1:] if excluded else entry).partition(".")
            (exclude if excluded else include).append((server, glob))
        return cls(entries=entries, servers=frozenset(s for s, g in include if not g), globs=_globs(
            (s, g) for s, g in include if g), excluded_servers=frozenset(s for s, g in exclude if not g),
            excluded_globs=_globs((s, g) for s, g in exclude if g))

    @property
    def only_exclusions(self) -> bool:
        """Whether the list excludes only (it then lets through everything else)."""
        return bool(self.excluded_servers or self.excluded_globs) and not (self.servers or self.globs)

    def server(self, server: str) -> bool:
        """Whether ``server`` goes through at all (with its resources; maybe not all its tools and prompts)."""
        if server in self.excluded_servers:
            return False
        return self.only_exclusions or server in self.servers or server in self.globs

    def whole(self, server: str) -> bool:
        """Whether all of ``server`` goes through, whatever its tools and prompts are called."""
        return self.server(server) and server not in self.excluded_globs and (
            self.only_exclusions or server in self.servers)

    def item(self, server: str, kind: str, name: str) -> bool:
        """Whether the item of ``kind`` called ``name`` at ``server`` goes through.

        Tools and prompts are matched by name; resources and templates follow :meth:`server`.
        """
        if not self.server(server):
            return False
        if kind not in NAMED_KINDS:
            return True
        if any(fnmatchcase(name, glob) for glob in self.excluded_globs.get(server, ())):
            return False
        if self.only_exclusions or server in self.servers:
            return True
        return any(fnmatchcase(name, glob) for glob in self.globs.get(server, ()))


class PeerRules:
    """What a peer's ``export`` and ``import`` lists decide (:class:`fednode.PeerConfig` is one): parses
    them after ``__init__`` (ValueError for an invalid entry) into ``export_rules``/``import_rules``."""

    __slots__ = ()
    export: tuple[str, ...] | None
    import_: tuple[str, ...] | None
    export_rules: NameRules | None
    import_rules: NameRules | None

    def __attrs_post_init__(self) -> None:
        for name, entries in (("export_rules", self.export), ("import_rules", self.import_)):
            object.__setattr__(self, name, None if entries is None else NameRules.parse(entries))

    def exports(self, server_id: str) -> bool:
        """Whether routes to ``server_id`` may be advertised to this peer (``export``; default all)."""
        return self.export_rules is None or self.export_rules.server(server_id)

    def imports(self, server_id: str) -> bool:
        """Whether routes to ``server_id`` are accepted from this peer (``import``; default all)."""
        return self.import_rules is None or self.import_rules.server(server_id)

    def exports_item(self, server_id: str, kind: str, name: str) -> bool:
        """Whether the peer may see and call the item of ``kind`` called ``name`` at ``server_id``."""
        return self.export_rules is None or self.export_rules.item(server_id, kind, name)

    def imports_item(self, server_id: str, kind: str, name: str) -> bool:
        """Whether this node's clients may see and call that item as the peer offers it."""
        return self.import_rules is None or self.import_rules.item(server_id, kind, name)
