"""Structuring raw configuration values with cattrs, and reporting its errors as key paths.

The attrs classes of :mod:`fednode._config._config` say in their annotations what each value must be
(``Annotated[float, Duration()]``, ``Annotated[str, url_of(("ws", "wss"))]``...). One cattrs converter,
with ``detailed_validation`` so that every failing value is kept and ``forbid_extra_keys`` so that
unknown keys are reported, applies those rules; :func:`problems_of` turns its exception groups into
``(key_path, message)`` problems: ``peers[1].control``, ``node.colour``. A :class:`Loader` is one load:
strings expand ``${VAR}`` from its environment (``$$`` is a literal ``$``), relative paths are resolved
against its folder. Nothing here touches the network; files are read only where a value names one.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.cols import homogenous_tuple_structure_factory
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .._errors import InvalidValue

T = TypeVar("T")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\$")
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")
_RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
#: Seconds' worth of a rate a bucket holds: how long a burst at any speed may last from full.
BURST_SECONDS = 10.0


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


@attrs.frozen
class Rate:
    """A rate limit such as ``"6000/min"``: ``count`` requests per ``per`` seconds.

    Enforced as a token bucket (see :mod:`fednode._peers._ratelimit`) refilled at ``count / per`` a
    second that holds :data:`BURST_SECONDS` worth of them (at least one).
    """

    count: int
    per: float

    @property
    def per_second(self) -> float:
        """Tokens added each second."""
        return self.count / self.per

    @property
    def burst(self) -> float:
        """The most tokens the bucket holds."""
        return max(1.0, self.per_second * BURST_SECONDS)

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.per)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.per:g}s"


def parse_rate(value: object) -> Rate:
    """Parse ``"6000/min"``, ``"100/s"``, ``"50000/h"`` (also ``sec``, ``second``, ``minute``, ``hour``).

    Raises:
        ValueError: the value is not such a rate, or its count is 0.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a rate like \"6000/min\", got {type(value).__name__}")
    match = _RATE_RE.match(value)
    if match is None or match.group(2) not in _RATE_UNITS:
        raise ValueError(f"bad rate {value[:40]!r} (use a count per s, min or h, e.g. \"6000/min\")")
    count = int(match.group(1))
    if count < 1 or count > 10**9:
        raise ValueError(f"rate count must be between 1 and 1e9, got {count}")
    return Rate(count, _RATE_UNITS[match.group(2)])


def shown_url(value: str) -> str:
    """The URL as safe to show in a message: credentials masked, length capped."""
    shown = re.sub(r"(//)[^/@]*@", r"\1***@", value)
    return repr(shown if len(shown) <= 200 else shown[:200] + "...")


def url_problem(value: object, schemes: tuple[str, ...], *, allow_port_zero: bool) -> str | None:
    """What is wrong with ``value`` as a URL of one of ``schemes`` (None: nothing)."""
    if not isinstance(value, str):
        return f"expected a URL string, got {type(value).__name__}"
    shown = shown_url(value)
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


def _kind(value: object) -> str:
    return type(value).__name__


# -- rules: what an annotated value must be -----------------------------------------------------


class Rule:
    """A constraint carried in an ``Annotated`` field type, applied when that field is structured."""

    def structure(self, value: object, base: Any, loader: Loader) -> Any:
        """Structure ``value`` as ``base``, then check it (rules that parse the raw value override this)."""
        return self.check(loader.converter.structure(value, base))

    def check(self, value: Any) -> Any:
        return value


@attrs.frozen
class Check(Rule):
    """The structured value must pass ``problem``, which says what is wrong with it (None: nothing)."""

    problem: Callable[[Any], str | None]

    def check(self, value: Any) -> Any:
        problem = self.problem(value)
        if problem:
            raise InvalidValue(problem)
        return value


def pattern(regex: re.Pattern[str], rule: str) -> Check:
    """A string matching ``regex``; the message is the value's repr followed by ``rule``."""
    return Check(lambda value: None if regex.match(value) else f"{value!r} {rule}")


def one_of(choices: tuple[str, ...], message: str) -> Check:
    """One of a few strings; ``message`` is formatted with the ``value``."""
    return Check(lambda value: None if value in choices else message.format(value=value))


def url_of(schemes: tuple[str, ...], *, own: bool = False) -> Check:
    """A URL of one of ``schemes``; port 0 only for this node's ``own`` addresses."""
    return Check(lambda value: url_problem(value, schemes, allow_port_zero=own))


def at_least(minimum: float) -> Check:
    """A number no smaller than ``minimum`` (and finite)."""
    def problem(value: float) -> str | None:
        if isinstance(value, float) and not (math.isfinite(value) and value >= minimum):
            return f"must be a finite number >= {minimum:g}"
        return f"must be >= {minimum:g}, got {value}" if value < minimum else None
    return Check(problem)


