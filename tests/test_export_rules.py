"""Tool-level ``export``/``import`` rules (fednode._config._export_rules): parsing, semantics, config errors."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fednode
from fednode._config._export_rules import NameRules, entry_problem

from conftest import raw_config

SERVERS = ["files", "notes", "clock"]
NAMES = ["read_a", "read_secret", "delete", "write", "list"]
GLOBS = ["read_*", "*", "read_secret", "d*", "?rite", "[lr]*", "nothing"]


class TestSemantics:
    def test_server_ids_behave_as_before(self) -> None:
        rules = NameRules.parse(["notes"])
        assert rules.server("notes") and not rules.server("files")
        assert rules.whole("notes") and rules.item("notes", "tools", "anything")
        assert not rules.item("files", "tools", "read_a") and not rules.item("files", "resources", "file:///x")

    def test_globs_and_exclusions(self) -> None:
        rules = NameRules.parse(["notes", "files.read_*", "!files.read_secret"])
        assert rules.server("files") and not rules.whole("files")
        assert rules.item("files", "tools", "read_a") and rules.item("files", "prompts", "read_me")
        assert not rules.item("files", "tools", "read_secret")  # the exclusion wins
        assert not rules.item("files", "tools", "delete")  # not included
        assert rules.item("files", "resources", "file:///etc")  # resources follow the server
        assert rules.item("files", "resourceTemplates", "file:///{path}")
        assert not rules.server("clock")

    def test_only_exclusions_mean_everything_except(self) -> None:
        rules = NameRules.parse(["!files.delete*", "!secret"])
        assert rules.only_exclusions
        assert rules.whole("notes") and rules.item("clock", "tools", "now")
        assert rules.server("files") and not rules.whole("files")
        assert rules.item("files", "tools", "read_a") and not rules.item("files", "tools", "delete_all")
        assert not rules.server("secret") and not rules.item("secret", "resources", "x")

    def test_excluding_a_server_whole_drops_its_resources(self) -> None:
        rules = NameRules.parse(["files.read_*", "!files"])
        assert not rules.server("files") and not rules.item("files", "tools", "read_a")
        assert not rules.item("files", "resources", "file:///a")

    def test_empty_list_lets_nothing_through(self) -> None:
        rules = NameRules.parse([])
        assert not rules.server("notes") and not rules.only_exclusions

    def test_globs_match_case_sensitively(self) -> None:
        rules = NameRules.parse(["files.Read*"])
        assert rules.item("files", "tools", "Read_a") and not rules.item("files", "tools", "read_a")

    def test_peer_config_delegates(self) -> None:
        peer = fednode.PeerConfig(id="node-a", export=("files.read_*",), import_=("!notes.x",))
        assert peer.exports("files") and not peer.exports("notes")
        assert peer.exports_item("files", "tools", "read_a") and not peer.exports_item("files", "tools", "delete")
        assert peer.imports("notes") and not peer.imports_item("notes", "tools", "x")
        assert peer.imports_item("notes", "tools", "y")
        everything = fednode.PeerConfig(id="node-a")
        assert everything.exports_item("x", "tools", "y") and everything.imports_item("x", "prompts", "y")

    def test_peer_config_refuses_invalid_entries(self) -> None:
        with pytest.raises(ValueError, match="entry 1"):
            fednode.PeerConfig(id="node-a", export=("notes", "!"))


entries = st.tuples(st.booleans(), st.sampled_from(SERVERS), st.one_of(st.none(), st.sampled_from(GLOBS))).map(
    lambda e: ("!" if e[0] else "") + e[1] + ("" if e[2] is None else f".{e[2]}"))


class TestProperties:
    @given(st.lists(entries, max_size=6), st.sampled_from(SERVERS), st.sampled_from(NAMES),
           st.sampled_from(["tools", "prompts"]))
    def test_exclusion_always_wins(self, listed: list[str], server: str, name: str, kind: str) -> None:
        rules = NameRules.parse(listed)
        excluded = any(entry == f"!{server}" or (entry.startswith(f"!{server}.")
                                                 and fnmatchcase(name, entry.split(".", 1)[1]))
                       for entry in listed)
        if excluded:
            assert not rules.item(server, kind, name)
            # Adding any inclusion does not change that.
            assert not NameRules.parse([*listed, server, f"{server}.{name}"]).item(server, kind, name)

    @given(st.lists(st.sampled_from(SERVERS), max_size=3), st.sampled_from(SERVERS), st.sampled_from(NAMES),
           st.sampled_from(["tools", "prompts", "resources", "resourceTemplates"]))
    def test_plain_server_ids_behave_as_before(self, listed: list[str], server: str, name: str, kind: str) -> None:
        rules = NameRules.parse(listed)
        before = server in listed  # what a list of server ids meant before globs
        assert rules.server(server) == before == rules.item(server, kind, name) == rules.whole(server)

    @given(st.lists(entries, max_size=6), st.sampled_from(SERVERS), st.sampled_from(NAMES))
    def test_an_item_goes_only_with_its_server(self, listed: list[str], server: str, name: str) -> None:
        rules = NameRules.parse(listed)
        if rules.item(server, "tools", name):
            assert rules.server(server) and rules.item(server, "resources", "x")
        if rules.whole(server):
            assert rules.item(server, "tools", name)


class TestConfigErrors:
    @pytest.mark.parametrize(("entry", "message"), [
        ("!", "'!' needs a server id"),
        ("", "is empty"),
        ("files.", "glob after 'files.' is empty"),
        ("Files.read_*", "server id 'Files' must match"),
        ("fi les", "whitespace"),
        ("files.!read", "put ! before the server id"),
        ("*.read", "server id '*' must match"),
        ("!!files", "server id '!files' must match"),
    ])
    def test_bad_entries(self, entry: str, message: str) -> None:
        problem = entry_problem(entry)
        assert problem is not None and message in problem

    def test_reported_with_their_key_path(self) -> None:
        raw = raw_config("node-b", peers=[{"id": "node-a", "export": ["notes", "files.read_*", "!"],
                                           "import": ["x.", "ok"]}])
        with pytest.raises(fednode.ConfigError) as info:
            fednode.NodeConfig.from_mapping(raw)
        text = str(info.value)
        assert "peers[0].export[2]" in text and "'!' needs a server id" in text
        assert "peers[0].import[0]" in text and "glob after 'x.' is empty" in text
        assert "export[0]" not in text and "export[1]" not in text and "import[1]" not in text

    def test_valid_lists_load(self) -> None:
        raw = raw_config("node-b", peers=[{"id": "node-a", "export": ["notes", "files.read_*", "!files.read_secret"],
                                           "import": ["!clock"]}])
        peer = fednode.NodeConfig.from_mapping(raw).peers[0]
        assert peer.export == ("notes", "files.read_*", "!files.read_secret")
        assert peer.exports_item("files", "tools", "read_a") and not peer.exports_item("files", "tools", "read_secret")
        assert not peer.imports("clock") and peer.imports("notes")
