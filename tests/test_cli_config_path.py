"""Where `run`, `mcp` and `check-config` take the configuration from: --config, a positional FILE, or FEDNODE_CONFIG.

Launchers such as the MCP Inspector claim ``--config`` for themselves, so a node they start needs
another way to be told its file. Precedence: ``--config``, then FILE (naming two different files is
an error), then the environment.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import trio
from test_cli_tools import fednode_cli, fednode_many

from fednode._cli._commands import CONFIG_ENV, config_path_from

from conftest import SECRET


def write_node(path: Path, node_id: str) -> Path:
    path.write_text(f'[node]\nid = "{node_id}"\ncontrol = "ws://127.0.0.1:0"\n[auth]\nsecret = "{SECRET}"\n')
    return path


class TestResolution:
    def test_precedence(self, tmp_path: Path) -> None:
        env = {CONFIG_ENV: "from-env.toml"}
        assert config_path_from("option.toml", None, env) == "option.toml"
        assert config_path_from(None, "positional.toml", env) == "positional.toml"
        assert config_path_from(None, None, env) == "from-env.toml"
        same = str(write_node(tmp_path / "same.toml", "node-s"))
        assert config_path_from(same, str(tmp_path / "." / "same.toml"), {}) == same  # one file, two spellings

    def test_two_files_or_none_are_usage_errors(self) -> None:
        with pytest.raises(click.UsageError, match=r"--config a.toml and FILE b.toml name different files"):
            config_path_from("a.toml", "b.toml", {})
        with pytest.raises(click.UsageError, match=f"no configuration file: .* or set {CONFIG_ENV}"):
            config_path_from(None, None, {CONFIG_ENV: ""})


async def test_check_config_takes_each_form(tmp_path: Path) -> None:
    s = str(write_node(tmp_path / "s.toml", "node-s"))
    t = str(write_node(tmp_path / "t.toml", "node-t"))
    with trio.fail_after(60):
        positional, option, both, from_env, option_over_env, positional_over_env = await fednode_many(
            ["check-config", s], ["check-config", "--config", s], ["check-config", "--config", s, s],
            ["check-config"], ["check-config", "--config", s], ["check-config", s], env={CONFIG_ENV: t})
    for result in (positional, option, both, option_over_env, positional_over_env):
        assert result.returncode == 0, result.stderr
        assert "node-s" in result.stdout.decode() and "node-t" not in result.stdout.decode()
    assert from_env.returncode == 0 and "node-t" in from_env.stdout.decode()


@pytest.mark.parametrize("command", ["run", "mcp", "check-config"])
async def test_missing_or_conflicting_files_are_refused_before_anything_starts(tmp_path: Path, command: str) -> None:
    s = str(write_node(tmp_path / "s.toml", "node-s"))
    t = str(write_node(tmp_path / "t.toml", "node-t"))
    with trio.fail_after(60):
        missing, conflicting = await fednode_many([command], [command, "--config", s, t])
    assert missing.returncode == 2
    assert f"no configuration file: give FILE or --config FILE, or set {CONFIG_ENV}" in missing.stderr.decode()
    assert conflicting.returncode == 2
    assert f"--config {s} and FILE {t} name different files" in conflicting.stderr.decode()
    assert b"node.started" not in missing.stderr + conflicting.stderr


@pytest.mark.parametrize("command", ["run", "mcp"])
async def test_run_and_mcp_read_the_file_named_in_the_environment(tmp_path: Path, command: str) -> None:
    """The file FEDNODE_CONFIG names is the one loaded: its problem is reported, nothing starts."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nid = "Not A Valid Id"\n')
    with trio.fail_after(60):
        result = await fednode_cli(command, env={CONFIG_ENV: str(bad)})
    assert result.returncode == 2
    assert f"invalid configuration: {bad}" in result.stderr.decode()
