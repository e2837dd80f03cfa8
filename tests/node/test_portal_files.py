"""Attachments through the file portal: files listed in request.yaml go out with the prompt, the
result's files come back into the outbox folder, and bad lists land in errors/."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from harness import laptop_and_gpu, wait_until
from speech import ESPEAK, NO_ESPEAK, speak
from syncq.node.portal import BadRequest, _place, attachments

from syncq.space import Space

FOX = "the quick brown fox jumps over the lazy dog"


def drop(home: Path, name: str, request: str, files: dict[str, bytes], tmp: Path) -> Path:
    """Write a request folder with ``files`` elsewhere, then rename it into the inbox."""
    staging = tmp / "staging" / name
    staging.mkdir(parents=True)
    (staging / "request.yaml").write_text(request)
    for relative, data in files.items():
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        (staging / relative).write_bytes(data)
    inbox = home / "portal" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    os.rename(staging, inbox / name)
    return inbox / name


def delivered(home: Path) -> list[Path]:
    folder = home / "portal" / "outbox"
    return sorted(folder.iterdir()) if folder.exists() else []


def errors(home: Path) -> dict[str, str]:
    folder = home / "portal" / "errors"
    return {d.name: (d / "error.txt").read_text() for d in folder.iterdir()} if folder.exists() else {}


@pytest.mark.slow
def test_an_attachment_goes_out_with_the_prompt_and_its_copy_comes_back(tmp_path: Path, nodes) -> None:
    hub, _ = laptop_and_gpu(tmp_path, nodes)  # the laptop takes the request; echo runs on the gpu
    hub.wait_event("portal")
    laptop = tmp_path / "laptop"
    sound = os.urandom(300_000)
    drop(
        laptop,
        "talk",
        "model: echo\nprompt: copy it\nfiles: [talk.wav, notes/readme.txt]\n",
        {"talk.wav": sound, "notes/readme.txt": b"read me", "ignored.bin": b"not listed"},
        tmp_path,
    )
    (folder,) = wait_until(lambda: delivered(laptop), what="the request delivered")
    result = json.loads((folder / "result.json").read_text())
    assert result["status"] == "done" and result["node_name"] == "gpu" and result["text"] == "copy it"
    assert result["files"] == ["talk.wav", "readme.txt"]
    assert [a["name"] for a in result["attachments"]] == ["talk.wav", "readme.txt"]
    assert (folder / "talk.wav").read_bytes() == sound  # echo's copy is the request's own file
    assert (folder / "readme.txt").read_bytes() == b"read me"  # written beside result.json
    assert (folder / "notes" / "readme.txt").exists() and (folder / "ignored.bin").exists()
    assert not (folder / ".syncq-out").exists()
    with Space.open(laptop) as space:
        (entry,) = space.entries(limit=None)
    assert [f.name for f in entry.prompt.files] == ["talk.wav", "readme.txt"]  # only what was listed


@pytest.mark.slow
def test_bad_file_lists_land_in_errors_with_the_reason(tmp_path: Path, nodes) -> None:
    home = tmp_path / "a"
    Space.init(home, name="a").close()
    node = nodes(home)
    node.wait_event("portal")
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    bad = {
        "absolute": (f"files: [{outside}]", {}, "must be a relative path"),
        "dotdot": ("files: [../../secret.txt]", {}, "must be a relative path"),
        "missing": ("files: [gone.wav]", {}, "'gone.wav' is not a file in the request folder"),
        "folder": ("files: [sub]", {"sub/x": b"x"}, "'sub' is not a file"),
        "notalist": ("files: talk.wav", {"talk.wav": b"x"}, "files: must be a list"),
        "twins": ("files: [a/x.wav, b/x.wav]", {"a/x.wav": b"1", "b/x.wav": b"2"}, "two files are named"),
        "nothing": ("files: []", {}, "give either prompt:"),
    }
    for name, (files, content, _) in bad.items():
        drop(home, name, f"model: echo\n{files}\n", content, tmp_path)
    speech = {
        "nofile": ("model: whisper-tiny.en\n", {}, "files: must list exactly one audio file"),
        "twofiles": (
            "model: whisper-tiny.en\nfiles: [a.wav, b.wav]\n",
            {"a.wav": b"1", "b.wav": b"2"},
            "exactly one audio file",
        ),
        "llmparam": (
            "model: whisper-tiny.en\nfiles: [a.wav]\nparams: {max_tokens: 5}\n",
            {"a.wav": b"1"},
            "unknown parameter 'max_tokens' for asr prompts",
        ),
        "imageparam": (
            "model: echo\nprompt: hi\nparams: {steps: 4}\n",
            {},
            "unknown parameter 'steps' for llm",
        ),
    }
    for name, (request, content, _) in speech.items():
        drop(home, name, request + ("prompt: hi\n" if name == "nofile" else ""), content, tmp_path)
    link = tmp_path / "staging" / "link"
    link.mkdir(parents=True)
    (link / "request.yaml").write_text("model: echo\nfiles: [talk.wav]\n")
    os.symlink(outside, link / "talk.wav")
    os.rename(link, home / "portal" / "inbox" / "link")
    expected = {name: reason for name, (_, _, reason) in (bad | speech).items()} | {"link": "symbolic link"}
    found = wait_until(lambda: len(errors(home)) == len(expected) and errors(home), what="every rejection")
    for name, reason in expected.items():
        assert reason in found[name], (name, found[name])
    assert outside.read_text() == "not yours"
    with Space.open(home) as space:
        assert space.entries(limit=None) == []
    drop(home, "good", "model: echo\nfiles: [x.txt]\n", {"x.txt": b"fine"}, tmp_path)  # no prompt: files
    (folder,) = wait_until(lambda: delivered(home), what="the good request")
    assert json.loads((folder / "result.json").read_text())["files"] == ["x.txt"]
    assert node.alive


@pytest.mark.slow
@pytest.mark.model
def test_speech_dropped_in_the_portal_comes_back_as_text_and_subtitles(tmp_path: Path, nodes) -> None:
    if ESPEAK is None:
        pytest.skip(NO_ESPEAK)
    hub, _ = laptop_and_gpu(tmp_path, nodes)  # whisper runs on the gpu; its files cross back
    hub.wait_event("portal")
    laptop = tmp_path / "laptop"
    wav = speak(FOX, tmp_path / "talk.wav").read_bytes()
    drop(
        laptop,
        "meeting",
        "model: whisper-tiny.en\nfiles: [talk.wav]\nparams: {language: en}\n",
        {"talk.wav": wav},
        tmp_path,
    )
    (folder,) = wait_until(lambda: delivered(laptop), timeout=120, what="the transcript")
    result = json.loads((folder / "result.json").read_text())
    assert result["status"] == "done", result
    assert result["files"] == ["talk.json", "talk.srt"]
    words = set(re.findall(r"[a-z]+", (folder / "answer.txt").read_text().lower()))
    assert len(words & {"quick", "brown", "fox", "lazy", "dog"}) >= 4, words
    assert re.match(r"1\n00:00:00,\d{3} --> 00:00:0\d,\d{3}\n\S", (folder / "talk.srt").read_text())
    segments = json.loads((folder / "talk.json").read_text())["segments"]
    assert " ".join(s["text"] for s in segments) == result["text"]
    assert (folder / "talk.wav").read_bytes() == wav


def test_an_output_never_replaces_a_file_of_the_request(tmp_path: Path) -> None:
    folder = tmp_path / "request"
    (folder / ".syncq-out").mkdir(parents=True)
    (folder / "image.png").write_bytes(b"the request's own")
    (folder / "same.txt").write_bytes(b"same")

    def staged(name: str, data: bytes) -> Path:
        path = folder / ".syncq-out" / name
        path.write_bytes(data)
        return path

    assert _place(staged("image.png", b"drawn"), folder / "image.png") == "image-2.png"
    assert _place(staged("image.png", b"drawn"), folder / "image.png") == "image-2.png"  # again: same
    assert _place(staged("image.png", b"other"), folder / "image.png") == "image-3.png"
    assert _place(staged("same.txt", b"same"), folder / "same.txt") == "same.txt"
    assert _place(staged("answer.txt", b"mine"), folder / "answer.txt") == "answer-2.txt"
    assert (folder / "image.png").read_bytes() == b"the request's own"
    assert (folder / "image-2.png").read_bytes() == b"drawn" and (
        folder / "image-3.png"
    ).read_bytes() == b"other"
    assert not list((folder / ".syncq-out").iterdir())


def test_attachments_are_files_inside_the_request_folder(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c.wav").write_bytes(b"x")
    assert attachments(tmp_path, {"files": ["a/b/c.wav"]}) == [tmp_path / "a" / "b" / "c.wav"]
    assert attachments(tmp_path, {}) == []
    os.symlink(tmp_path / "a", tmp_path / "link")
    for files, reason in (
        (["/etc/passwd"], "relative path"),
        (["a/../a/b/c.wav"], "without .."),
        (["link/b/c.wav"], "symbolic link"),
        ([3], "must be a list of file names"),
        ([""], "must be a list of file names"),
        (["x.wav"] * 17, "at most 16 files"),
    ):
        with pytest.raises(BadRequest, match=reason):
            attachments(tmp_path, {"files": files})
