"""Audio, images and attachments through the HTTP API, driven by the official ``openai`` client
against a node in one home (the API, no executors) while a node in another home runs the models:
every upload and every output file crosses between the two."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from harness import NodeProcess, api_headers, api_key, member, wait_until
from speech import ESPEAK, NO_ESPEAK, speak

from syncq.space import Space
from syncq.store import Peer

pytestmark = pytest.mark.slow

FOX = "the quick brown fox jumps over the lazy dog"
SRT_CUE = re.compile(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\S.*\n")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight Stable Diffusion pipeline, built once (a few seconds of torch)."""
    import tiny_pipeline

    return tiny_pipeline.build(tmp_path_factory.mktemp("pipelines") / "tiny-sd")


@pytest.fixture(scope="module")
def fox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if ESPEAK is None:
        pytest.skip(NO_ESPEAK)
    return speak(FOX, tmp_path_factory.mktemp("voice") / "fox.wav")


def mesh(tmp_path: Path, nodes: Callable[..., NodeProcess], pipeline: Path | None = None) -> str:
    """A laptop serving the API with no executors, and a gpu node serving echo, whisper-tiny.en
    and tiny-sd (the real pipeline, or only its model_index.json for tests that never draw).
    Returns the API's URL once the laptop knows the gpu's models."""
    with Space.init(tmp_path / "laptop", name="laptop") as laptop:
        gpu = member(tmp_path, laptop, "gpu")
    if pipeline is not None:
        shutil.copytree(pipeline, gpu / "models" / "tiny-sd")
    else:
        (gpu / "models" / "tiny-sd").mkdir(parents=True)
        (gpu / "models" / "tiny-sd" / "model_index.json").write_text("{}")
    hub = nodes(tmp_path / "laptop", "--no-executors", "--api", "127.0.0.1:0")
    with Space.open(gpu) as space:
        space.store.save_peer(Peer(url=hub.url, source="config"))
    nodes(gpu)

    def served() -> bool:
        with Space.open(tmp_path / "laptop") as space:
            served = {m.name for n in space.log.nodes() for m in n.models}
            return {"echo", "tiny-sd", "whisper-tiny.en"} <= served

    wait_until(served, what="the gpu's models to reach the laptop")
    url = str(hub.wait_event("api-listening")["url"])
    HOMES[url] = tmp_path / "laptop"
    return url


HOMES: dict[str, Path] = {}  # the API's URL -> the home whose key it asks


def client(api: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api}/v1", api_key=api_key(HOMES[api]), max_retries=0, timeout=120)


