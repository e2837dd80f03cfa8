"""Transcribe every audio file of a folder on whichever node of the mesh serves a speech model.

Each file is queued at once (``syncq.aopen``: all of them in flight, one coroutine each) and its
transcript is written beside it as soon as its result arrives: ``talk.wav`` gives ``talk.txt``
and ``talk.srt`` (subtitles). This program needs no model of its own, only the node that syncs
this home.

    syncq node &                                  # syncs this home with the mesh
    python examples/transcribe_folder.py ~/recordings --language en

Options: --model (default whisper-tiny.en, which any node with the asr extra serves), --home
(default: $SYNCQ_HOME or the user data dir), --language (default: the model detects it).

It can be stopped at any moment and run again. Files that have a transcript are skipped. Every
prompt id is chosen and written to ``.syncq-transcribe.json`` in the folder *before* its prompt
is added, and adding with a known id adds nothing, so a run after a crash waits for the prompts
already queued instead of queueing them twice. A failed file leaves the state file, and the
next run queues it again. Transcripts are named by the audio's stem: keep stems unique.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
from pathlib import Path

import syncq
from syncq.ids import PromptId

AUDIO = {".wav", ".mp3", ".m4a", ".flac", ".ogg", ".opus", ".webm", ".mp4"}
STATE = ".syncq-transcribe.json"  # {audio file name: prompt id} for the prompts in flight


def write_atomically(path: Path, text: str) -> None:
    """Write a whole file or nothing: a crash never leaves half a transcript (or state)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def load_state(folder: Path) -> dict[str, PromptId]:
    path = folder / STATE
    if not path.exists():
        return {}
    return {name: PromptId(i) for name, i in json.loads(path.read_text()).items()}


def save_state(folder: Path, ids: dict[str, PromptId]) -> None:
    write_atomically(folder / STATE, json.dumps(ids, indent=1, sort_keys=True) + "\n")


async def transcribe(space: syncq.AsyncClient, audio: Path, prompt_id: str) -> tuple[Path, str | None]:
    """Wait for one prompt and write its transcript: (the audio, why it failed or None)."""
    try:
        outcome = await space.result(prompt_id)  # also fetches the result's files into the home
    except syncq.SyncqError as exc:
        return audio, str(exc)
    if not outcome.ok:
        return audio, f"{outcome.status}: {outcome.error}"
    for path in outcome.files:
        if path.suffix == ".srt":
            shutil.copyfile(path, audio.with_suffix(".srt"))
    write_atomically(audio.with_suffix(".txt"), outcome.text.strip() + "\n")  # last: "done" marker
    return audio, None


async def run(folder: Path, model: str, home: str | None, language: str | None) -> int:
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO and p.is_file())
    todo = [p for p in found if not p.with_suffix(".txt").exists()]
    params = {"language": language} if language else {}
    async with syncq.aopen(home) as client:
        known = load_state(folder)
        ids = {p.name: known.get(p.name) or client.new_prompt_id() for p in todo}
        save_state(folder, ids)  # before adding: a crash from here on re-adds the same ids
        for audio in todo:
            # kind: the model may not be advertised to this home yet; prompt_id: adding it again
            # (after a crash) adds nothing.
            client.add("", model=model, kind="asr", params=params, files=[audio], prompt_id=ids[audio.name])
        print(f"{len(todo)} to transcribe, {len(found) - len(todo)} done already", flush=True)
        failed = 0
        for finished in asyncio.as_completed([transcribe(client, p, ids[p.name]) for p in todo]):
            audio, error = await finished
            if error is None:
                print(f"{audio.name} -> {audio.with_suffix('.txt').name}", flush=True)
            else:
                failed += 1
                print(f"{audio.name}: {error}", flush=True)
            del ids[audio.name]  # done, or failed: either way the next run decides anew
            save_state(folder, ids)
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--home", default=None)
    parser.add_argument("--language", default=None)
    args = parser.parse_args()
    if not args.folder.is_dir():
        raise SystemExit(f"error: {args.folder} is not a folder")
    try:
        code = asyncio.run(run(args.folder, args.model, args.home, args.language))
    except syncq.UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    except KeyboardInterrupt:
        code = 130  # the prompts stay queued: run again to collect them
    raise SystemExit(code)


if __name__ == "__main__":
    main()
