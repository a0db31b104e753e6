"""A link's table of requests sent and not answered: ids, deadlines, passed-on requests (no sockets)."""

from __future__ import annotations

from fednode._peers._requests import Pending, RequestTable


def test_ids_are_shared_by_own_and_passed_on_requests() -> None:
    table = RequestTable[str]()
    assert table.new_id() == 1
    assert table.add_passed("relayed", 10.0) == 2
    assert table.new_id() == 3
    assert table.passed == {2: "relayed"}


def test_expired_yields_what_is_due_in_deadline_order_and_forgets_it() -> None:
    table = RequestTable[str]()
    late = table.add(table.new_id(), 30.0)
    early = table.add(table.new_id(), 10.0)
    table.add_passed("relayed", 20.0)
    assert list(table.expired(9.999)) == []
    assert list(table.expired(20.0)) == [early, "relayed"]  # the caller marks them; the heap forgets them
    assert list(table.expired(20.0)) == []
    assert list(table.expired(30.0)) == [late]


def test_answered_or_removed_requests_are_skipped() -> None:
    table = RequestTable[str]()
    answered = table.add(table.new_id(), 10.0)
    answered.done.set()
    gone_id = table.new_id()
    table.add(gone_id, 10.0)
    del table.pending[gone_id]
    finished = table.add_passed("finished", 10.0)
    del table.passed[finished]
    live = table.add(table.new_id(), 10.0)
    assert list(table.expired(10.0)) == [live]
    assert isinstance(live, Pending)


def test_heap_is_compacted_once_answered_entries_dominate() -> None:
    table = RequestTable[str]()
    ids = [table.new_id() for _ in range(2000)]
    for request_id in ids:
        table.add(request_id, 100.0)
    for request_id in ids[1:]:
        del table.pending[request_id]  # answered long before their deadline
    assert list(table.expired(0.0)) == []
    assert len(table._heap) == 1
    assert list(table.expired(100.0)) == [table.pending[ids[0]]]