def call(api: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    host, port = api.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(method, path, body=body, headers=api_headers(HOMES[api], **(headers or {})))
    response = conn.getresponse()
    found = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return found


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


@pytest.mark.model
def test_speech_is_transcribed_in_each_response_format(tmp_path: Path, nodes, fox: Path) -> None:
    api = client(mesh(tmp_path, nodes))
    with open(fox, "rb") as f:
        plain = api.audio.transcriptions.create(model="whisper-tiny.en", file=f)
    words = set(re.findall(r"[a-z]+", plain.text.lower()))
    assert len(words & {"quick", "brown", "fox", "lazy", "dog"}) >= 4, plain.text

    with open(fox, "rb") as f:
        srt = api.audio.transcriptions.create(
            model="whisper-tiny.en", file=f, response_format="srt", language="en"
        )
    assert SRT_CUE.match(srt) and "fox" in srt.lower()
    with open(fox, "rb") as f:
        text = api.audio.transcriptions.create(model="whisper-tiny.en", file=f, response_format="text")
    assert text.strip() == plain.text
    with open(fox, "rb") as f:
        verbose = api.audio.transcriptions.create(
            model="whisper-tiny.en", file=f, response_format="verbose_json"
        )
    assert verbose.text == plain.text and verbose.language == "en"
    assert 1.0 < verbose.duration < 10.0
    assert verbose.segments and all(0 <= s.start < s.end for s in verbose.segments)
    assert " ".join(s.text for s in verbose.segments) == plain.text

    # A file that is not audio: the job fails on the gpu, and its message comes back, unretried.
    (tmp_path / "notes.wav").write_text("hello, this is text and not sound\n")
    with open(tmp_path / "notes.wav", "rb") as f, pytest.raises(openai.InternalServerError) as failed:
        api.audio.transcriptions.create(model="whisper-tiny.en", file=f)
    assert failed.value.status_code == 502
    assert "notes.wav is not audio that can be decoded" in failed.value.message
    assert failed.value.response.headers["x-should-retry"] == "false"


@pytest.mark.model
def test_an_image_is_drawn_at_the_asked_size_and_a_seed_repeats_it(
    tmp_path: Path, nodes, pipeline: Path
) -> None:
    url = mesh(tmp_path, nodes, pipeline)
    api = client(url)
    drawn = [
        api.images.generate(model="tiny-sd", prompt="a cat", size=size, extra_body={"steps": 4, "seed": seed})
        for size, seed in (("64x64", 1), ("64x64", 1), ("64x64", 2), ("96x64", 1))
    ]
    images = [base64.b64decode(d.data[0].b64_json) for d in drawn]
    assert [png_size(i) for i in images] == [(64, 64), (64, 64), (64, 64), (96, 64)]
    assert images[0] == images[1] != images[2]
    assert drawn[0].created > 0 and len(drawn[0].data) == 1
    prompt_id = drawn[0].model_extra["syncq"]["id"]
    assert drawn[0].model_extra["syncq"]["node"] == "gpu"
    status, headers, data = call(url, "GET", f"/api/prompts/{prompt_id}/files/image.png")
    assert (status, headers["content-type"], data) == (200, "image/png", images[0])

    # echo's test knobs are for echo alone.
    with pytest.raises(openai.BadRequestError, match="fail is a test knob of the echo executor"):
        api.images.generate(model="tiny-sd", prompt="a cat", extra_body={"fail": "out of ink"})


def test_bad_audio_and_image_requests_get_openai_errors(tmp_path: Path, nodes) -> None:
    url = mesh(tmp_path, nodes)
    api = client(url)
    sound = tmp_path / "a.wav"
    sound.write_bytes(b"RIFF")

    def transcribe(**kwargs) -> None:
        with open(sound, "rb") as f:
            api.audio.transcriptions.create(**{"model": "whisper-tiny.en", "file": f, **kwargs})

    with pytest.raises(openai.BadRequestError, match="response_format must be one of"):
        transcribe(response_format="vtt")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        transcribe(model="whisper-huge")
    with pytest.raises(openai.BadRequestError, match=r"'echo' \(echo\) takes llm prompts, not asr"):
        transcribe(model="echo")
    with pytest.raises(openai.BadRequestError, match="parameter language='e' is invalid"):
        transcribe(language="e")
    with pytest.raises(openai.BadRequestError, match="takes image prompts, not llm"):
        api.chat.completions.create(model="tiny-sd", messages=[{"role": "user", "content": "hi"}])

    def draw(**kwargs) -> None:
        api.images.generate(**{"model": "tiny-sd", "prompt": "a cat", **kwargs})

    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        draw(n=2)
    with pytest.raises(openai.BadRequestError, match="no image URLs; use b64_json"):
        draw(response_format="url")
    for size in ("big", "64", "65x64", "0x64", "99999x64"):
        with pytest.raises(openai.BadRequestError, match="size") as bad:
            draw(size=size)
        assert bad.value.body["param"] == "size", size
    with pytest.raises(openai.BadRequestError, match="steps=0 is invalid"):
        draw(extra_body={"steps": 0})
    with pytest.raises(openai.BadRequestError, match="prompt is required"):
        draw(prompt=" ")
    with pytest.raises(openai.BadRequestError, match="takes llm prompts, not image"):
        draw(model="echo")

    # Below the client: no file, text where the file goes, a broken form, JSON, a huge upload.
    form = "multipart/form-data; boundary=XX"

    def post(body: bytes, content_type: str = form, **headers: str) -> tuple[int, dict]:
        status, _, raw = call(
            url, "POST", "/v1/audio/transcriptions", body, {"Content-Type": content_type, **headers}
        )
        return status, json.loads(raw)["error"]

    model_part = b'--XX\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-tiny.en\r\n'
    status, error = post(model_part + b"--XX--\r\n")
    assert (status, error["code"], error["param"]) == (400, "missing_file", "file")
    text_file = b'--XX\r\nContent-Disposition: form-data; name="file"\r\n\r\nnot a file\r\n--XX--\r\n'
    assert post(model_part + text_file)[1]["code"] == "missing_file"
    assert post(b"--XX\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XX--\r\n")[1]["code"] == "invalid_form"
    assert post(b"{}", "multipart/form-data")[1]["code"] == "invalid_form"  # no boundary
    assert post(b'{"model": "whisper-tiny.en"}', "application/json")[1]["code"] == "missing_model"
    status, error = post(b"", form, **{"Content-Length": str(26 << 20)})
    assert (status, error["code"]) == (413, "too_large")
    status, _, raw = call(url, "POST", "/v1/images/generations", b"[1]", {"Content-Type": "application/json"})
    assert status == 400 and json.loads(raw)["error"]["code"] == "invalid_json"


def test_a_chunked_upload_past_the_limit_is_cut_off(tmp_path: Path, nodes) -> None:
    url = mesh(tmp_path, nodes)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    head = b'--XX\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'

    def body():
        yield head
        for _ in range(27):
            yield b"\0" * (1 << 20)

    conn.request(
        "POST",
        "/v1/audio/transcriptions",
        body=body(),
        headers=api_headers(tmp_path / "laptop", **{"Content-Type": "multipart/form-data; boundary=XX"}),
        encode_chunked=True,
    )
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "too_large"
    conn.close()
    assert not any((tmp_path / "laptop" / "work").iterdir())  # the scratch folder is gone


def test_prompts_list_their_files_and_serve_them(tmp_path: Path, nodes) -> None:
    url = mesh(tmp_path, nodes)
    talk = tmp_path / "talk.bin"
    talk.write_bytes(bytes(range(256)) * 5000)
    notes = tmp_path / "notes.html"
    notes.write_text("<script>alert(1)</script>")
    with Space.open(tmp_path / "laptop") as space:
        prompt = space.add("echo these", model="echo", files=[talk, notes])

    def done() -> dict | None:
        found = json.loads(call(url, "GET", f"/api/prompts/{prompt.id}")[2])
        return found if found["status"] == "done" else None

    entry = wait_until(done, what="echo to run on the gpu")
    digest = hashlib.sha256(talk.read_bytes()).hexdigest()
    assert [(f["name"], f["size"]) for f in entry["files"]] == [("talk.bin", 1_280_000), ("notes.html", 25)]
    assert [f["name"] for f in entry["output_files"]] == ["talk.bin", "notes.html"]
    listed = json.loads(call(url, "GET", "/api/prompts")[2])["data"]
    assert listed[0]["output_files"] == entry["output_files"]

    # The output was made on the gpu: the laptop's node fetches it to answer.
    for link in (entry["output_files"][0]["url"], entry["files"][0]["url"]):
        status, headers, data = call(url, "GET", link)
        assert status == 200 and hashlib.sha256(data).hexdigest() == digest, link
    assert headers["content-type"] == "application/octet-stream"
    status, headers, data = call(url, "GET", f"/api/prompts/{prompt.id[:10]}/files/notes.html")
    assert status == 200 and data == notes.read_bytes()
    assert headers["content-type"].startswith("text/html") and headers["content-security-policy"] == "sandbox"

    status, _, raw = call(url, "GET", f"/api/prompts/{prompt.id}/files/other.txt")
    assert status == 404 and "no file 'other.txt' (files: notes.html, talk.bin)" in raw.decode()
    assert call(url, "GET", f"/api/prompts/{prompt.id}/files/talk.bin?source=elsewhere")[0] == 400
    assert call(url, "GET", "/api/prompts/0000/files/talk.bin")[0] == 404
    # A client that hangs up after the first bytes leaves no decrypted copy either.
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("GET", entry["output_files"][0]["url"], headers=api_headers(tmp_path / "laptop"))
    assert conn.getresponse().read(1024) == talk.read_bytes()[:1024]
    conn.close()
    # Decrypted copies are removed once each answer is sent, which ends just after its bytes arrive.
    wait_until(lambda: not any((tmp_path / "laptop" / "work").iterdir()), what="the copies to go")
