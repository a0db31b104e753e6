"""Fair shares of in-flight slots (fednode._shares): no I/O, so checked exhaustively with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode._config._config import NODE_ID_RE
from fednode._peers._shares import LOCAL, FairShares, Refusal

PARTIES = ("node-a", "node-b", "evil", LOCAL)
SERVERS = ("one", "two", "three")


class TestTheRule:
    """Each known party keeps a reserve, the rest is shared, one server holds at most half."""

    def test_a_flooding_party_leaves_the_others_their_reserves(self) -> None:
        pool = FairShares(128, PARTIES)
        assert pool.reserve == 16  # 128 / (2 * 4)
        taken = 0
        while pool.acquire("evil", ("c", f"s{taken % 3}")) is None:
            taken += 1
        assert taken == pool.cap("evil") == 128 - 3 * 16
        assert pool.acquire("evil", ("c", "s9")) is Refusal.SHARE
        for party in ("node-a", "node-b", LOCAL):
            for _ in range(16):
                assert pool.acquire(party, ("c", "other")) is None
            assert pool.acquire(party, ("c", "other")) is Refusal.SHARE
        assert pool.in_use == 128

    def test_a_peer_named_local_is_not_the_nodes_own_clients(self) -> None:
        assert NODE_ID_RE.match("local") and not NODE_ID_RE.match(LOCAL)
        pool = FairShares(8, ("local", LOCAL))  # reserve 2 each, 4 shared
        for i in range(6):  # its reserve and the whole shared half
            assert pool.acquire("local", f"s{i % 2}{i}") is None
        assert pool.acquire("local", "s9") is Refusal.SHARE
        assert pool.acquire(LOCAL, "x") is None and pool.acquire(LOCAL, "y") is None  # the clients' reserve

    def test_one_server_holds_at_most_half(self) -> None:
        pool = FairShares(4, (LOCAL, "node-b"))
        assert pool.acquire(LOCAL, "slow") is None
        assert pool.acquire(LOCAL, "slow") is None
        assert pool.acquire(LOCAL, "slow") is Refusal.SERVER
        assert pool.acquire(LOCAL, "fast") is None  # the shared slot is free for another server
        pool.release(LOCAL, "slow")
        assert pool.acquire("node-b", "slow") is None

    def test_a_party_it_does_not_know_takes_shared_slots_only(self) -> None:
        pool = FairShares(8, ("node-a", LOCAL))  # reserve 2 each
        assert [pool.acquire("stranger", f"s{i}") for i in range(5)] == [None, None, None, None, Refusal.SHARE]
        assert pool.acquire("node-a", "x") is None and pool.acquire("node-a", "y") is None

    def test_new_parties_take_effect_while_slots_are_held(self) -> None:
        pool = FairShares(8)
        for i in range(8):
            assert pool.acquire("node-a", f"s{i % 4}") is None
        pool.set_parties(("node-a", "node-b"))
        # The pool is full: node-b's reserve waits for slots to come back, and node-a gets none.
        assert pool.acquire("node-b", "x") is Refusal.SHARE
        pool.release("node-a", "s0")
        assert pool.acquire("node-a", "s0") is Refusal.SHARE
        assert pool.acquire("node-b", "x") is None

    def test_a_pool_has_a_slot(self) -> None:
        with pytest.raises(ValueError, match="at least one slot"):
            FairShares(0)


operations = st.lists(st.tuples(st.booleans(), st.sampled_from((*PARTIES, "stranger")), st.sampled_from(SERVERS)),
                      max_size=300)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(1, 40), parties=st.sets(st.sampled_from(PARTIES)), steps=operations)
def test_properties_hold_whatever_the_callers_do(total: int, parties: set[str],
                                                 steps: list[tuple[bool, str, str]]) -> None:
    """No server over half, nobody in another's reserve, and a party below its reserve always served."""
    pool = FairShares(total, parties)
    held: list[tuple[str, str]] = []
    for take, party, server in steps:
        if not take:
            mine = [slot for slot in held if slot[0] == party]
            if mine:
                held.remove(mine[0])
                pool.release(*mine[0])
            continue
        below_reserve = party in parties and pool.held(party) < pool.reserve
        server_room = pool.server_held(server) < pool.server_cap
        refusal = pool.acquire(party, server)
        if refusal is None:
            held.append((party, server))
        if below_reserve and server_room:
            assert refusal is None, "a party below its reserve was refused"
        if not server_room:
            assert refusal is Refusal.SERVER
        # the books match what was handed out
        assert pool.in_use == len(held) <= total
        assert all(pool.server_held(s) == sum(1 for _, x in held if x == s) <= pool.server_cap for s in SERVERS)
        # the reserves nobody uses yet are still there: in use + unused reserves never exceed the pool
        unused = sum(max(0, pool.reserve - pool.held(p)) for p in parties)
        assert pool.in_use + unused <= total
        # so no party ever holds more than its cap (the pool less the others' reserves)
        assert all(pool.held(p) <= pool.cap(p) for p in (*PARTIES, "stranger"))
