"""examples/batch_images.py, run as a user runs it, drawn by a node in another home."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import harness
import pytest

from syncq.space import Space

pytestmark = [pytest.mark.slow, pytest.mark.model]
pytest.importorskip("diffusers", reason="the image extra is not installed")
Image = pytest.importorskip("PIL.Image")
import tiny_pipeline  # noqa: E402  (imports torch: only once the extra is known to be there)

EXAMPLE = Path(__file__).parents[2] / "examples" / "batch_images.py"
PROMPTS = "A red fox, in the snow!\n\n  a lighthouse at dusk  \nCafé au lait\n"
NAMES = ["001-a-red-fox-in-the-snow.png", "002-a-lighthouse-at-dusk.png", "003-caf-au-lait.png"]


def laptop_and_gpu(tmp_path: Path, nodes) -> Path:
    """A laptop node with no executors, and a gpu node serving the tiny pipeline as tiny-sd."""
    harness.laptop_and_gpu(tmp_path, nodes, models=lambda folder: tiny_pipeline.build(folder / "tiny-sd"))
    return tmp_path / "laptop"


def example(prompts: Path, outdir: Path, home: Path) -> subprocess.CompletedProcess[str]:
    args = ["--home", str(home), "--width", "64", "--height", "48", "--steps", "2", "--seed", "7"]
    return subprocess.run(
        [sys.executable, str(EXAMPLE), str(prompts), str(outdir), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_each_line_becomes_a_png_of_the_asked_size_and_a_rerun_adds_nothing(tmp_path: Path, nodes) -> None:
    laptop = laptop_and_gpu(tmp_path, nodes)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = tmp_path / "out"

    drawn = example(prompts, out, laptop)
    assert drawn.returncode == 0, drawn.stdout + drawn.stderr
    lines = drawn.stdout.splitlines()
    assert lines[0] == "3 queued, 0 drawn already"
    assert lines[1:] == [
        f"[{n}/3] {name} (64x48 image, 2 steps, seed 7, on gpu)" for n, name in enumerate(NAMES, 1)
    ]
    assert sorted(p.name for p in out.iterdir()) == NAMES  # and no scratch folder left behind
    for name in NAMES:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size == (64, 48)

    (out / NAMES[1]).unlink()  # one picture lost: only its line is drawn again
    again = example(prompts, out, laptop)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines() == [
        "1 queued, 2 drawn already",
        f"[1/1] {NAMES[1]} (64x48 image, 2 steps, seed 7, on gpu)",
    ]
    with Space.open(laptop) as space:
        assert [e.prompt.input for e in space.entries(limit=None)] == [
            "A red fox, in the snow!",
            "a lighthouse at dusk",
            "Café au lait",
            "a lighthouse at dusk",
        ]
    nothing = example(prompts, out, laptop)
    assert nothing.returncode == 0 and nothing.stdout == "0 queued, 3 drawn already\n"
    with Space.open(laptop) as space:
        assert len(space.entries(limit=None)) == 4