def min_length(minimum: int, message: str, *, characters: bool = False) -> Check:
    """A secret of at least ``minimum`` bytes (or characters); ``message`` gets the length, never the value."""
    def problem(secret: Secret) -> str | None:
        length = len(secret.reveal().decode()) if characters else len(secret)
        return message.format(length=length, minimum=minimum) if length < minimum else None
    return Check(problem)


@attrs.frozen
class Duration(Rule):
    """A duration (see :func:`parse_duration`): > 0 unless not ``positive``, at most ``at_most``."""

    positive: bool = True
    at_most: float | None = None
    too_long: str = "must be at most {limit:g}s (a day)"

    def structure(self, value: object, base: Any, loader: Loader) -> float:
        try:
            seconds = parse_duration(loader.expand(value) if isinstance(value, str) else value)
        except ValueError as exc:
            raise InvalidValue(str(exc)) from None
        if self.positive and seconds <= 0:
            raise InvalidValue("must be greater than 0")
        if self.at_most is not None and seconds > self.at_most:
            raise InvalidValue(self.too_long.format(limit=self.at_most, value=seconds))
        return seconds


@attrs.frozen
class RateRule(Rule):
    """A rate limit (see :func:`parse_rate`)."""

    def structure(self, value: object, base: Any, loader: Loader) -> Rate:
        try:
            return parse_rate(loader.expand(value) if isinstance(value, str) else value)
        except ValueError as exc:
            raise InvalidValue(str(exc)) from None


@attrs.frozen
class FilePath(Rule):
    """A path relative to the configuration file's folder (``readable``: the file must be readable now)."""

    readable: bool = False

    def structure(self, value: object, base: Any, loader: Loader) -> Any:
        path = loader.path(loader.expand(value))
        if self.readable:
            loader.read(path)
        return str(path) if base is str else path


@attrs.frozen
class StringTable(Rule):
    """A table of strings (``env``, ``headers``), kept as ordered pairs."""

    def structure(self, value: object, base: Any, loader: Loader) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, dict):
            raise InvalidValue(f"expected a table of strings, got {_kind(value)}")
        return tuple(loader.converter.structure(value, dict[str, str]).items())


# -- the converter ------------------------------------------------------------------------------


def _rules(annotation: Any) -> list[Rule]:
    if get_origin(annotation) is not Annotated:
        return []
    return [meta for meta in annotation.__metadata__ if isinstance(meta, Rule)]


def _is_list_tuple(annotation: Any) -> bool:
    args = get_args(annotation)
    return get_origin(annotation) is tuple and len(args) == 2 and args[1] is Ellipsis


def _fields(cl: type) -> list[str]:
    return [field.name for field in attrs.fields(cl)]


def _raw_keys(cl: type) -> list[str]:
    """The keys a table for attrs class ``cl`` may have (``metadata={"key": ...}`` renames a field)."""
    return [field.metadata.get("key", field.name) for field in attrs.fields(cl)]


def unknown_keys(keys: Iterable[str], allowed: Iterable[str], path: str) -> list[tuple[str, str]]:
    """One problem per key not in ``allowed``, naming what is."""
    hint = f" (allowed: {', '.join(sorted(allowed))})"
    return [(f"{path}.{key}" if path else str(key), f"unknown key{hint}") for key in keys if key not in allowed]


