"""A request to a node's own API that it can run at once (``Scheduler.run_at_once``): one
envelope per short chat, shown in the log when it runs long, cancellable there, kept when its
client leaves, and never ahead of prompts queued for the same model. A real node serving echo,
driven by the official ``openai`` client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from api_probe import Served, serving_echo
from harness import wait_until

from syncq import crypto, yjs_read
from syncq.frames import MAX_FRAME_SIZE
from syncq.lifecycle import Status
from syncq.padding import Floor, padded_size
from syncq.space import NewPrompt, Space, wall_clock_ms

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = serving_echo(tmp_path_factory.mktemp("at-once") / "home")
    yield served
    served.node.stop()


def chat(api: Served, text: str, **body: object) -> str:
    answer = api.client().chat.completions.create(
        model="echo", messages=[{"role": "user", "content": text}], extra_body=body or None
    )
    return answer.choices[0].message.content or ""


def entry_of(api: Served, text: str):
    with Space.open(api.node.home) as space:
        return next((e for e in space.entries(limit=None) if e.prompt.input == text), None)


def test_a_short_chat_is_stored_as_one_envelope_of_prompt_claim_and_result(api: Served) -> None:
    chat(api, "warm up")  # the model's first load changes what the node advertises
    with Space.open(api.node.home) as space:
        before = space.store.count()
    answers = [chat(api, f"quick {i}") for i in range(20)]
    assert answers == [f"quick {i}" for i in range(20)]
    with Space.open(api.node.home) as space:
        # 20, and one more if the node's minutely presence fell in between; three per chat
        # (add, claim, result) before run_at_once.
        assert 20 <= space.store.count() - before <= 21
        me = space.device_id
        for i in range(20):
            entry = next(e for e in space.entries(limit=None) if e.prompt.input == f"quick {i}")
            assert entry.status is Status.DONE and entry.result is not None
            assert [(c.node, c.attempt) for c in entry.claims] == [(me, 1)]
            assert entry.result.node == me and entry.result.output == f"quick {i}"


def test_a_long_chat_shows_in_the_log_while_it_runs_and_a_cancel_there_ends_it(api: Served) -> None:
    failed: list[BaseException] = []

    def slow() -> None:
        try:
            chat(api, "a long one", delay=30)
        except openai.APIError as exc:
            failed.append(exc)

    asking = threading.Thread(target=slow)
    asking.start()
    wait_until(
        lambda: (e := entry_of(api, "a long one")) is not None and e.status is Status.RUNNING,
        what="the chat run at once to show as running",
    )
    found = entry_of(api, "a long one")
    assert found is not None
    with Space.open(api.node.home) as space:
        space.cancel(found.prompt.id)
    asking.join(20)
    assert not asking.is_alive(), "the request did not end with its cancelled prompt"
    assert len(failed) == 1 and "cancelled" in str(failed[0])
    assert entry_of(api, "a long one").status is Status.CANCELLED  # type: ignore[union-attr]


def test_a_client_that_leaves_does_not_stop_a_chat_run_at_once(api: Served) -> None:
    impatient = openai.OpenAI(
        base_url=f"http://127.0.0.1:{api.port}/v1", api_key=api.key, max_retries=0, timeout=0.3
    )
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "left behind"}], extra_body={"delay": 1.5}
        )
    wait_until(
        lambda: (e := entry_of(api, "left behind")) is not None and e.status is Status.DONE,
        what="the answer nobody waits for any more, stored",
    )


def test_a_chat_does_not_jump_prompts_queued_for_its_model(api: Served) -> None:
    texts = [f"queued {i}" for i in range(6)]
    with Space.open(api.node.home) as space:
        space.add_many([NewPrompt(text=t, model="echo", params={"delay": 0.3}) for t in texts])
    wait_until(
        lambda: (e := entry_of(api, "queued 0")) is not None and e.status is Status.RUNNING,
        what="the first queued prompt to run",
    )
    assert chat(api, "after them") == "after them"
    with Space.open(api.node.home) as space:
        started = {e.prompt.input: e.result.started_at for e in space.entries(limit=None) if e.result}
    assert all(started[t] <= started["after them"] for t in texts), started


def test_a_streamed_chat_goes_ahead_of_chats_waiting_to_run_at_once(api: Served) -> None:
    # Found in review: the runs at once waiting for the model counted as claims held ahead,
    # so the streamed chat was not even claimed until most of them had run (9 of 10 first).
    plain = [f"plain {i}" for i in range(10)]
    asking = [threading.Thread(target=chat, args=(api, text), kwargs={"delay": 0.5}) for text in plain]
    for thread in asking:
        thread.start()
    # All ten are in the node: one running, nine shown as waiting for echo (SHOW_WAITING_S).
    wait_until(lambda: all(entry_of(api, text) is not None for text in plain), what="ten chats waiting")
    sent = wall_clock_ms()
    stream = api.client().chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "the user's question"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "the user's question"
    for thread in asking:
        thread.join(60)
    with Space.open(api.node.home) as space:
        started = {e.prompt.input: e.result.started_at for e in space.entries(limit=None) if e.result}
    # Started after it was asked for and before it: at most one, let in as it was claimed.
    ahead = [text for text in plain if sent <= started[text] < started["the user's question"]]
    assert len(ahead) <= 1, ahead


def test_many_large_chats_at_once_still_go_out_in_envelopes_a_peer_takes(tmp_path: Path) -> None:
    # Found in review: the results of runs at once that ended together went out in one
    # envelope with their prompts, 12-16 MiB for these, over the 8 MiB frame: the device's
    # sync to every peer then stopped for good.
    home = tmp_path / "big"
    served = serving_echo(home, "big", config="[node]\nparallel = 4\n")
    try:
        chat(served, "warm up")
        gate = threading.Barrier(16)

        def large(i: int) -> None:
            gate.wait()
            served.client().chat.completions.create(
                model="echo",
                messages=[
                    {"role": "system", "content": "s" * 700_000},
                    {"role": "user", "content": f"large {i} " + "y" * 200_000},
                ],
            )

        asking = [threading.Thread(target=large, args=(i,)) for i in range(16)]
        for thread in asking:
            thread.start()
        for thread in asking:
            thread.join(120)
        with Space.open(home) as space:
            assert sum(e.status is Status.DONE for e in space.entries(limit=None)) == 17
            sizes = [len(row.data) for author in space.store.tops() for row in space.store.rows(author)]
        # One prompt with its answer is about 1.1 MiB; no envelope holds two of them.
        assert max(sizes) < 2 * 2**20 < MAX_FRAME_SIZE, max(sizes)
    finally:
        served.node.stop()


def test_every_envelope_the_node_writes_pads_by_what_it_carries(api: Served) -> None:
    # PROTOCOL.md, "Padding": a prompt or a result (alone, or in a batch with claims) pads to the
    # content floor; claims, their heartbeats, the running mark, stream chunks and presence to
    # the small one. Judged here by what each envelope the node wrote really holds.
    queued, asked = (" ".join(f"{what}{i}" for i in range(30)) for what in ("queued", "asked"))
    with Space.open(api.node.home) as space:
        before = space.version_vector()
        space.add(queued, model="echo", params={"delay": 1.5})  # claimed, streamed, ended
    stream = api.client().chat.completions.create(
        model="echo", messages=[{"role": "user", "content": asked}], stream=True, extra_body={"delay": 1.5}
    )  # run at once: its prompt shows with its first output, then chunks, then its result
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == asked
    assert chat(api, "short") == "short"  # prompt, claim and result in one envelope
    for text in (queued, asked, "short"):
        wait_until(lambda t=text: (e := entry_of(api, t)) is not None and e.status is Status.DONE, what=text)
    floors: list[Floor] = []
    with Space.open(api.node.home) as space:
        for data in space.envelopes(after=before):
            envelope, update = crypto.open_envelope(data, space.keys)
            if envelope.kind is not crypto.Kind.UPDATE:
                continue
            records = [json.loads(s) for s in yjs_read.inserted_strings(update) if s.startswith("{")]
            content = any("input" in r or "status" in r for r in records)  # a prompt or a result
            floor = Floor.CONTENT if content else Floor.SMALL
            assert len(data) == crypto.OVERHEAD + padded_size(len(update), floor), records
            floors.append(floor)
    # Two adds and three results at least; claims and chunks of two streamed runs (a chunk every
    # 100 ms for about a second each).
    assert floors.count(Floor.CONTENT) >= 4 and floors.count(Floor.SMALL) >= 10, floors
