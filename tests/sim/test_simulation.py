"""The seeded whole-mesh simulation (tests/sim/simulation.py): 2,000 schedules of crashes,
partitions, cuts, lost, duplicated and reordered frames, snapshots, pruning and device removal,
each checked against every promise once the mesh heals. ``make sim SEEDS=100000`` runs more,
larger ones; a failing seed prints the command that replays it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from simulation import FULL, SMALL, SimFailure, World, scratch_folder, simulate, template

SCHEDULES = 2_000
CHUNKS = 8  # tests of 250 schedules each, so that the workers share them


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    folder = scratch_folder()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def templates(scratch: Path) -> list[Path]:
    return template(scratch / "template", 5)


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_schedule_keeps_every_promise(chunk: int, templates: list[Path], scratch: Path) -> None:
    size = SCHEDULES // CHUNKS
    failures: list[str] = []
    for seed in range(chunk * size, (chunk + 1) * size):
        try:
            simulate(seed, templates, scratch, SMALL)
        except SimFailure as exc:
            failures.append(str(exc))
    assert not failures, f"{len(failures)} schedule(s) failed; the first:\n{failures[0]}"


def test_a_seed_replays_exactly(templates: list[Path], scratch: Path) -> None:
    first = simulate(7, templates, scratch, FULL)
    again = simulate(7, templates, scratch, FULL)
    assert first.digest == again.digest and first.stats == again.stats
    assert first.stats["prompts"] > 0 and first.stats["runs"] > 0
    assert simulate(8, templates, scratch, FULL).digest != first.digest


def test_a_mesh_that_never_heals_is_reported(templates: list[Path], scratch: Path) -> None:
    # The checks are not vacuous: a node kept apart after the heal is found (its prompts are
    # acknowledged, the others never get them).
    root = scratch / "apart"
    world = World(3, root, templates, SMALL)
    try:
        world.run_until(SMALL.active_ms + 1)
        world.after(1, None, lambda: world.add_on(world.nodes[2]))
        world.side = [0, 0, 1]
        for key in [k for k in world.links if 2 in k]:
            world.drop_link(key)
        assert not world.run_until(world.now + 20_000, world.quiet)
        assert "not connected" in world.unquiet()
        with pytest.raises(SimFailure, match="lost acknowledged prompt"):
            world.check()
    finally:
        world.close()
        shutil.rmtree(root, ignore_errors=True)
