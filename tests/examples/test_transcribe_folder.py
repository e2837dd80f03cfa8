"""examples/transcribe_folder.py, run as a user runs it, transcribed by a node in another home."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import laptop_and_gpu, wait_until
from speech import ESPEAK, NO_ESPEAK, speak

from syncq.space import Space

pytestmark = [pytest.mark.slow, pytest.mark.model]
EXAMPLE = Path(__file__).parents[2] / "examples" / "transcribe_folder.py"
STATE = ".syncq-transcribe.json"
SAID = {
    "fox.wav": "The quick brown fox jumps over the lazy dog.",
    "memo.wav": "Please send the report to the office before noon on Friday.",
}
HEARD = {
    "fox.wav": {"quick", "brown", "fox", "lazy", "dog"},
    "memo.wav": {"report", "office", "noon", "friday"},
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two spoken sentences and a file that is not audio."""
    if ESPEAK is None:
        pytest.skip(NO_ESPEAK)
    made = tmp_path / "recordings"
    made.mkdir()
    for name, text in SAID.items():
        speak(text, made / name)
    (made / "notes.md").write_text("not audio: never queued\n")
    return made


def example(folder: Path, home: Path, **popen) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE), str(folder), "--home", str(home), "--language", "en"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def prompt_ids(home: Path) -> list[str]:
    with Space.open(home) as space:
        return [e.prompt.id for e in space.entries(limit=None)]


def state(folder: Path) -> dict[str, str]:
    return json.loads((folder / STATE).read_text())


def assert_transcribed(folder: Path) -> None:
    for name, words in HEARD.items():
        heard = set(re.findall(r"[a-z]+", (folder / name).with_suffix(".txt").read_text().lower()))
        assert len(heard & words) >= len(words) - 1, (name, heard)  # tiny.en: "jump" for "jumps"
        assert "-->" in (folder / name).with_suffix(".srt").read_text()
    assert not (folder / "notes.txt").exists()


def test_a_folder_is_transcribed_beside_its_files_and_a_rerun_adds_nothing(
    tmp_path: Path, folder: Path, nodes
) -> None:
    laptop_and_gpu(tmp_path, nodes)
    laptop = tmp_path / "laptop"
    code, out = finish(example(folder, laptop))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "2 to transcribe, 0 done already"
    assert sorted(lines[1:]) == ["fox.wav -> fox.txt", "memo.wav -> memo.txt"]
    assert_transcribed(folder)
    assert state(folder) == {} and len(prompt_ids(laptop)) == 2

    code, out = finish(example(folder, laptop))
    assert code == 0 and out == "0 to transcribe, 2 done already\n"
    assert len(prompt_ids(laptop)) == 2  # nothing queued again


def test_a_run_killed_mid_way_is_resumed_with_the_same_prompts(tmp_path: Path, folder: Path, nodes) -> None:
    _, gpu_node = laptop_and_gpu(tmp_path, nodes)
    laptop = tmp_path / "laptop"
    gpu_node.stop()  # nothing completes while the first run is in flight
    with Space.open(laptop) as space:  # as if a run crashed between recording an id and adding
        early = space.new_prompt_id()
    (folder / STATE).write_text(json.dumps({"memo.wav": early}))

    proc = example(folder, laptop)
    wait_until(lambda: len(prompt_ids(laptop)) == 2, what="both prompts queued")
    recorded = state(folder)
    assert recorded["memo.wav"] == early and set(recorded.values()) == set(prompt_ids(laptop))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert not list(folder.glob("*.txt"))

    nodes(tmp_path / "gpu")
    code, out = finish(example(folder, laptop))
    assert code == 0, out
    assert out.splitlines()[0] == "2 to transcribe, 0 done already"
    assert_transcribed(folder)
    assert sorted(prompt_ids(laptop)) == sorted(recorded.values())  # waited for, not added again
    with Space.open(laptop) as space:
        assert all(e.result is not None and e.result.node_name == "gpu" for e in space.entries(limit=None))


def test_a_file_that_fails_is_reported_and_queued_again_next_time(
    tmp_path: Path, folder: Path, nodes
) -> None:
    laptop_and_gpu(tmp_path, nodes)
    laptop = tmp_path / "laptop"
    (folder / "broken.mp3").write_text("this is text, not sound\n")
    code, out = finish(example(folder, laptop))
    assert code == 1, out
    assert "broken.mp3: failed: broken.mp3 is not audio that can be decoded" in out
    assert_transcribed(folder)
    assert state(folder) == {}  # the failure is forgotten: the next run tries it again

    code, out = finish(example(folder, laptop))
    assert code == 1 and out.startswith("1 to transcribe, 2 done already\n")
    assert len(prompt_ids(laptop)) == 4
