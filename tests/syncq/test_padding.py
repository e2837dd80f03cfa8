"""Padding of sealed payloads (PROTOCOL.md, "Envelope", "Padding"): a 2 KiB floor for content and
a 512-byte one for what the writer marks content-free, PADMÉ above, a cap that keeps every
envelope within a frame; bad padding quarantined; version 1 (unpadded) envelopes still read."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from syncq import crypto, frames
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.errors import BadSignature, BadTag, BadUpdate
from syncq.ids import DeviceId, PromptId
from syncq.log import Log
from syncq.padding import LENGTH_SIZE, PAD_LIMIT, Floor, pad, padded_size, padme, unpad
from syncq.protocol import MAX_FRAME_SIZE, Frame
from syncq.records import Claim, ModelAd, NodeInfo, Result, Retry, RunStatus
from syncq.space import NewPrompt, Space

DEVICE = DeviceKeys.from_seed(bytes(range(64)))
SPACE = SpaceKeys.create(bytes(32))
LENGTHS = st.integers(min_value=0, max_value=(1 << 32) - 1)
FLOORS = st.sampled_from(Floor)
FLOOR = Floor.CONTENT


def seal_raw(*, device: DeviceKeys, space: SpaceKeys, seq: int, plaintext: bytes, version: int = 2) -> bytes:
    """An envelope sealed and signed by hand: ``plaintext`` goes into the AEAD exactly as given
    (what a broken member, or a node from before padding, writes)."""
    header = crypto._HEADER.pack(
        crypto.MAGIC, version, crypto.Kind.UPDATE, bytes.fromhex(space.space_id), space.epoch,
        device.public_key, seq,
    )  # fmt: skip
    nonce = os.urandom(crypto.NONCE_SIZE)
    body = header + nonce + ChaCha20Poly1305(space.enc_key(space.epoch)).encrypt(nonce, plaintext, header)
    return body + device.sign(body)


@given(st.binary(max_size=20_000), FLOORS)
def test_pad_and_unpad_round_trip(payload: bytes, floor: Floor) -> None:
    padded = pad(payload, floor)
    assert len(padded) == padded_size(len(payload), floor)
    assert unpad(padded) == payload


@given(LENGTHS, FLOORS)
def test_the_padded_size_depends_only_on_the_bucket(length: int, floor: Floor) -> None:
    size = padded_size(length, floor)
    assert size >= length + LENGTH_SIZE
    # A bucket is a fixed point: every length up to the bucket's own payload pads to it.
    if size <= PAD_LIMIT:
        assert padded_size(size - LENGTH_SIZE, floor) == size
    assert padded_size(max(0, length - 1), floor) <= size  # monotonic: no smaller length pads larger
    # The content floor never pads smaller than the small one: a mixed batch takes the larger.
    assert padded_size(length, Floor.SMALL) <= padded_size(length, Floor.CONTENT)


@given(LENGTHS, FLOORS)
def test_the_overhead_stays_within_what_protocol_md_says(length: int, floor: Floor) -> None:
    inner, size = length + LENGTH_SIZE, padded_size(length, floor)
    if inner <= floor:
        assert size == floor
    elif inner > PAD_LIMIT:
        assert size == inner  # only the length field: padding must not leave a frame
    else:
        assert size <= PAD_LIMIT
        assert size - inner <= inner * (0.0625 if inner < 1 << 16 else 0.03125)


def test_padme_leaves_only_the_top_bits() -> None:
    assert [padme(n) for n in (0, 1, 2, 3, 9, 259, 1149, 2049, 100_000)] == [
        0, 1, 2, 3, 10, 272, 1152, 2176, 100_352
    ]  # fmt: skip
    with pytest.raises(ValueError):
        padme(-1)
    with pytest.raises(ValueError):
        padded_size(1 << 32)
    with pytest.raises(ValueError):
        padded_size(10, 256)  # type: ignore[arg-type]  # only the two floors
    assert padded_size(0) == padded_size(2044) == Floor.CONTENT == 2048  # the default: content
    assert padded_size(0, Floor.SMALL) == padded_size(508, Floor.SMALL) == 512
    assert padded_size(509, Floor.SMALL) == 544  # above the small floor: PADMÉ's step of 32


def test_a_10_byte_and_a_900_byte_prompt_seal_to_one_size(space: Space) -> None:
    space.add("x" * 10, model="echo")
    space.add("x" * 900, model="echo")
    space.add("x" * 3000, model="echo")
    short, long, longer = (len(e) for e in list(space.envelopes())[-3:])
    assert short == long == crypto.OVERHEAD + FLOOR
    assert longer > long


def last_size(space: Space) -> int:
    *_, data = space.envelopes()
    return len(data)


def result(prompt_id: str, node: str, output: str = "") -> Result:
    return Result(
        prompt_id=PromptId(prompt_id), node=DeviceId(node), node_name="laptop", attempt=1,
        status=RunStatus.DONE, output=output, started_at=1, finished_at=2,
    )  # fmt: skip


def test_content_free_writes_pad_to_the_small_floor(space: Space) -> None:
    me, small = space.device_id, crypto.OVERHEAD + Floor.SMALL
    ids = [space.add(f"prompt {i}", model="echo").id for i in range(3)]
    assert last_size(space) == crypto.OVERHEAD + Floor.CONTENT
    models = tuple(ModelAd(name=f"model-{i}", backend="llamacpp", loaded=True, size=9**9) for i in range(3))
    presence = NodeInfo(
        id=me,
        name="laptop",
        version="0.17.0",
        last_seen=1,
        listen="http://192.168.178.20:7331",
        models=models,
    )
    writes: dict[str, Callable[[], object]] = {
        "claim": lambda: space.put_claim(Claim(prompt_id=ids[0], node=me, attempt=1, heartbeat=1)),
        "presence": lambda: space.put_node(presence),
        "heartbeats": lambda: space.write(
            lambda log: [log.put_claim(Claim(prompt_id=p, node=me, attempt=1, heartbeat=2)) for p in ids[:2]]
        ),
        "first output": lambda: space.write(
            lambda log: (
                log.put_claim(Claim(prompt_id=ids[1], node=me, attempt=1, heartbeat=3, running=True)),
                log.append_stream(ids[1], "The sky"),
            )
        ),
        "short chunk": lambda: space.append_stream(ids[1], " is"),
        "long chunk": lambda: space.append_stream(ids[1], " blue because air scatters short waves more" * 10),
        "drop stream": lambda: space.drop_stream(ids[1]),
        "cancel": lambda: space.cancel(ids[2]),
        "retry": lambda: space.write(
            lambda log: log.put_retry(Retry(prompt_id=ids[0], by=me, at=1, max_attempts=6))
        ),
        "device": lambda: space.put_device(space._own_record()),
    }
    for what, write in writes.items():
        write()
        assert last_size(space) == small, what


def test_a_write_with_a_prompt_or_a_result_pads_to_the_content_floor(space: Space) -> None:
    me, content = space.device_id, crypto.OVERHEAD + Floor.CONTENT
    ids = [space.add(f"prompt {i}", model="echo").id for i in range(3)]
    at_once = space.prepare(NewPrompt(text="hi", model="echo"))
    writes: dict[str, Callable[[], object]] = {
        # A group commit of results with the claim of a run at once, as the scheduler writes it.
        "claims and a result": lambda: space.write(
            lambda log: (
                log.put_claim(Claim(prompt_id=ids[0], node=me, attempt=1, heartbeat=9)),
                log.finish(result(ids[0], me)),
                log.append_stream(ids[1], "x"),
            )
        ),
        "claims and a prompt": lambda: space.write(
            lambda log: (
                log.put_prompt(at_once),
                log.put_claim(Claim(prompt_id=at_once.id, node=me, attempt=1, heartbeat=1)),
            )
        ),
        "finish": lambda: space.finish(result(ids[1], me, "ok")),
        "put_result": lambda: space.put_result(result(ids[2], me)),
    }
    for what, write in writes.items():
        write()
        assert last_size(space) == content, what
    # Either order: the floor is the largest of the batch's parts, not its last.
    again = Claim(prompt_id=at_once.id, node=me, attempt=1, heartbeat=2)
    space.write(lambda log: (log.finish(result(at_once.id, me)), log.put_claim(again)))
    assert last_size(space) == content


def test_the_log_marks_only_content_free_mutations_small(space: Space) -> None:
    log, me = Log(client_id=1), space.device_id
    prompt = space.prepare(NewPrompt(text="hi", model="echo"))
    log.put_claim(Claim(prompt_id=prompt.id, node=me, attempt=1, heartbeat=1))
    assert log.floor is Floor.SMALL
    log.put_prompt(prompt)
    assert log.floor is Floor.CONTENT
    log.batch(lambda log: log.put_claim(Claim(prompt_id=prompt.id, node=me, attempt=1, heartbeat=2)))
    assert log.floor is Floor.SMALL  # a new mutation starts afresh
    log.put_result(result(prompt.id, me))
    assert log.floor is Floor.CONTENT


def test_a_small_floor_envelope_opens_as_any_other() -> None:
    for floor in Floor:
        data = crypto.seal(device=DEVICE, space=SPACE, seq=1, payload=b"claim", nonce=bytes(12), floor=floor)
        assert len(data) == crypto.OVERHEAD + floor
        assert crypto.open_envelope(data, SPACE)[1] == b"claim"
    # The default is the content floor: a write path that says nothing never shows a size.
    assert len(crypto.seal(device=DEVICE, space=SPACE, seq=1, payload=b"", nonce=bytes(12))) == (
        crypto.OVERHEAD + Floor.CONTENT
    )


def test_a_padded_envelope_near_the_limit_still_fits_one_frame() -> None:
    for length in (PAD_LIMIT - LENGTH_SIZE - 100_000, PAD_LIMIT - LENGTH_SIZE, PAD_LIMIT - LENGTH_SIZE + 1):
        data = crypto.seal(device=DEVICE, space=SPACE, seq=1, payload=bytes(length), nonce=bytes(12))
        frame = frames.pack([Frame.ENVELOPES, (1 << 63) - 1, [data]])
        assert len(frame) + crypto.TAG_SIZE <= MAX_FRAME_SIZE, length
        assert crypto.open_envelope(data, SPACE)[1] == bytes(length)


@given(st.binary(max_size=3000))
def test_unpadding_arbitrary_bytes_returns_a_payload_or_raises_bad_update(data: bytes) -> None:
    try:
        payload = unpad(data)
    except BadUpdate:
        return
    assert data == struct.pack(">I", len(payload)) + payload + bytes(len(data) - LENGTH_SIZE - len(payload))


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",  # no length field
        b"\x00\x00",
        struct.pack(">I", 2045) + bytes(2044),  # a length past the end
        struct.pack(">I", 0xFFFFFFFF) + bytes(2044),
        struct.pack(">I", 3) + b"abc" + bytes(2040) + b"\x01",  # a nonzero padding byte
    ],
)
def test_a_sealed_envelope_with_bad_padding_is_rejected(plaintext: bytes) -> None:
    with pytest.raises(BadUpdate, match="envelope 1 of"):
        crypto.open_envelope(seal_raw(device=DEVICE, space=SPACE, seq=1, plaintext=plaintext), SPACE)


def test_a_member_quarantines_bad_padding_and_applies_what_follows(
    space: Space, member: Callable[[str], Space]
) -> None:
    gpu = member("gpu")
    forged = struct.pack(">I", 9999) + bytes(FLOOR - 4)  # signed and sealed by a member, but broken
    space.store.append_own(
        space.device.public_key,
        [lambda seq: seal_raw(device=space.device, space=space.keys, seq=seq, plaintext=forged)],
    )
    space.add("after the bad padding", model="echo")
    report = gpu.receive(space.envelopes())
    assert report.rejected == {} and report.quarantined == {"bad-update": 1}
    assert [e.prompt.input for e in gpu.entries()] == ["after the bad padding"]
    (detail,) = [row[4] for row in gpu.store.rejection_details() if row[0] == "bad-update"]
    assert "padding names a 9999-byte payload" in detail


def test_an_unpadded_version_1_envelope_is_still_read(space: Space, member: Callable[[str], Space]) -> None:
    gpu = member("gpu")
    space.add("written before padding", model="echo")
    *earlier, padded = space.envelopes()
    envelope, update = crypto.open_envelope(padded, space.keys)
    unpadded = seal_raw(device=space.device, space=space.keys, seq=envelope.seq, plaintext=update, version=1)
    assert len(unpadded) == crypto.OVERHEAD + len(update) < len(padded)
    assert crypto.open_envelope(unpadded, gpu.keys)[1] == update  # version 1: nothing stripped
    report = gpu.receive([*earlier, unpadded])
    assert report.rejected == report.quarantined == {}
    assert [e.prompt.input for e in gpu.entries()] == ["written before padding"]


def test_the_version_cannot_be_changed_by_anyone_nor_rewrapped_by_the_author() -> None:
    data = bytearray(crypto.seal(device=DEVICE, space=SPACE, seq=1, payload=b"x", nonce=bytes(12)))
    data[2] = crypto.UNPADDED_VERSION  # the signature covers the version byte
    with pytest.raises(BadSignature):
        crypto.open_envelope(bytes(data), SPACE)
    body = bytes(data[: -crypto.SIGNATURE_SIZE])
    with pytest.raises(BadTag):  # re-signed by the author: the AEAD's associated data covers it too
        crypto.open_envelope(body + DEVICE.sign(body), SPACE)


def test_clear_envelopes_are_not_padded() -> None:
    data = crypto.sign_clear(
        device=DEVICE, space_id=SPACE.space_id, epoch=0, seq=1, kind=crypto.Kind.ROSTER, payload=b"\x90"
    )
    assert len(data) == crypto.OVERHEAD - crypto.TAG_SIZE + 1
    assert data[2] == crypto.ENVELOPE_VERSION
