"""Draw one image per line of a text file on whichever node of the mesh serves an image model.

Every line is queued first, so that any number of nodes can work through them, then each PNG is
saved as its result arrives: line 3 of the prompts, "a red fox in the snow", becomes
``OUTDIR/003-a-red-fox-in-the-snow.png`` (lines are numbered from 1, blank lines not counted).

    syncq node &                                  # syncs this home with the mesh
    python examples/batch_images.py prompts.txt out/ --width 512 --height 512 --steps 25

Options: --model (default tiny-sd: a diffusers pipeline folder in a node's
$SYNCQ_HOME/models/), --home, --width and --height (multiples of 8), --steps, --seed (the same
seed for every line: rerun and get the same pictures).

Resuming is the simplest kind: a line whose PNG exists is skipped. A run that is stopped early
leaves its other prompts queued, and the next run queues those lines again (see
transcribe_folder.py for a resume that never queues twice).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

import syncq


def slug(text: str, limit: int = 40) -> str:
    """A file-name piece made of a prompt: lower-case words joined by dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "image"


def targets(prompts: Path, outdir: Path) -> list[tuple[str, Path]]:
    """Each non-empty line of the prompts file with the PNG it becomes."""
    lines = [line.strip() for line in prompts.read_text().splitlines() if line.strip()]
    return [(text, outdir / f"{n:03d}-{slug(text)}.png") for n, text in enumerate(lines, 1)]


def draw(args: argparse.Namespace) -> int:
    args.outdir.mkdir(parents=True, exist_ok=True)
    lines = targets(args.prompts, args.outdir)
    todo = [(text, png) for text, png in lines if not png.exists()]
    params = {"width": args.width, "height": args.height, "steps": args.steps}
    if args.seed is not None:
        params["seed"] = args.seed
    incoming = args.outdir / ".incoming"  # results land here, then move into place whole
    failed = 0
    with syncq.open(args.home) as client:
        # kind: the model may not be advertised to this home yet.
        added = [(client.add(t, model=args.model, kind="image", params=params), png) for t, png in todo]
        print(f"{len(added)} queued, {len(lines) - len(added)} drawn already", flush=True)
        for n, (prompt, png) in enumerate(added, 1):
            outcome = client.result(prompt.id, files_dir=incoming)
            if not outcome.ok:
                failed += 1
                print(f"[{n}/{len(added)}] {png.name}: {outcome.status}: {outcome.error}", flush=True)
                continue
            os.replace(outcome.files[0], png)
            print(f"[{n}/{len(added)}] {png.name} ({outcome.text}, on {outcome.node_name})", flush=True)
    shutil.rmtree(incoming, ignore_errors=True)
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", type=Path)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--home", default=None)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    try:
        code = draw(args)
    except (syncq.UserError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    except KeyboardInterrupt:
        code = 130  # the prompts stay queued
    raise SystemExit(code)


if __name__ == "__main__":
    main()