def problems_of(exc: BaseException, path: str) -> list[tuple[str, str]]:
    """Flatten a cattrs error (groups with notes naming attributes and indexes) into key-path problems."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without_notes = exc.group_exceptions()
        # Notes name attributes; the file may spell them differently (``import`` for ``import_``).
        keys = dict(zip(_fields(exc.cl), _raw_keys(exc.cl), strict=True)) if attrs.has(exc.cl) else {}
        problems = []
        for sub, note in with_notes:
            if isinstance(note, IterableValidationNote) and isinstance(note.index, int):
                problems += problems_of(sub, f"{path}[{note.index}]")
            elif isinstance(note, IterableValidationNote):  # a table's key
                problems += problems_of(sub, f"{path}.{note.index}")
            else:
                key = keys.get(note.name, note.name)
                problems += problems_of(sub, f"{path}.{key}" if path else key)
        for sub in without_notes:
            problems += problems_of(sub, path)
        return problems
    if isinstance(exc, ForbiddenExtraKeysError):
        return unknown_keys(sorted(exc.extra_fields), _raw_keys(exc.cl), path)
    if isinstance(exc, InvalidValue):
        return [(path, message) for message in exc.messages]
    if isinstance(exc, KeyError):
        return [(path, "required key is missing")]
    return [(path, str(exc)[:200] or type(exc).__name__)]


def _strict_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"expected true or false, got {_kind(value)}")
    return value


def _strict_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"expected an integer, got {_kind(value)}")
    return value


def _strict_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValue(f"expected a number, got {_kind(value)}")
    try:
        return float(value)
    except OverflowError:
        return math.inf


class Loader:
    """One load of a configuration: the environment and folder it is read in, and the problems found.

    Args:
        environ: where ``${VAR}`` is looked up.
        base_dir: what relative paths are relative to (the configuration file's folder).
    """

    def __init__(self, environ: Mapping[str, str], base_dir: Path) -> None:
        self.environ = environ
        self.base_dir = base_dir
        self.problems: list[tuple[str, str]] = []
        self.converter = _converter

    def problem(self, path: str, message: str) -> None:
        """Record a problem found outside cattrs (a check across fields)."""
        self.problems.append((path, message))

    def structure(self, value: object, cl: type[T], path: str) -> T | None:
        """Structure ``value`` as ``cl``; on failure record every problem under ``path`` and return None."""
        token = _current.set(self)
        try:
            return self.converter.structure(value, cl)
        except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
            self.problems += problems_of(exc, path)
            return None
        finally:
            _current.reset(token)

    def items(self, raw: Mapping[str, Any], key: str, cl: type[T]) -> Iterator[tuple[int, Any, T]]:
        """Structure each table of the array ``[[key]]``, yielding ``(index, raw table, value)`` for good ones."""
        tables = raw.get(key, [])
        if not isinstance(tables, list):
            self.problem(key, f"expected an array of tables ([[{key}]]), got {_kind(tables)}")
            return
        for index, table in enumerate(tables):
            value = self.structure(table, cl, f"{key}[{index}]")
            if value is not None:
                yield index, table, value

    def expand(self, value: object) -> str:
        """A string with ``${VAR}`` replaced from the environment and ``$$`` by ``$``."""
        if not isinstance(value, str):
            raise InvalidValue(f"expected a string, got {_kind(value)}")
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "$"
            if name not in self.environ:
                missing.append(name)
                return ""
            return self.environ[name]

        result = _ENV_RE.sub(substitute, value)
        if missing:
            raise InvalidValue(*(f"environment variable {name} is not set" for name in missing))
        return result

    def path(self, value: str) -> Path:
        """A path from the configuration: relative ones are relative to its folder."""
        file = Path(value)
        return file if file.is_absolute() else self.base_dir / file

    def read(self, file: Path) -> bytes:
        """The bytes of a file the configuration names."""
        try:
            return file.read_bytes()
        except OSError as exc:
            raise InvalidValue(f"cannot read {str(file)!r}: {exc.strerror or exc}") from None


# The converter is built once (cattrs generates each class's code on first use); the hooks that
# need the environment or the folder find the load in progress here.
_current: ContextVar[Loader] = ContextVar("fednode_config_loader")


def _public_key(value: object, _: type) -> Ed25519PublicKey:
    if not isinstance(value, str):
        raise InvalidValue(f"expected a PEM string or a file path, got {_kind(value)}")
    loader = _current.get()
    text = loader.expand(value)
    pem = text.encode() if "-----BEGIN" in text else loader.read(loader.path(text))
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise InvalidValue(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidValue("not an Ed25519 public key")
    return key


def _tuple_hook(annotation: Any) -> Any:
    structure_items = homogenous_tuple_structure_factory(annotation, _converter)

    def structure_list(value: object, _: type) -> tuple[Any, ...]:
        # cattrs alone would take a string or a table for a sequence; the file must give an array.
        if not isinstance(value, list):
            raise InvalidValue(f"expected a list of strings, got {_kind(value)}")
        return tuple(structure_items(value, annotation))

    return structure_list


def _annotated(value: object, annotation: Any) -> Any:
    base = get_args(annotation)[0]
    [first, *rest] = _rules(annotation)
    result = first.structure(value, base, _current.get())
    for rule in rest:
        result = rule.check(result)
    return result


def _table_hook(cl: Any) -> Any:
    renames: dict[str, Any] = {field.name: override(rename=field.metadata["key"])
                               for field in attrs.fields(cl) if "key" in field.metadata}
    structure_fields = make_dict_structure_fn(cl, _converter, **renames)

    def structure_table(value: object, _: type) -> Any:
        if not isinstance(value, dict):
            raise InvalidValue(f"expected a table, got {_kind(value)}")
        return structure_fields(value, cl)

    return structure_table


_converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)
_converter.register_structure_hook(str, lambda value, _: _current.get().expand(value))
_converter.register_structure_hook(bool, _strict_bool)
_converter.register_structure_hook(int, _strict_int)
_converter.register_structure_hook(float, _strict_float)
_converter.register_structure_hook(Secret, lambda value, _: Secret(_current.get().expand(value)))
_converter.register_structure_hook(Ed25519PublicKey, _public_key)
_converter.register_structure_hook_factory(_is_list_tuple, _tuple_hook)
_converter.register_structure_hook_func(lambda annotation: bool(_rules(annotation)), _annotated)
_converter.register_structure_hook_factory(attrs.has, _table_hook)
