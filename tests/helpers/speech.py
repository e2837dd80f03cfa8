"""Test speech: WAV files spoken by the ``espeak-ng`` command (22.05 kHz, mono, 16-bit)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

ESPEAK = shutil.which("espeak-ng")
NO_ESPEAK = "needs the espeak-ng command (make system-deps installs it)"

# Plain sentences with words a small English model gets right; about 30 s spoken end to end.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A small boat sailed across the quiet lake at dawn.",
    "Please send the report to the office before noon on Friday.",
    "The weather today is cold and windy, with rain in the evening.",
    "She opened the window and listened to the birds in the garden.",
    "Our train leaves the station at seven thirty every morning.",
    "He bought fresh bread, cheese and apples at the market.",
    "The children played football in the park until it got dark.",
)


def speak(text: str, path: Path) -> Path:
    """Write ``text`` spoken as a WAV file at ``path``. Raises ``RuntimeError`` without espeak-ng."""
    if ESPEAK is None:
        raise RuntimeError(NO_ESPEAK)
    subprocess.run([ESPEAK, "-w", str(path), text], check=True, capture_output=True, timeout=60)
    return path


def seconds(path: Path) -> float:
    """The length of a WAV file in seconds."""
    with wave.open(str(path)) as f:
        return f.getnframes() / f.getframerate()


def long_speech(path: Path, at_least: float = 30.0) -> Path:
    """Write at least ``at_least`` seconds of speech at ``path``: ``SENTENCES`` spoken one by one
    and joined, from the start again if they run out (the length overshoots by under a sentence)."""
    with tempfile.TemporaryDirectory() as tmp:
        parts = [speak(s, Path(tmp) / f"{i}.wav") for i, s in enumerate(SENTENCES)]
        with wave.open(str(parts[0])) as first:
            params = first.getparams()
        total, i = 0.0, 0
        with wave.open(str(path), "wb") as out:
            out.setparams(params)
            while total < at_least:
                with wave.open(str(parts[i % len(parts)])) as part:
                    out.writeframes(part.readframes(part.getnframes()))
                total += seconds(parts[i % len(parts)])
                i += 1
    return path


def silence(path: Path, duration: float, rate: int = 16000) -> Path:
    """Write ``duration`` seconds of digital silence as a 16-bit mono WAV (0 gives a header only)."""
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(b"\0\0" * round(duration * rate))
    return path
