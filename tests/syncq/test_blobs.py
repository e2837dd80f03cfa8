"""Attachments: content ids, chunk sealing, the attachment store and the blob frames."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncq.blobs import CHUNK_SIZE, BlobRef, Sealer, chunk_count, chunk_length
from syncq.blobstore import BlobStore
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.errors import BadTag, BlobError, BlobUnavailable, InvalidInput, MalformedRecord
from syncq.protocol import (
    BlobKept,
    BlobOffered,
    BlobReceived,
    BlobWanted,
    CloseCode,
    Frame,
    Role,
    SessionFailed,
    SyncSession,
)
from syncq.space import Space

KEYS = SpaceKeys.create(bytes(range(32)))
OTHER = SpaceKeys.create(bytes(range(1, 33)))


def write(path: Path, size: int, seed: int = 0) -> Path:
    path.write_bytes(os.urandom(0) + bytes((i * 31 + seed) % 251 for i in range(size)))
    return path


@given(st.integers(min_value=0, max_value=5 * CHUNK_SIZE + 17))
def test_chunks_partition_any_size(size: int) -> None:
    lengths = [chunk_length(size, i) for i in range(chunk_count(size))]
    assert sum(lengths) == size
    assert all(n == CHUNK_SIZE for n in lengths[:-1]) and 0 <= lengths[-1] <= CHUNK_SIZE
    assert chunk_count(size) == 1 or lengths[-1] > 0


@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=9))
def test_a_sealed_chunk_opens_only_as_itself(chunk: bytes, index: int) -> None:
    sealer = Sealer(KEYS)
    blob_id = sealer.hasher().digest()
    size = index * CHUNK_SIZE + len(chunk)
    sealed, tag = sealer.seal(blob_id, size, index, chunk)
    assert sealer.open(blob_id, size, index, sealed) == chunk
    assert sealer.check_tag(blob_id, size, index, sealed, tag)
    assert sealer.seal(blob_id, size, index, chunk) == (sealed, tag)  # deterministic: stored once
    if index:
        with pytest.raises(BadTag):
            sealer.open(blob_id, size - CHUNK_SIZE, index - 1, sealed)  # moved to another place


def test_ids_are_keyed_by_the_space() -> None:
    mine, theirs = Sealer(KEYS).hasher(), Sealer(OTHER).hasher()
    mine.update(b"same content")
    theirs.update(b"same content")
    assert mine.digest() != theirs.digest()  # a relay cannot confirm a guess of the content


def test_a_relay_checks_tags_and_cannot_open() -> None:
    member, relay = Sealer(KEYS), Sealer(KEYS.for_relay())
    blob_id = member.hasher().digest()
    sealed, tag = member.seal(blob_id, 5, 0, b"hello")
    assert relay.check_tag(blob_id, 5, 0, sealed, tag)
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    assert not relay.check_tag(blob_id, 5, 0, flipped, tag)
    with pytest.raises(BadTag):
        member.open(blob_id, 5, 0, flipped)
    with pytest.raises(Exception):  # noqa: B017 - no key at all
        relay.open(blob_id, 5, 0, sealed)


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, 2 * CHUNK_SIZE + 5])
def test_a_file_goes_in_and_comes_out_whole(tmp_path: Path, size: int) -> None:
    store = BlobStore(tmp_path / "blobs.db")
    source = write(tmp_path / "in.bin", size)
    ref = store.add_file(source, Sealer(KEYS))
    assert ref.size == size and ref.chunks == chunk_count(size) and ref.name == "in.bin"
    assert store.complete(ref)
    out = tmp_path / "out"
    out.mkdir()
    saved = store.save(ref, Sealer(KEYS), out / ref.name)
    assert saved.read_bytes() == source.read_bytes()
    assert not list(out.glob(".*partial"))


def test_own_files_are_offered_to_each_relay_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs.db")
    (tmp_path / "a").write_bytes(b"first")
    (tmp_path / "b").write_bytes(b"second")
    first = store.add_file(tmp_path / "a", Sealer(KEYS))
    relay, other = b"r" * 32, b"o" * 32
    assert [r.id for r in store.unoffered(relay)] == [first.id]
    store.offered_to(relay, [r.raw_id for r in store.unoffered(relay)])
    second = store.add_file(tmp_path / "b", Sealer(KEYS))
    assert [r.id for r in store.unoffered(relay)] == [second.id]
    assert {r.id for r in store.unoffered(other)} == {first.id, second.id}
    store.close()
    assert [r.id for r in BlobStore(tmp_path / "blobs.db").unoffered(relay)] == [second.id]  # durable


def test_blobs_unused_for_long_are_forgotten_and_reading_counts_as_use(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs.db")
    (tmp_path / "old").write_bytes(b"old")
    (tmp_path / "read").write_bytes(b"old but read")
    (tmp_path / "new").write_bytes(b"new")
    old, read, new = (store.add_file(tmp_path / n, Sealer(KEYS)) for n in ("old", "read", "new"))
    month_ago = time.time() - 31 * 86400
    for ref in (old, read):
        os.utime(store.folder / ref.id, (month_ago, month_ago))
    (store.folder / "not-a-blob").write_text("left alone")
    assert store.chunk(read.raw_id, 0) is not None  # served to a peer: used now
    assert store.forget_unused(time.time() - 30 * 86400) == 1
    assert not store.complete(old) and not (store.folder / old.id).exists()
    assert store.complete(read) and store.complete(new) and (store.folder / "not-a-blob").exists()


def test_equal_files_are_stored_once_and_nothing_is_plaintext(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs.db")
    marker = b"PLAINTEXT-MARKER-" * 5000
    (tmp_path / "a").write_bytes(marker)
    (tmp_path / "b").write_bytes(marker)
    first = store.add_file(tmp_path / "a", Sealer(KEYS))
    second = store.add_file(tmp_path / "b", Sealer(KEYS))
    assert first.id == second.id and first.name != second.name
    store.close()
    stored = [*tmp_path.glob("blobs.db*"), *(tmp_path / "blobs").iterdir()]
    assert len(stored) >= 2
    for path in stored:
        assert b"PLAINTEXT-MARKER" not in path.read_bytes()


def test_bad_files_are_refused_with_reasons(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs.db")
    with pytest.raises(InvalidInput, match="No such file"):
        store.add_file(tmp_path / "missing.wav", Sealer(KEYS))
    with pytest.raises(InvalidInput, match="not a regular file"):
        store.add_file(tmp_path, Sealer(KEYS), name="folder")
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(3 * CHUNK_SIZE)  # sparse: costs no disk
    with pytest.raises(InvalidInput, match=r"3\.0 MiB; attachments are limited to 2\.0 MiB"):
        store.add_file(big, Sealer(KEYS), limit=2 * CHUNK_SIZE)
    with pytest.raises(InvalidInput, match="cannot be an attachment's name"):
        store.add_file(write(tmp_path / "x", 3), Sealer(KEYS), name="../escape")


def test_missing_and_corrupt_chunks_are_reported_and_dropped(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs.db")
    ref = store.add_file(write(tmp_path / "f", 2 * CHUNK_SIZE + 3), Sealer(KEYS))
    store.drop_chunk(ref.raw_id, 1)
    assert store.missing(ref.raw_id, ref.size) == [1]
    with pytest.raises(BlobUnavailable, match="1 of 3 chunks"):
        store.save(ref, Sealer(KEYS), tmp_path / "out")
    chunk = store.chunk(ref.raw_id, 0)
    assert chunk is not None
    store.drop_chunk(ref.raw_id, 0)
    damaged = bytes([chunk.sealed[0] ^ 1]) + chunk.sealed[1:]
    store.put_chunk(type(chunk)(chunk.blob_id, 0, chunk.size, chunk.epoch, damaged, chunk.tag))
    store.add_file(tmp_path / "f", Sealer(KEYS))  # re-adding fills the hole, keeps the bad one
    with pytest.raises(BlobError, match="fails authentication; it will be fetched again"):
        store.save(ref, Sealer(KEYS), tmp_path / "out")
    assert store.missing(ref.raw_id, ref.size) == [0]  # dropped, so a fetch gets it again
    assert not (tmp_path / "out").exists()


def test_references_are_checked_on_read() -> None:
    good = BlobRef(id="ab" * 32, name="talk.wav", size=10, epoch=0)
    assert BlobRef.from_wire(good.to_wire()) == good
    for bad in (
        {**good.to_wire(), "name": "../../etc/passwd"},
        {**good.to_wire(), "name": ""},
        {**good.to_wire(), "id": "zz" * 32},
        {**good.to_wire(), "size": -1},
        {**good.to_wire(), "size": True},
        "not a dict",
    ):
        with pytest.raises(MalformedRecord):
            BlobRef.from_wire(bad)


def test_a_prompt_carries_its_files_through_the_log(tmp_path: Path) -> None:
    with Space.init(tmp_path / "home", name="laptop") as space:
        audio = write(tmp_path / "talk.wav", 3000)
        prompt = space.add("", model="whisper-tiny.en", kind="asr", files=[audio])
        assert [f.name for f in prompt.files] == ["talk.wav"]
        assert space.show(prompt.id).prompt.files == prompt.files
        saved = space.save_file(prompt.files[0], tmp_path)
        assert saved == tmp_path / "talk.wav"
        with pytest.raises(InvalidInput, match="exactly one audio file"):
            space.add("", model="whisper-tiny.en", kind="asr")
        with pytest.raises(InvalidInput, match="the prompt is empty"):
            space.add("", model="echo")
        with pytest.raises(InvalidInput, match="parameter width=60 is invalid"):
            space.add("a cat", model="tiny-sd", kind="image", params={"width": 60})


# -- the blob frames ----------------------------------------------------------------------------


def syncing_pair(*, b_relay: bool = False) -> tuple[SyncSession, SyncSession]:
    a = SyncSession(
        role=Role.INITIATOR,
        auth_keys=[(0, KEYS.auth_key(0))],
        node=DeviceKeys.from_seed(b"a" * 64),
        name="a",
        challenge=b"1" * 32,
    )
    b = SyncSession(
        role=Role.RESPONDER,
        auth_keys=[(0, KEYS.auth_key(0))],
        node=DeviceKeys.from_seed(b"b" * 64),
        name="b",
        challenge=b"2" * 32,
        relay=b_relay,
    )
    for _ in range(3):
        for frame in a.data_to_send():
            b.receive(frame)
        for frame in b.data_to_send():
            a.receive(frame)
    a.send_have({})
    b.send_have({})
    for frame in a.data_to_send():
        b.receive(frame)
    for frame in b.data_to_send():
        a.receive(frame)
    return a, b


def test_blob_frames_travel_between_sessions() -> None:
    a, b = syncing_pair()
    blob_id = bytes(32)
    a.want_blob(blob_id, 3 * CHUNK_SIZE, 0, [0, 2], hops=1)
    (event,) = b.receive(a.data_to_send()[0])
    assert event == BlobWanted(blob_id=blob_id, size=3 * CHUNK_SIZE, epoch=0, indices=[0, 2], hops=1)
    b.send_chunk(blob_id, 10, 0, 0, b"x" * 26, b"t" * 32)
    (event,) = a.receive(b.data_to_send()[0])
    assert isinstance(event, BlobReceived) and event.sealed == b"x" * 26


def test_a_member_asks_a_relay_to_keep_a_blob_and_it_answers() -> None:
    a, relay = syncing_pair(b_relay=True)
    assert a.peer_relay and not relay.peer_relay  # from the AUTHs
    a.keep_blob(bytes(32), 5 * CHUNK_SIZE, 1)
    (event,) = relay.receive(a.data_to_send()[0])
    assert event == BlobOffered(blob_id=bytes(32), size=5 * CHUNK_SIZE, epoch=1)
    relay.kept_blob(bytes(32))
    (event,) = a.receive(relay.data_to_send()[0])
    assert event == BlobKept(blob_id=bytes(32))
    (event,) = a.receive(relay.encode([Frame.KEPT_BLOB, bytes(31)]))
    assert isinstance(event, SessionFailed) and event.code == CloseCode.MALFORMED


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([bytes(31), 10, 0], CloseCode.MALFORMED),  # short id
        ([bytes(32), 1 << 41, 0], CloseCode.TOO_LARGE),  # absurd size
        ([bytes(32), -1, 0], CloseCode.TOO_LARGE),
        ([bytes(32), 10, True], CloseCode.TOO_LARGE),  # an epoch is a number
        ([bytes(32), 10], CloseCode.MALFORMED),  # a field short
    ],
)
def test_bad_keep_frames_close_the_session(body: list[object], code: CloseCode) -> None:
    member, relay = syncing_pair(b_relay=True)
    (event,) = relay.receive(member.encode([Frame.KEEP_BLOB, *body]))
    assert isinstance(event, SessionFailed) and event.code == code


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([bytes(32), 10, 0, 0, b"x" * 25, b"t" * 32], CloseCode.TOO_LARGE),  # length does not fit
        ([bytes(32), 10, 0, 1, b"x" * 26, b"t" * 32], CloseCode.MALFORMED),  # index past the end
        ([bytes(31), 10, 0, 0, b"x" * 26, b"t" * 32], CloseCode.MALFORMED),  # short id
        ([bytes(32), 1 << 41, 0, 0, b"x", b"t" * 32], CloseCode.TOO_LARGE),  # absurd size
        ([bytes(32), 10, 0, 0, b"x" * 26, b"t" * 31], CloseCode.MALFORMED),  # short tag
    ],
)
def test_bad_blob_frames_close_the_session(body: list[object], code: CloseCode) -> None:
    a, b = syncing_pair()
    (event,) = a.receive(b.encode([Frame.BLOB, *body]))
    assert isinstance(event, SessionFailed) and event.code == code


def test_a_want_for_too_many_chunks_or_too_many_hops_is_refused() -> None:
    a, b = syncing_pair()
    frame = b.encode([Frame.WANT_BLOB, bytes(32), 100 * CHUNK_SIZE, 0, list(range(17)), 1])
    (event,) = a.receive(frame)
    assert isinstance(event, SessionFailed) and event.code == CloseCode.MALFORMED
    a, b = syncing_pair()
    (event,) = a.receive(b.encode([Frame.WANT_BLOB, bytes(32), 10, 0, [0], 9]))
    assert isinstance(event, SessionFailed) and "hop" in event.reason


def test_a_record_whose_file_is_gone_is_dropped_and_fetched_again(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs.db")
    ref = store.add_file(write(tmp_path / "f", 10), Sealer(KEYS))
    (tmp_path / "blobs" / ref.id).unlink()  # what a power cut can leave: the record, no bytes
    assert store.chunk(ref.raw_id, 0) is None
    with pytest.raises(BlobError, match="its file is gone"):
        store.save(ref, Sealer(KEYS), tmp_path / "out")
    assert store.missing(ref.raw_id, ref.size) == [0]
