"""Configuration: loading TOML/JSON, validation with exact key paths, ``${VAR}`` expansion, durations, secrecy."""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fednode
from fednode._config._config import parse_duration
from fednode._config._describe import describe

from conftest import SECRET, raw_config

FEDNODE = str(Path(sys.executable).parent / "fednode")
TIMEOUT = 120  # a safety net for CLI subprocesses; several start at once on a busy machine
EXIT_CONFIG = 2

#: A valid (>= 64 bytes) secret that is easy to spot if it ever leaks.
SENTINEL_SECRET = "SENTINEL-secret-" + "fedcba9876543210" * 4
#: A second valid secret, for a peer's own secret.
PEER_SECRET = "PEERSENTINEL-" + "0123456789abcdef" * 4
#: Too short for HS512 (17 bytes), still recognisable.
SHORT_SECRET = "tooshort-SENTINEL"

# -- helpers ------------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)  # repr gives inf / -inf, as TOML spells them
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(raw: dict[str, Any]) -> str:
    """Serialise the subset of TOML our configurations use: scalars, tables and ``[[peers]]``."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in raw.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            arrays.append((key, value))
        elif isinstance(value, list) and not value:
            continue  # an empty [[peers]] array is the same as no peers
        else:
            lines.append(f"{key} = {toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    for name, items in arrays:
        for item in items:
            lines.append(f"\n[[{name}]]")
            lines += [f"{key} = {toml_value(value)}" for key, value in item.items()]
    return "\n".join(lines) + "\n"


def write_config(directory: Path, raw: dict[str, Any], suffix: str = ".toml", name: str = "node") -> Path:
    path = directory / f"{name}{suffix}"
    path.write_text(json.dumps(raw, indent=2) if suffix == ".json" else to_toml(raw), encoding="utf-8")
    return path


def cli_env(**overrides: str | None) -> dict[str, str]:
    """The current environment without FEDNODE_* variables, plus ``overrides`` (None = unset)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FEDNODE_")}
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(*commands: list[str], env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess[str]]:
    """Run several ``fednode`` commands concurrently; return their results in order."""
    procs = [
        subprocess.Popen([FEDNODE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=cli_env() if env is None else env)
        for args in commands
    ]
    results = []
    for args, proc in zip(commands, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        results.append(subprocess.CompletedProcess([FEDNODE, *args], proc.returncode, out, err))
    return results


def ed25519_pems() -> tuple[str, str]:
    """A fresh Ed25519 key pair as (private PKCS#8 PEM, public SPKI PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def eddsa(raw: dict[str, Any], tmp_path: Path, *, private_key: str | None = "node.pem",
          peer_key: str | None = "valid") -> None:
    """Switch ``raw`` to EdDSA with a valid key file at ``private_key`` and one peer ``node-b``."""
    private, public = ed25519_pems()
    (tmp_path / "node.pem").write_text(private)
    raw["auth"] = {"algorithm": "EdDSA"}
    if private_key is not None:
        raw["auth"]["private_key"] = private_key
    peer: dict[str, Any] = {"id": "node-b", "control": "ws://127.0.0.1:9001"}
    if peer_key == "valid":
        peer["public_key"] = public
    elif peer_key is not None:
        peer["public_key"] = peer_key
    raw["peers"] = [peer]


def base_raw() -> dict[str, Any]:
    return raw_config("node-a", peers=[{"id": "node-b", "control": "ws://127.0.0.1:9001"}])


# -- the bad-configuration cases ----------------------------------------------------------------

Mutate = Callable[[dict[str, Any], Path], None]


@dataclass(frozen=True)
class Bad:
    """One bad configuration and the single problem it must be reported as."""

    key: str  # the key path in the message; "" for file-level problems
    fragment: str  # a recognisable piece of the message
    mutate: Mutate | None = None  # edits base_raw() (ignored when text is given)
    text: str | bytes | None = None  # the file's exact content instead of a mutated base_raw()
    suffix: str = ".toml"
    env: dict[str, str | None] = field(default_factory=dict)
    missing: bool = False  # do not write the file at all
    run: bool = False  # also check `fednode run --config`
    cli: bool = True  # False: a variant checked in-process only (each CLI call costs ~0.4 s)

    def environ(self) -> dict[str, str]:
        return {key: value for key, value in self.env.items() if value is not None}

    def write(self, tmp_path: Path) -> Path:
        path = tmp_path / f"node{self.suffix}"
        if self.missing:
            return path
        if isinstance(self.text, bytes):
            path.write_bytes(self.text)
        elif self.text is not None:
            path.write_text(self.text, encoding="utf-8")
        else:
            raw = base_raw()
            if self.mutate is not None:
                self.mutate(raw, tmp_path)
            write_config(tmp_path, raw, self.suffix)
        return path


def _set(section: str, **values: Any) -> Mutate:
    def mutate(raw: dict[str, Any], tmp_path: Path) -> None:
        raw[section] = {**raw.get(section, {}), **values} if isinstance(raw.get(section), dict) else values
    return mutate


def _replace(key: str, value: Any) -> Mutate:
    def mutate(raw: dict[str, Any], tmp_path: Path) -> None:
        raw[key] = value
    return mutate


def _peers(*peers: dict[str, Any]) -> Mutate:
    return _replace("peers", list(peers))


def _delete_node_id(raw: dict[str, Any], tmp_path: Path) -> None:
    del raw["node"]["id"]


def _secret_and_secrets(raw: dict[str, Any], tmp_path: Path) -> None:
    raw["auth"]["secrets"] = [SECRET]


def _eddsa_without_private_key(raw: dict[str, Any], tmp_path: Path) -> None:
    eddsa(raw, tmp_path, private_key=None)


def _eddsa_key_missing(raw: dict[str, Any], tmp_path: Path) -> None:
    eddsa(raw, tmp_path, private_key="missing.pem")


def _eddsa_key_is_directory(raw: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    eddsa(raw, tmp_path, private_key="keys")


def _eddsa_key_not_a_key(raw: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "garbage.pem").write_text("this is not a key\n")
    eddsa(raw, tmp_path, private_key="garbage.pem")


def _eddsa_key_not_ed25519(raw: dict[str, Any], tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    (tmp_path / "ec.pem").write_bytes(pem)
    eddsa(raw, tmp_path, private_key="ec.pem")


def _public_key_not_pem(raw: dict[str, Any], tmp_path: Path) -> None:
    eddsa(raw, tmp_path, peer_key="-----BEGIN PUBLIC KEY-----\nnot base64 at all!\n-----END PUBLIC KEY-----\n")


def _public_key_file_not_pem(raw: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "peer.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 not-pem\n")
    eddsa(raw, tmp_path, peer_key="peer.pub")


def _peer_without_public_key(raw: dict[str, Any], tmp_path: Path) -> None:
    eddsa(raw, tmp_path, peer_key=None)


def _node_with_both_keys(raw: dict[str, Any], tmp_path: Path) -> None:
    _private, public = ed25519_pems()
    raw["nodes"] = [{"id": "node-c", "secret": SECRET, "public_key": public}]


_B = "ws://127.0.0.1:9001"
_C = "ws://127.0.0.1:9002"

BAD_CASES = [
    # unknown keys and wrong types
    pytest.param(Bad("node.colour", "unknown key (allowed: control, data, id, shutdown_grace, state_dir)",
                     _set("node", colour="blue"), run=True), id="unknown-key"),
    pytest.param(Bad("metrics", "unknown key (allowed: audit, auth, backoff,", _replace("metrics", {"enabled": True})),
                 id="unknown-section"),
    pytest.param(Bad("link.max_inflight", "expected an integer, got str", _set("link", max_inflight="many")),
                 id="wrong-type"),
    pytest.param(Bad("link.max_inflight", "expected an integer, got str", _set("link", max_inflight="many"),
                     suffix=".json", cli=False), id="wrong-type-json"),
    pytest.param(Bad("heartbeat", "expected a table, got str", _replace("heartbeat", "fast")),
                 id="wrong-type-for-table"),
    pytest.param(Bad("peers", "expected an array of tables ([[peers]]), got dict",
                     _replace("peers", {"id": "node-b"}), cli=False), id="peers-not-an-array"),
    # durations
    pytest.param(Bad("heartbeat.interval", "bad duration '5 parsecs'",
                     _set("heartbeat", interval="5 parsecs", timeout="30s"), run=True), id="bad-duration"),
    pytest.param(Bad("backoff.reset_after", "duration must be finite and >= 0, got -1",
                     _set("backoff", reset_after=-1), cli=False), id="negative-duration"),
    pytest.param(Bad("link.handshake_timeout", "must be greater than 0", _set("link", handshake_timeout="0s"),
                     cli=False), id="zero-duration"),
    pytest.param(Bad("heartbeat.timeout", "must be longer than heartbeat.interval (2s)",
                     _set("heartbeat", interval="2s", timeout="2s")), id="heartbeat-timeout-not-above-interval"),
    pytest.param(Bad("backoff.max", "must be >= backoff.initial (5s)", _set("backoff", initial="5s", max="1s")),
                 id="backoff-max-below-initial"),
    # secrets
    pytest.param(Bad("auth.secret", "environment variable FEDNODE_SECRET is not set",
                     _set("auth", secret="${FEDNODE_SECRET}"), env={"FEDNODE_SECRET": None}, run=True),
                 id="unset-environment-variable"),
    pytest.param(Bad("auth.secret", "HS512 secret is 17 bytes; at least 64 are required",
                     _set("auth", secret=SHORT_SECRET), run=True), id="short-secret"),
    pytest.param(Bad("auth.secret", "HS512 secret is 17 bytes",
                     _set("auth", secret="${FEDNODE_SECRET}"), env={"FEDNODE_SECRET": SHORT_SECRET}, cli=False),
                 id="short-secret-from-environment"),
    pytest.param(Bad("peers[0].secret", "HS512 secret is 17 bytes",
                     _peers({"id": "node-b", "control": _B, "secret": SHORT_SECRET}), cli=False),
                 id="short-peer-secret"),
    pytest.param(Bad("auth.secrets", "give either secret or secrets, not both", _secret_and_secrets),
                 id="secret-and-secrets"),
    # ids and peers
    pytest.param(Bad("node.id", "required key is missing", _delete_node_id), id="missing-node-id"),
    pytest.param(Bad("node.id", "'Node_A' must match [a-z0-9][a-z0-9-]{0,62}", _set("node", id="Node_A")),
                 id="bad-node-id"),
    pytest.param(Bad("peers[2].id", "duplicate peer id 'node-b' (also peers[0])",
                     _peers({"id": "node-b", "control": _B}, {"id": "node-c", "control": _C},
                            {"id": "node-b"}), run=True), id="duplicate-peer-id"),
    pytest.param(Bad("peers[1].id", "peer id 'node-a' is this node's own id",
                     _peers({"id": "node-b", "control": _B}, {"id": "node-a"})), id="peer-with-own-id"),
    pytest.param(Bad("peers[0].id", "required key is missing", _peers({"control": _B}), cli=False),
                 id="peer-without-id"),
    # URLs
    pytest.param(Bad("peers[0].control", "scheme must be ws:// or wss://",
                     _peers({"id": "node-b", "control": "http://127.0.0.1:9001"}), run=True), id="bad-url-scheme"),
    pytest.param(Bad("peers[0].control", "port 0 is only allowed for this node's own addresses",
                     _peers({"id": "node-b", "control": "ws://127.0.0.1:0"}), cli=False), id="bad-url-peer-port-0"),
    pytest.param(Bad("node.data", "bad URL 'http://127.0.0.1:99999'", _set("node", data="http://127.0.0.1:99999"),
                     cli=False), id="bad-url-port-out-of-range"),
    pytest.param(Bad("node.control", "needs [tls] cert and key", _set("node", control="wss://127.0.0.1:0")),
                 id="wss-control-without-tls"),
    # EdDSA keys
    pytest.param(Bad("auth.private_key", "EdDSA needs this node's private key file", _eddsa_without_private_key),
                 id="eddsa-without-private-key"),
    pytest.param(Bad("auth.private_key", "No such file or directory", _eddsa_key_missing, run=True),
                 id="eddsa-private-key-missing"),
    pytest.param(Bad("auth.private_key", "Is a directory", _eddsa_key_is_directory),
                 id="eddsa-private-key-unreadable"),
    pytest.param(Bad("auth.private_key", "not an unencrypted PEM private key", _eddsa_key_not_a_key),
                 id="eddsa-private-key-not-a-key"),
    pytest.param(Bad("auth.private_key", "not an Ed25519 private key", _eddsa_key_not_ed25519, cli=False),
                 id="eddsa-private-key-not-ed25519"),
    pytest.param(Bad("peers[0].public_key", "not a PEM public key", _public_key_not_pem), id="public-key-not-pem"),
    pytest.param(Bad("peers[0].public_key", "not a PEM public key", _public_key_file_not_pem, cli=False),
                 id="public-key-file-not-pem"),
    pytest.param(Bad("peers[0].public_key", "EdDSA needs this peer's public key", _peer_without_public_key, cli=False),
                 id="eddsa-peer-without-public-key"),
    # [[nodes]]: keys of nodes that are not peers
    pytest.param(Bad("nodes[0]", "give this node's secret (HS512) or public_key (Ed25519)",
                     _replace("nodes", [{"id": "node-c"}])), id="node-without-key"),
    pytest.param(Bad("nodes[0]", "give either a secret (HS512) or a public key (Ed25519), not both",
                     _node_with_both_keys, cli=False), id="node-with-both-keys"),
    pytest.param(Bad("nodes[1].id", "duplicate node id 'node-c' (also nodes[0])",
                     _replace("nodes", [{"id": "node-c", "secret": SECRET}, {"id": "node-c", "secret": SECRET}]),
                     cli=False), id="node-twice"),
    pytest.param(Bad("nodes[0].id", "'node-b' is a peer: its [[peers]] keys verify its routes",
                     _replace("nodes", [{"id": "node-b", "secret": SECRET}]), cli=False), id="node-is-a-peer"),
    pytest.param(Bad("nodes[0].id", "is this node's own id",
                     _replace("nodes", [{"id": "node-a", "secret": SECRET}]), cli=False), id="node-is-this-node"),
    pytest.param(Bad("nodes[0].secret", "HS512 secret is 17 bytes",
                     _replace("nodes", [{"id": "node-c", "secret": SHORT_SECRET}]), cli=False),
                 id="node-secret-too-short"),
    pytest.param(Bad("nodes[0].colour", "unknown key (allowed: id, public_key, public_keys, secret, secrets)",
                     _replace("nodes", [{"id": "node-c", "secret": SECRET, "colour": "red"}]), cli=False),
                 id="node-unknown-key"),
    pytest.param(Bad("peers[0].vouch", "expected true or false, got str",
                     _peers({"id": "node-b", "vouch": "yes"}), cli=False), id="peer-vouch-not-bool"),
    pytest.param(Bad("mcp.first_list_wait", "must be between 0s and 300s", _set("mcp", first_list_wait="1h"),
                     cli=False), id="first-list-wait-too-long"),
    # the file itself
    pytest.param(Bad("", "invalid TOML", text="[node\nid = 'node-a'\n", run=True), id="invalid-toml"),
    pytest.param(Bad("", "invalid JSON at line 1 column", text='{"node": {"id": "node-a",}}', suffix=".json"),
                 id="invalid-json"),
    pytest.param(Bad("", "the top level must be a table/object", text="[1, 2]", suffix=".json", cli=False),
                 id="json-top-level-not-object"),
    pytest.param(Bad("", "cannot read file: No such file or directory", missing=True, run=True),
                 id="config-file-missing"),
    pytest.param(Bad("", "cannot read file: 'utf-8' codec can't decode", text=b"[node]\nid = \"\xff\xfe\"\n",
                     cli=False), id="config-file-not-utf8"),
    # known bugs (see the report in each reason)
    pytest.param(Bad("heartbeat.interval", "bad duration '5 parsecs'", _set("heartbeat", interval="5 parsecs"),
                     cli=False),
                 id="bad-interval-reported-once"),
    pytest.param(Bad("heartbeat.interval", "duration",
                     text='{"node": {"id": "node-a"}, "heartbeat": {"interval": 1' + "0" * 400 + "}}",
                     suffix=".json", cli=False),
                 id="json-huge-integer-duration"),
    pytest.param(Bad("backoff.multiplier", "number", _set("backoff", multiplier=float("nan")), cli=False),
                 id="nan-backoff-multiplier"),
    pytest.param(Bad("peers[0].rate", "bad rate '100/fortnight' (use a count per s, min or h, e.g. \"6000/min\")",
                     _peers({"id": "node-b", "rate": "100/fortnight"})), id="peer-rate-unit"),
    pytest.param(Bad("clients.rate", "rate count must be between 1 and 1e9, got 0", _set("clients", rate="0/s"),
                     cli=False), id="client-rate-zero"),
    pytest.param(Bad("clients.rate", "expected a rate like \"6000/min\", got int", _set("clients", rate=100),
                     cli=False), id="client-rate-number"),
    pytest.param(Bad("clients.max_connections", "must be >= 1, got 0", _set("clients", max_connections=0),
                     cli=False), id="max-connections-zero"),
]


CLI_CASES = [case for case in BAD_CASES if case.values[0].cli]


def assert_one_problem(result: subprocess.CompletedProcess[str], path: Path, case: Bad) -> None:
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "Traceback" not in result.stderr
    assert "SENTINEL" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one message, got:\n{result.stderr}"
    where = f"{path}: {case.key}: " if case.key else f"{path}: "
    assert lines[0].startswith(f"invalid configuration: {where}"), lines[0]
    assert case.fragment in lines[0]


class TestBadConfiguration:
    """Every bad configuration is one message naming the file, the key path and the problem, exit 2."""

    @pytest.mark.parametrize("case", BAD_CASES)
    def test_load_config_reports_the_problem(self, case: Bad, tmp_path: Path) -> None:
        path = case.write(tmp_path)
        with pytest.raises(fednode.ConfigError) as caught:
            fednode.load_config(path, environ=case.environ())
        assert caught.value.source == str(path)
        [(key, message)] = caught.value.problems
        assert key == case.key
        assert case.fragment in message
        where = f"{path}: {case.key}: " if case.key else f"{path}: "
        assert str(caught.value) == f"invalid configuration: {where}{message}"

    @pytest.mark.parametrize("case", CLI_CASES)
    def test_cli_reports_the_problem_and_starts_nothing(self, case: Bad, tmp_path: Path) -> None:
        path = case.write(tmp_path)
        commands = [["check-config", str(path)]]
        if case.run:
            commands.append(["run", "--config", str(path)])
        results = run_cli(*commands, env=cli_env(**case.env))
        check = results[0]
        assert check.stdout == ""  # no summary, no "configuration OK"
        assert_one_problem(check, path, case)
        if case.run:
            run = results[1]
            assert_one_problem(run, path, case)
            assert "node.started" not in run.stdout + run.stderr

    def test_several_problems_are_all_listed(self, tmp_path: Path) -> None:
        raw = base_raw()
        raw["node"]["colour"] = "blue"
        raw["auth"]["secret"] = SHORT_SECRET
        raw["heartbeat"] = {"interval": "5 parsecs", "timeout": "30s"}
        raw["peers"] = [{"id": "node-b", "control": _B}, {"id": "node-c", "control": "http://x:1"},
                        {"id": "node-b"}, {"id": "node-a"}]
        path = write_config(tmp_path, raw)
        expected = {"node.colour", "auth.secret", "heartbeat.interval", "peers[1].control", "peers[2].id",
                    "peers[3].id"}

        with pytest.raises(fednode.ConfigError) as caught:
            fednode.load_config(path, environ={})
        assert caught.value.source == str(path)
        assert sorted(key for key, _ in caught.value.problems) == sorted(expected)

        [result] = run_cli(["check-config", str(path)])
        assert result.returncode == EXIT_CONFIG
        lines = result.stderr.strip().splitlines()
        assert lines[0] == f"invalid configuration: {path}: {len(expected)} problems"
        items = [line for line in lines[1:] if line.startswith("  - ")]
        assert len(items) == len(lines) - 1 == len(expected)
        assert {line[4:].split(": ", 1)[0] for line in items} == expected
        assert SHORT_SECRET not in result.stderr

    def test_key_paths_follow_the_file(self, tmp_path: Path) -> None:
        raw = base_raw()
        raw["peers"][0].update({"import": "clock", "export": ["clock", 7], "colour": "blue"})
        raw["servers"] = [{"id": "clock", "command": "python", "env": {"TZ": 1}}]
        with pytest.raises(fednode.ConfigError) as caught:
            fednode.load_config(write_config(tmp_path, raw, ".json"), environ={})
        problems = dict(caught.value.problems)
        assert problems.keys() == {"peers[0].import", "peers[0].export[1]", "peers[0].colour", "servers[0].env.TZ"}
        assert problems["peers[0].import"] == "expected a list of strings, got str"
        assert problems["peers[0].export[1]"] == "expected a string, got int"
        assert problems["peers[0].colour"].startswith("unknown key (allowed: callers, control, export, id, import, ")
        assert problems["servers[0].env.TZ"] == "expected a string, got int"

    def test_library_error_carries_source_and_problems(self, tmp_path: Path) -> None:
        raw = base_raw()
        raw["backoff"] = {"initial": "5s", "max": "1s"}
        path = write_config(tmp_path, raw, ".json")
        with pytest.raises(fednode.ConfigError) as caught:
            fednode.load_config(path, environ={})
        assert caught.value.problems == [("backoff.max", "must be >= backoff.initial (5s)")]
        assert str(caught.value) == f"invalid configuration: {path}: backoff.max: must be >= backoff.initial (5s)"


# -- valid configurations -----------------------------------------------------------------------


def full_raw() -> dict[str, Any]:
    return raw_config("node-a", peers=[
        {"id": "node-b", "control": "ws://127.0.0.1:9001"},
        {"id": "node-c"},
        {"id": "node-d", "control": "wss://peer.example:8443", "secret": PEER_SECRET},
    ], auth={"secret": SENTINEL_SECRET}, backoff={"multiplier": 1.5}, heartbeat={"interval": "0.2s", "timeout": "1s"},
        link={"max_inflight": 7, "handshake_timeout": "2s"})


class TestValidConfiguration:
    """A valid TOML file and its JSON twin load to equal configs, and check-config summarises them."""

    def test_toml_and_json_load_equal(self, tmp_path: Path) -> None:
        toml_path = write_config(tmp_path, full_raw(), ".toml")
        json_path = write_config(tmp_path, full_raw(), ".json")
        from_toml = fednode.load_config(toml_path, environ={})
        from_json = fednode.load_config(json_path, environ={})

        assert from_toml == from_json
        assert (from_toml.source, from_json.source) == (str(toml_path), str(json_path))
        for config in (from_toml, from_json):
            assert config.id == "node-a"
            assert (config.control, config.data) == ("ws://127.0.0.1:0", "http://127.0.0.1:0")
            assert config.shutdown_grace == 2.0
            assert config.auth == fednode.AuthConfig(secrets=(fednode.Secret(SENTINEL_SECRET),))
            assert config.heartbeat == fednode.HeartbeatConfig(interval=0.2, timeout=1.0)
            assert config.backoff == fednode.BackoffConfig(initial=0.05, max=0.5, multiplier=1.5, reset_after=1.0)
            assert config.link == fednode.LinkConfig(handshake_timeout=2.0, max_inflight=7)
            assert config.tls == fednode.TLSConfig()
            assert [(p.id, p.control) for p in config.peers] == [
                ("node-b", "ws://127.0.0.1:9001"), ("node-c", None), ("node-d", "wss://peer.example:8443")]
            assert config.peers[2].secrets == (fednode.Secret(PEER_SECRET),)
            assert config.peers[0].secrets == ()

    def test_check_config_prints_a_summary(self, tmp_path: Path) -> None:
        toml_path = write_config(tmp_path, full_raw(), ".toml")
        json_path = write_config(tmp_path, full_raw(), ".json")
        toml_result, json_result = run_cli(["check-config", str(toml_path)], ["check-config", str(json_path)])

        assert toml_result.returncode == 0, toml_result.stderr
        assert json_result.returncode == 0, json_result.stderr
        assert toml_result.stdout == json_result.stdout
        lines = toml_result.stdout.splitlines()
        assert lines[0] == "node node-a"
        assert "  control   ws://127.0.0.1:0" in lines
        assert "  peers     3" in lines
        assert "    - node-b: dial ws://127.0.0.1:9001" in lines
        assert "    - node-c: dials in only" in lines
        assert "    - node-d: dial wss://peer.example:8443, own secret (1)" in lines
        assert lines[-1] == "configuration OK"
        for result in (toml_result, json_result):
            output = result.stdout + result.stderr
            assert "SENTINEL" not in output

    def test_nodes_and_vouch(self, tmp_path: Path) -> None:
        _private, public = ed25519_pems()
        (tmp_path / "node-d.pub").write_text(public)
        raw = base_raw()
        raw["peers"][0]["vouch"] = True
        raw["nodes"] = [{"id": "node-c", "secret": "${C_SECRET}"}, {"id": "node-d", "public_key": "node-d.pub"}]
        config = fednode.load_config(write_config(tmp_path, raw), environ={"C_SECRET": PEER_SECRET})
        assert config.peers[0].vouch and not fednode.PeerConfig(id="node-x").vouch
        [c, d] = config.nodes
        assert (c.id, c.secrets, c.public_keys) == ("node-c", (fednode.Secret(PEER_SECRET),), ())
        assert d.id == "node-d" and d.secrets == () and isinstance(d.public_keys[0], Ed25519PublicKey)
        assert "PEERSENTINEL" not in repr(config)
        summary = describe(config)
        assert "vouches for others' routes" in summary and "nodes     2" in summary
        assert fednode.load_config(write_config(tmp_path, base_raw(), name="plain"), environ={}).nodes == ()

    def test_eddsa_config_loads_keys(self, tmp_path: Path) -> None:
        raw = base_raw()
        eddsa(raw, tmp_path)
        config = fednode.load_config(write_config(tmp_path, raw), environ={})
        assert config.auth.algorithm == "EdDSA"
        assert isinstance(config.auth.private_key, Ed25519PrivateKey)
        assert config.auth.secrets == ()
        [peer] = config.peers
        assert len(peer.public_keys) == 1 and isinstance(peer.public_keys[0], Ed25519PublicKey)
        assert "PRIVATE KEY" not in repr(config) and "Ed25519" not in repr(config.auth)
        assert "Ed25519 key pair" in describe(config)


# -- environment variables ----------------------------------------------------------------------


class TestEnvironmentExpansion:
    """``${VAR}`` is replaced from the given environment, ``$$`` is a literal ``$``, unset variables are errors."""

    def test_variables_are_expanded(self, tmp_path: Path) -> None:
        raw = base_raw()
        raw["auth"]["secret"] = "${FEDNODE_SECRET}"
        raw["node"]["id"] = "${NODE_ID}"
        raw["peers"][0]["control"] = "ws://${PEER_HOST}:${PEER_PORT}"
        raw["heartbeat"]["timeout"] = "${HB_TIMEOUT}"
        path = write_config(tmp_path, raw)
        environ = {"FEDNODE_SECRET": SECRET, "NODE_ID": "node-x", "PEER_HOST": "10.0.0.2", "PEER_PORT": "9100",
                   "HB_TIMEOUT": "3s"}
        config = fednode.load_config(path, environ=environ)
        assert config.auth.secrets[0].reveal() == SECRET.encode()
        assert config.id == "node-x"
        assert config.peers[0].control == "ws://10.0.0.2:9100"
        assert config.heartbeat.timeout == 3.0

    @pytest.mark.parametrize(("written", "expected"), [
        ("$${NOT_A_VAR}", "${NOT_A_VAR}"),
        ("a$$b", "a$b"),
        ("$$$$", "$$"),
        ("$$${V}", "$value"),
        ("lone $ stays", "lone $ stays"),
    ])
    def test_double_dollar_is_a_literal_dollar(self, tmp_path: Path, written: str, expected: str) -> None:
        raw = base_raw()
        raw["auth"]["secret"] = written + "-" + SECRET
        config = fednode.load_config(write_config(tmp_path, raw), environ={"V": "value"})
        assert config.auth.secrets[0].reveal() == (expected + "-" + SECRET).encode()

    def test_only_the_given_environ_is_used(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FEDNODE_SECRET", SECRET)
        raw = base_raw()
        raw["auth"]["secret"] = "${FEDNODE_SECRET}"
        path = write_config(tmp_path, raw)
        assert fednode.load_config(path).auth.secrets[0].reveal() == SECRET.encode()  # default: os.environ
        with pytest.raises(fednode.ConfigError) as caught:
            fednode.load_config(path, environ={})
        assert caught.value.problems == [("auth.secret", "environment variable FEDNODE_SECRET is not set")]

    def test_every_unset_variable_is_reported(self, tmp_path: Path) -> None:
        raw = base_raw()
        raw["peers"][0]["control"] = "ws://${PEER_HOST}:${PEER_PORT}"
        with pytest.raises(fednode.ConfigError) as caught:
            fednode.load_config(write_config(tmp_path, raw), environ={})
        assert caught.value.problems == [
            ("peers[0].control", "environment variable PEER_HOST is not set"),
            ("peers[0].control", "environment variable PEER_PORT is not set"),
        ]

    def test_cli_reads_the_process_environment(self, tmp_path: Path) -> None:
        raw = base_raw()
        raw["auth"]["secret"] = "${FEDNODE_SECRET}"
        path = write_config(tmp_path, raw)
        [result] = run_cli(["check-config", str(path)], env=cli_env(FEDNODE_SECRET=SENTINEL_SECRET))
        assert result.returncode == 0, result.stderr
        assert "1 shared secret(s)" in result.stdout
        assert "SENTINEL" not in result.stdout + result.stderr


# -- durations ----------------------------------------------------------------------------------


class TestParseDuration:
    """Durations are numbers of seconds or strings with ms/s/m/h; anything else, negative or infinite is refused."""

    @pytest.mark.parametrize(("value", "seconds"), [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("1.5m", 90.0),
        ("2h", 7200.0),
        ("5", 5.0),
        (" 250 ms ", 0.25),
        ("0s", 0.0),
        (3, 3.0),
        (0.25, 0.25),
    ])
    def test_good(self, value: object, seconds: float) -> None:
        result = parse_duration(value)
        assert isinstance(result, float)
        assert result == pytest.approx(seconds)

    @pytest.mark.parametrize("value", [
        "5 parsecs", "-1s", "inf", "nan", "", "s", "1e", "5d", "5ss",
        True, False, None, [], {}, -0.5, -1, float("inf"), float("nan"),
        10**400,
    ], ids=lambda value: repr(value)[:20])
    def test_bad(self, value: object) -> None:
        with pytest.raises(ValueError, match=r"duration"):
            parse_duration(value)

    @given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
    def test_seconds_string_round_trips(self, f: float) -> None:
        assert parse_duration(f"{f:.9f}s") == pytest.approx(f, rel=1e-9, abs=1e-9)
        assert parse_duration(f"{f:.9f}ms") == pytest.approx(f / 1000, rel=1e-9, abs=1e-12)

    @given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
    @example(1e-05)
    def test_repr_seconds_string_round_trips(self, f: float) -> None:
        assert parse_duration(f"{f}s") == pytest.approx(f)


# -- secrecy ------------------------------------------------------------------------------------


class TestSecretsStayHidden:
    """A secret's value never shows in a repr, str, summary, error message or log line."""

    def test_not_in_reprs(self) -> None:
        raw = full_raw()
        config = fednode.NodeConfig.from_mapping(raw, environ={})
        assert config.auth.secrets[0].reveal() == SENTINEL_SECRET.encode()
        texts = [repr(config), str(config), repr(config.auth), str(config.auth), repr(config.peers),
                 repr(config.auth.secrets), str(config.auth.secrets[0]), repr(config.peers[2].secrets),
                 describe(config)]
        for text in texts:
            assert "SENTINEL" not in text
        assert config.auth.secrets[0].kid in repr(config.auth.secrets[0])

    def test_not_in_short_secret_error(self, tmp_path: Path) -> None:
        raw = base_raw()
        raw["auth"]["secret"] = SHORT_SECRET
        path = write_config(tmp_path, raw)
        with pytest.raises(fednode.ConfigError) as caught:
            fednode.load_config(path, environ={})
        for text in (str(caught.value), repr(caught.value), repr(caught.value.problems)):
            assert "SENTINEL" not in text
        assert "HS512 secret is 17 bytes" in str(caught.value)

    def test_not_in_run_logs(self, tmp_path: Path) -> None:
        raw = raw_config("node-a", auth={"secret": SENTINEL_SECRET}, node={"shutdown_grace": "0.5s"})
        path = write_config(tmp_path, raw)
        proc = subprocess.Popen([FEDNODE, "run", "--config", str(path), "--log-level", "debug"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
        try:
            assert proc.stderr is not None
            seen = b""
            deadline = time.monotonic() + TIMEOUT
            while b"node.started" not in seen and time.monotonic() < deadline and proc.poll() is None:
                ready, _, _ = select.select([proc.stderr], [], [], 0.5)
                if ready:
                    seen += os.read(proc.stderr.fileno(), 65536)
            assert b"node.started" in seen, seen
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        logs = (seen + err + out).decode()
        assert proc.returncode == 0, logs
        assert "node.stopped" in logs
        assert "SENTINEL" not in logs

    def test_not_in_url_error(self, tmp_path: Path) -> None:
        raw = base_raw()
        raw["peers"][0]["control"] = "ws://admin:SENTINEL-password@127.0.0.1:9001"
        with pytest.raises(fednode.ConfigError) as caught:
            fednode.load_config(write_config(tmp_path, raw), environ={})
        assert caught.value.problems[0][0] == "peers[0].control"
        assert "SENTINEL" not in str(caught.value)


class TestHS512SecretLength:
    """An HS512 secret under 64 bytes is refused with its length in bytes, never its value."""

    @pytest.mark.parametrize(("secret", "length"), [
        (SHORT_SECRET, 17),
        ("x" * 63, 63),
        ("", 0),
        ("é" * 31, 62),  # 31 characters, 62 bytes
    ])
    def test_short_secret_refused(self, tmp_path: Path, secret: str, length: int) -> None:
        raw = base_raw()
        raw["auth"] = {"secrets": [SECRET, secret]}
        with pytest.raises(fednode.ConfigError) as caught:
            fednode.load_config(write_config(tmp_path, raw), environ={})
        [(key, message)] = caught.value.problems
        assert key == "auth.secrets[1]"
        assert message.startswith(f"HS512 secret is {length} bytes; at least 64 are required")
        if secret:
            assert secret not in str(caught.value)

    @pytest.mark.parametrize("secret", ["x" * 64, "é" * 32])
    def test_64_bytes_accepted(self, tmp_path: Path, secret: str) -> None:
        raw = base_raw()
        raw["auth"] = {"secret": secret}
        config = fednode.load_config(write_config(tmp_path, raw), environ={})
        assert len(config.auth.secrets[0]) == 64

    def test_hint_says_how_to_make_a_secret(self, tmp_path: Path) -> None:
        raw = base_raw()
        raw["auth"]["secret"] = SHORT_SECRET
        with pytest.raises(fednode.ConfigError) as caught:
            fednode.load_config(write_config(tmp_path, raw), environ={})
        hint = str(caught.value).split("make one with: ", 1)[1]
        assert "secrets.token_urlsafe(64)" in hint


class TestServerPing:
    """``[[servers]] ping_interval`` / ``ping_timeout``: defaults, 0 = never ping, bad values reported."""

    def test_defaults_values_and_problems(self) -> None:
        raw = base_raw()
        raw["servers"] = [{"id": "a", "command": "python"},
                          {"id": "b", "command": "python", "ping_interval": "0s", "ping_timeout": "500ms"}]
        a, b = fednode.NodeConfig.from_mapping(raw).servers
        assert (a.ping_interval, a.ping_timeout) == (30.0, 10.0)
        assert (b.ping_interval, b.ping_timeout) == (0.0, 0.5)
        raw["servers"] = [{"id": "c", "command": "python", "ping_interval": "soon", "ping_timeout": "0s"},
                          {"id": "d", "command": "python", "ping_interval": "25h"}]
        with pytest.raises(fednode.ConfigError) as caught:
            fednode.NodeConfig.from_mapping(raw)
        problems = dict(caught.value.problems)
        assert "bad duration 'soon'" in problems["servers[0].ping_interval"]
        assert problems["servers[0].ping_timeout"] == "must be greater than 0"
        assert problems["servers[1].ping_interval"] == "must be at most 86400s (a day)"


class TestServerConnections:
    """``[[servers]] max_connections``: 8 by default, at least 1."""

    def test_default_value_and_problem(self) -> None:
        raw = base_raw()
        raw["servers"] = [{"id": "a", "command": "python"}, {"id": "b", "command": "python", "max_connections": 2}]
        a, b = fednode.NodeConfig.from_mapping(raw).servers
        assert (a.max_connections, b.max_connections) == (8, 2)
        raw["servers"] = [{"id": "c", "command": "python", "max_connections": 0}]
        with pytest.raises(fednode.ConfigError) as caught:
            fednode.NodeConfig.from_mapping(raw)
        assert dict(caught.value.problems)["servers[0].max_connections"] == "must be >= 1, got 0"


class TestRateLimits:
    """``[[peers]] rate``, ``[clients] rate`` and ``max_connections``: defaults, values, reported problems."""

    def test_defaults_and_values(self) -> None:
        raw = base_raw()
        raw["peers"] = [{"id": "node-b"}, {"id": "node-c", "rate": "100/s"}]
        config = fednode.NodeConfig.from_mapping(raw)
        assert [str(peer.rate) for peer in config.peers] == ["60000/min", "100/s"]
        assert (str(config.clients.rate), config.clients.max_connections) == ("6000/min", 100)
        raw["clients"] = {"rate": "${RATE}", "max_connections": 5}
        clients = fednode.NodeConfig.from_mapping(raw, environ={"RATE": "1000/min"}).clients
        assert (clients.rate.count, clients.rate.per, clients.max_connections) == (1000, 60.0, 5)

    def test_every_problem_with_its_key_path(self) -> None:
        raw = base_raw()
        raw["peers"] = [{"id": "node-b", "rate": "fast"}, {"id": "node-c", "rate": "-5/min"}]
        raw["clients"] = {"rate": "10/min/h", "max_connections": "many"}
        with pytest.raises(fednode.ConfigError) as caught:
            fednode.NodeConfig.from_mapping(raw)
        problems = dict(caught.value.problems)
        assert set(problems) == {"peers[0].rate", "peers[1].rate", "clients.rate", "clients.max_connections"}
        assert problems["peers[0].rate"].startswith("bad rate 'fast'")
        assert problems["clients.max_connections"] == "expected an integer, got str"


# -- arbitrary input ----------------------------------------------------------------------------

_KEYS = ["node", "auth", "heartbeat", "backoff", "link", "tls", "peers", "servers", "mcp", "clients", "id",
         "control", "data", "shutdown_grace", "type", "algorithm", "secret", "secrets", "private_key", "token_ttl",
         "leeway", "interval", "timeout", "initial", "max", "multiplier", "reset_after", "handshake_timeout",
         "max_message_size", "max_protocol_errors", "max_inflight", "cert", "key", "ca", "public_key",
         "public_keys", "export", "import", "transit", "command", "args", "env", "cwd", "url", "headers", "prefix",
         "ping_interval", "ping_timeout", "request_timeout", "first_list_wait", "tokens", "rate",
         "max_connections"]
_STRINGS = ["", "node-a", "node-b", "5s", "0s", "500ms", "2h", "-1s", "HS512", "EdDSA", "jwt", "python",
            "ws://127.0.0.1:9001", "wss://127.0.0.1:0", "http://127.0.0.1:0", "https://h:1", "ws://a:b@h:1",
            "${X}", "${UNSET}", "$$", "-----BEGIN PUBLIC KEY-----", SECRET, SHORT_SECRET, "x" * 64,
            "6000/min", "0/s", "9" * 30 + "/s"]
# No "/": a random absolute path must not name a real file (reading /dev/zero would never end).
_scalars = (st.sampled_from(_STRINGS) | st.text(alphabet=st.characters(blacklist_characters="/"), max_size=12)
            | st.booleans() | st.integers() | st.floats() | st.none() | st.just(10**400))
_keys = st.sampled_from(_KEYS) | st.text(max_size=8)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
                       max_leaves=30)
# Mostly the right shape (tables of tables, arrays of tables), with arbitrary values inside.
_configs = st.dictionaries(st.sampled_from(_KEYS[:10]) | _keys, st.dictionaries(_keys, _values, max_size=6) | st.lists(
    st.dictionaries(_keys, _values, max_size=6), max_size=3) | _values, max_size=8)
_configs = _configs | _configs.map(lambda changes: {**base_raw(), **changes})  # often valid but for the changes


class TestArbitraryInput:
    """Whatever a file holds, loading either succeeds or raises ConfigError with problems; nothing else escapes."""

    @settings(deadline=None, max_examples=200)  # no deadline: a busy machine may stall any single example
    @given(_configs)
    @example({"node": {"id": "node-a"}, "peers": [{"id": "node-b", "control": "ws://h:1", "import": "x"}]})
    @example({"node": {"id": "node-a"}, "servers": [{"id": "s", "env": {"A": 1}}], "tls": {"cert": "."}})
    def test_only_config_errors(self, raw: dict[str, Any]) -> None:
        try:
            config = fednode.NodeConfig.from_mapping(raw, environ={"X": "1"},
                                                     base_dir=Path("/nonexistent-fednode-test-dir"))
        except fednode.ConfigError as exc:
            assert exc.problems
            assert all(isinstance(key, str) and isinstance(message, str) and message for key, message in exc.problems)
        else:
            assert isinstance(config, fednode.NodeConfig)
