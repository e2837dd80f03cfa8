"""Group commits (syncq.grouped): the calls of one loop turn run as one, and none is lost or
run twice when one of them is bad."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import syncq
from syncq.errors import InvalidInput
from syncq.grouped import Grouped
from syncq.records import Prompt
from syncq.space import Space


class Ledger:
    """A ``run`` that stores a whole group or nothing, refusing any group with a bad item."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.stored: list[int] = []

    def __call__(self, items: Sequence[int]) -> list[str]:
        self.groups.append(list(items))
        if any(item < 0 for item in items):
            raise InvalidInput(f"bad items in {list(items)}")
        self.stored.extend(items)
        return [f"stored {item}" for item in items]


def test_calls_of_one_turn_run_as_one_group_in_order() -> None:
    ledger = Ledger()

    async def main() -> list[str]:
        grouped = Grouped(ledger)
        return list(await asyncio.gather(*(grouped(i) for i in range(5))))

    assert asyncio.run(main()) == [f"stored {i}" for i in range(5)]
    assert ledger.groups == [[0, 1, 2, 3, 4]]


def test_a_lone_call_runs_at_the_next_turn_and_later_calls_make_new_groups() -> None:
    ledger = Ledger()

    async def main() -> None:
        grouped = Grouped(ledger)
        assert await grouped(1) == "stored 1"
        assert await grouped(2) == "stored 2"

    asyncio.run(main())
    assert ledger.groups == [[1], [2]]


def test_while_more_are_on_the_way_a_group_waits_for_them_until_it_is_full() -> None:
    ledger = Ledger()

    async def main() -> list[str]:
        grouped = Grouped(ledger, hold=lambda: True, hold_s=60, most=3)

        async def later(item: int, turns: int) -> str:
            for _ in range(turns):
                await asyncio.sleep(0)  # one turn of the loop (not a wait for time)
            return await grouped(item)

        return list(await asyncio.gather(*(later(i, 3 * i) for i in range(6))))

    assert asyncio.run(main()) == [f"stored {i}" for i in range(6)]
    assert ledger.groups == [[0, 1, 2], [3, 4, 5]]


def test_a_held_group_goes_when_nothing_more_is_on_the_way_or_its_time_is_up() -> None:
    ledger = Ledger()
    coming = [True]

    async def main() -> None:
        grouped = Grouped(ledger, hold=lambda: coming[0], hold_s=60)
        first = asyncio.ensure_future(grouped(1))
        for _ in range(5):
            await asyncio.sleep(0)
        assert ledger.groups == []  # held: more are coming
        coming[0] = False
        assert await asyncio.gather(first, grouped(2)) == ["stored 1", "stored 2"]
        coming[0] = True
        timed = Grouped(ledger, hold=lambda: True, hold_s=0.01)
        assert await timed(3) == "stored 3"  # nobody came: it went when its time was up

    asyncio.run(main())
    assert ledger.groups == [[1, 2], [3]]


def test_a_bad_item_fails_its_own_caller_only() -> None:
    ledger = Ledger()

    async def main() -> list[object]:
        grouped = Grouped(ledger)
        return list(await asyncio.gather(grouped(1), grouped(-1), grouped(2), return_exceptions=True))

    one, bad, two = asyncio.run(main())
    assert (one, two) == ("stored 1", "stored 2")
    assert isinstance(bad, InvalidInput) and "[-1]" in str(bad)
    assert ledger.stored == [1, 2]  # each good item once: the group failed whole, then each alone


def test_a_cancelled_caller_still_has_its_item_run() -> None:
    ledger = Ledger()

    async def main() -> None:
        grouped = Grouped(ledger)
        gone = asyncio.ensure_future(grouped(7))
        stays = asyncio.ensure_future(grouped(8))
        await asyncio.sleep(0)  # both are waiting now
        gone.cancel()
        assert await stays == "stored 8"
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(main())
    assert ledger.stored == [7, 8]


def test_a_run_that_answers_the_wrong_number_of_items_fails_every_caller() -> None:
    async def main() -> list[object]:
        grouped: Grouped[int, str] = Grouped(lambda items: [])
        return list(await asyncio.gather(grouped(1), grouped(2), return_exceptions=True))

    assert [str(e) for e in asyncio.run(main())] == ["a group of 1 got 0 answers"] * 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-3, 30)), max_size=30))
def test_every_good_item_is_stored_once_and_every_caller_answered(calls: list[tuple[int, int]]) -> None:
    """Calls spread over loop turns (the first number), some bad (negative): each good item is
    stored exactly once and its caller gets its answer; each bad one's caller gets the error."""
    ledger = Ledger()

    async def main() -> list[object]:
        grouped = Grouped(ledger)
        tasks = []
        for turn in range(4):
            tasks += [asyncio.ensure_future(grouped(item)) for t, item in calls if t == turn]
            await asyncio.sleep(0)
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    answers = asyncio.run(main())
    items = [item for turn in range(4) for t, item in calls if t == turn]
    for item, answer in zip(items, answers, strict=True):
        if item < 0:
            assert isinstance(answer, InvalidInput)
        else:
            assert answer == f"stored {item}"
    assert sorted(ledger.stored) == sorted(item for item in items if item >= 0)


def test_submits_of_one_turn_are_one_envelope_and_a_bad_one_is_refused_alone(tmp_path: Path) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = first.paths.root

    async def main() -> list[object]:
        async with syncq.aopen(home) as client:
            return list(
                await asyncio.gather(
                    client.submit("one", model="echo"),
                    client.submit("two", model="echo", params={"temperature": "hot"}),
                    client.submit("three", model="echo"),
                    return_exceptions=True,
                )
            )

    with Space.open(home) as space:
        before = space.store.count()
    one, bad, three = asyncio.run(main())
    assert isinstance(bad, InvalidInput)
    assert isinstance(one, Prompt) and isinstance(three, Prompt)
    with Space.open(home) as space:
        assert space.store.count() == before + 2  # the group was refused whole, then each alone
        texts = [e.prompt.input for e in space.entries(limit=None)]
    assert texts == ["one", "three"]


def test_good_submits_of_one_turn_share_one_envelope(tmp_path: Path) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = first.paths.root

    async def main() -> None:
        async with syncq.aopen(home) as client:
            await asyncio.gather(*(client.submit(f"p{i}", model="echo") for i in range(10)))

    with Space.open(home) as space:
        before = space.store.count()
    asyncio.run(main())
    with Space.open(home) as space:
        assert space.store.count() == before + 1
        assert [e.prompt.input for e in space.entries(limit=None)] == [f"p{i}" for i in range(10)]


def test_a_commit_hook_that_raises_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """The store took the group, then its commit hook raised: the adds are stored once, and the
    next add (which must not reuse the group's Yjs clocks) is stored too."""
    with Space.init(tmp_path / "a", name="a") as first:
        home = first.paths.root
    raised: list[bool] = []

    def hook() -> None:
        if not raised:
            raised.append(True)
            raise RuntimeError("a listener broke")

    async def main() -> list[Prompt]:
        async with syncq.aopen(home) as client:
            client.space.store.committed = hook  # type: ignore[attr-defined]
            group = await asyncio.gather(*(client.submit(f"p{i}", model="echo") for i in range(3)))
            return [*group, await client.submit("next", model="echo")]

    added = asyncio.run(main())
    assert raised
    with Space.open(home) as space:
        stored = space.entries(limit=None)
    assert [e.prompt.input for e in stored] == ["p0", "p1", "p2", "next"]
    assert [e.prompt.id for e in stored] == [p.id for p in added]
