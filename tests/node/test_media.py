"""Speech and images across two homes, through the CLI: what issue 5's "done when" asks for.

The laptop runs a node without executors; the gpu serves the bundled whisper-tiny.en and a tiny
diffusers pipeline from its models folder. Inputs travel from the laptop when the gpu runs the
job; outputs stay on the gpu until the laptop asks for them (`syncq get`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import speech
from harness import laptop_and_gpu, wait_until

from syncq.space import Space

pytestmark = [pytest.mark.model, pytest.mark.slow]
pytest.importorskip("faster_whisper", reason="the asr extra is not installed")
pytest.importorskip("diffusers", reason="the image extra is not installed")
Image = pytest.importorskip("PIL.Image")

SYNCQ = [sys.executable, "-m", "syncq.cli"]


def syncq(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    return subprocess.run(
        [*SYNCQ, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def mesh(tmp_path: Path, nodes) -> tuple[Path, Path]:
    import tiny_pipeline

    laptop_and_gpu(tmp_path, nodes, models=lambda folder: tiny_pipeline.build(folder / "tiny-sd"))
    laptop, gpu = tmp_path / "laptop", tmp_path / "gpu"

    def laptop_knows_the_models() -> bool:  # as its node notes them for `syncq add` (every 5 s)
        with Space.open(laptop) as space:
            served = space.mesh_models() or {}
        return served.get("whisper-tiny.en") == "whisper" and served.get("tiny-sd") == "diffusers"

    wait_until(laptop_knows_the_models, timeout=60, what="the laptop to learn the gpu's models")
    return laptop, gpu


@pytest.mark.skipif(speech.ESPEAK is None, reason=speech.NO_ESPEAK)
def test_speech_added_on_the_laptop_is_transcribed_on_the_gpu(tmp_path: Path, mesh) -> None:
    laptop, _ = mesh
    wav = speech.speak("the quick brown fox jumps over the lazy dog", tmp_path / "speech.wav")
    done = syncq(laptop, "add", "--file", str(wav), "-m", "whisper-tiny.en", "--wait")
    assert done.returncode == 0, done.stderr
    words = set(done.stdout.lower().replace(".", " ").split())
    assert len(words & {"quick", "brown", "fox", "lazy", "dog"}) >= 4, done.stdout
    assert "file speech.srt" in done.stderr and "syncq get" in done.stderr

    prompt_id = json.loads(syncq(laptop, "log", "--json").stdout.splitlines()[-1])["id"]
    got = syncq(laptop, "get", prompt_id, "-o", str(tmp_path / "out"))
    assert got.returncode == 0, got.stderr
    srt = (tmp_path / "out" / "speech.srt").read_text()
    assert srt.startswith("1\n00:00:0") and "-->" in srt
    segments = json.loads((tmp_path / "out" / "speech.json").read_text())["segments"]
    assert segments and segments[0]["end"] > segments[0]["start"]


def test_not_audio_fails_with_a_reason(tmp_path: Path, mesh) -> None:
    laptop, _ = mesh
    fake = tmp_path / "notes.wav"
    fake.write_text("these are notes, not sound\n" * 50)
    done = syncq(
        laptop, "add", "", "--file", str(fake), "-m", "whisper-tiny.en", "--max-attempts", "1", "--wait"
    )
    assert done.returncode == 1
    assert "notes.wav is not audio that can be decoded" in done.stderr


def test_an_image_prompt_returns_a_png_saved_with_get(tmp_path: Path, mesh) -> None:
    laptop, _ = mesh
    params = ["--param", "width=64", "--param", "height=48", "--param", "steps=4", "--param", "seed=7"]
    done = syncq(laptop, "add", "a red bicycle", "-m", "tiny-sd", *params, "--wait", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["kind"] == "image"  # from the backend the gpu advertises
    assert result["result"]["output"] == "64x48 image, 4 steps, seed 7"
    got = syncq(laptop, "get", result["id"], "-o", str(tmp_path / "out"), "--json")
    assert got.returncode == 0, got.stderr
    path = Path(json.loads(got.stdout)["path"])
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (64, 48)
        assert image.text["seed"] == "7"
    bad = syncq(laptop, "add", "a cat", "-m", "tiny-sd", "--param", "width=60")
    assert bad.returncode == 1 and "parameter width=60 is invalid" in bad.stderr
