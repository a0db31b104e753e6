"""The cap on connections a node opens to one attached server for its callers (no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fednode._mcp._upstream_slots import ConnectionSlots
from fednode._peers._shares import LOCAL


class TestConnectionSlots:
    """At most max_connections - 1 extra connections, at most half of max_connections for one source."""

    def test_default_cap_and_share(self) -> None:
        slots = ConnectionSlots(8)
        taken = [slots.acquire("node-b") for _ in range(4)]
        assert all(taken) and slots.acquire("node-b") is None  # half of 8 through one peer
        assert "node-b" in (slots.why_full("node-b") or "")
        assert [slots.acquire("node-c") for _ in range(4)].count(None) == 1  # 7 extras + the shared one = 8
        assert slots.in_use == 7 and slots.acquire(LOCAL) is None
        assert "all 8" in (slots.why_full(LOCAL) or "")
        first = taken[0]
        assert first is not None
        slots.release(first)
        slots.release(first)  # twice is harmless
        assert slots.in_use == 6 and slots.held_by("node-b") == 3
        assert slots.acquire(LOCAL) is not None

    def test_one_connection_means_everyone_shares(self) -> None:
        slots = ConnectionSlots(1)
        assert slots.limit == 0 and slots.acquire(LOCAL) is None

    def test_two_connections_give_one_extra(self) -> None:
        slots = ConnectionSlots(2)
        assert slots.acquire("node-b") is not None and slots.acquire("node-c") is None

    def test_reuse_moves_the_charge_within_the_share(self) -> None:
        slots = ConnectionSlots(4)  # 3 extras, 2 per source
        local = slots.acquire(LOCAL)
        b1, b2 = slots.acquire("node-b"), slots.acquire("node-b")
        assert local is not None and b1 is not None and b2 is not None
        assert not slots.move(local, "node-b")  # node-b holds its share already
        assert slots.held_by(LOCAL) == 1
        slots.release(b1)
        assert slots.move(local, "node-b") and slots.held_by("node-b") == 2 and slots.held_by(LOCAL) == 0
        assert slots.move(local, "node-b")  # already its own
        slots.release(local)
        assert slots.in_use == 1 and not slots.move(local, LOCAL)

    def test_zero_is_refused(self) -> None:
        with pytest.raises(ValueError, match="at least 1"):
            ConnectionSlots(0)

    @given(st.integers(1, 20), st.lists(st.tuples(st.sampled_from(["acquire", "release", "move"]),
                                                  st.sampled_from([LOCAL, "node-b", "node-c"]),
                                                  st.integers(0, 30)), max_size=200))
    def test_bounds_hold_whatever_happens(self, cap: int, steps: list[tuple[str, str, int]]) -> None:
        slots = ConnectionSlots(cap)
        held = []
        for action, source, index in steps:
            if action == "acquire":
                slot = slots.acquire(source)
                if slot is not None:
                    held.append(slot)
            elif held:
                slot = held[index % len(held)]
                if action == "release":
                    slots.release(slot)
                    held.remove(slot)
                else:
                    slots.move(slot, source)
            assert slots.in_use == len(held) <= max(0, cap - 1)
            for name in (LOCAL, "node-b", "node-c"):
                assert slots.held_by(name) == sum(s.source == name for s in held) <= max(1, cap // 2)
