"""Workers killed by a signal, with real node processes: the signal in words everywhere, and a
model whose worker dies by SIGILL left to the nodes that can run it. Also what surrounds a node's
life: one node per home, and Ctrl-C without a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import openai
import pytest
from harness import SYNCQ, member, wait_until

from syncq.lifecycle import Status
from syncq.space import Space
from syncq.store import Peer

pytestmark = pytest.mark.slow

SIGILL_SAYS = (
    "the worker for badcpu was killed by SIGILL (illegal instruction): the echo backend was built for "
    "CPU features this machine cannot run; see README (CPU builds)"
)
# An echo model that dies loading, as llama.cpp built for another CPU dies at its first decode.
BAD_CPU = '[models.badcpu]\nbackend = "echo"\ncrash_on_load = "SIGILL"\n'
FAST = "[node]\nheartbeat = 0.3\nbackoff = 0.2\n"


def syncq(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCQ_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [SYNCQ, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def entry(home: Path, prompt_id: str):
    with Space.open(home) as space:
        return space.log.entry(prompt_id)


def test_a_model_whose_worker_dies_by_sigill_stops_being_served_and_its_prompt_waits_for_another_node(
    tmp_path: Path, nodes
) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a = first.paths.root
        b = member(tmp_path, first, "b")
    (a / "models.toml").write_text(BAD_CPU)
    (a / "config.toml").write_text(FAST)
    node_a = nodes(a, "--api", "127.0.0.1:0")
    api = node_a.wait_event("api-listening")["url"]
    client = openai.OpenAI(base_url=f"{api}/v1", api_key=node_a.api_key, max_retries=0)

    # The first request loads the model, whose worker dies by SIGILL: the request's wait ends
    # with the reason, and the prompt it added is cancelled (nobody would read a later answer).
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="badcpu", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 503
    assert refused.value.body["message"] == f"no node can run the model 'badcpu' now: {SIGILL_SAYS}"
    by_api = json.loads(syncq(a, "log", "--json").stdout.splitlines()[-1])
    assert by_api["status"] == "cancelled"
    assert [(r["error"], r["counts"]) for r in by_api["runs"]] == [(SIGILL_SAYS, False)]
    assert node_a.wait_event("model-unusable", model="badcpu")["reason"] == SIGILL_SAYS
    assert node_a.wait_event("finished", prompt=by_api["id"])["error"] == SIGILL_SAYS
    human = syncq(a, "show", by_api["id"]).stdout
    assert "killed by SIGILL" in human and "not counted as an attempt" in human

    models = {m["model"]: m for m in map(json.loads, syncq(a, "models", "--json").stdout.splitlines())}
    assert models["badcpu"]["nodes"][0]["unusable"] == SIGILL_SAYS
    assert models["echo"]["nodes"][0]["unusable"] is None
    assert "unusable" in syncq(a, "models").stdout
    assert "badcpu" not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.APIStatusError) as again:  # refused before a prompt is added
        client.chat.completions.create(model="badcpu", messages=[{"role": "user", "content": "hi"}])
    assert again.value.status_code == 503 and "killed by SIGILL" in again.value.message

    # A wait from the CLI ends at once, and its prompt stays queued: its attempts are not spent.
    waited = syncq(a, "add", "hello", "-m", "badcpu", "--wait")
    assert waited.returncode == 1 and "Traceback" not in waited.stderr
    prompt_id = json.loads(syncq(a, "log", "--json").stdout.splitlines()[-1])["id"]
    assert waited.stderr.strip() == (
        f"Error: no node can run badcpu now: a: {SIGILL_SAYS}; the prompt stays queued for a device "
        f"that can (`syncq cancel {prompt_id}` drops it)"
    )
    assert json.loads(syncq(a, "show", prompt_id, "--json").stdout)["status"] == "queued"

    # The node runs its other models, and spends no retry on the prompt: after an echo prompt
    # went through, the badcpu prompt still has its one run.
    assert syncq(a, "add", "still here", "-m", "echo", "--wait").stdout.strip() == "still here"
    assert entry(a, prompt_id).results == ()
    assert node_a.find("running", prompt=prompt_id) == []

    # Another node that serves the model takes the prompt and runs it.
    (b / "models.toml").write_text('[models.badcpu]\nbackend = "echo"\n')
    with Space.open(b) as space:
        space.store.save_peer(Peer(url=node_a.url, source="config"))
    nodes(b)
    wait_until(lambda: entry(a, prompt_id).status is Status.DONE, timeout=60, what="b to run the prompt")
    done = entry(a, prompt_id)
    assert done.result is not None and done.result.node_name == "b" and done.result.output == "hello"
    assert node_a.find("running", prompt=prompt_id) == []


@pytest.mark.parametrize(
    ("crash", "says"),
    [
        ("SIGSEGV", "was killed by SIGSEGV (segmentation fault): a crash in the echo backend's native code"),
        ("SIGKILL", "was killed by SIGKILL: most often the kernel's out-of-memory killer (see `dmesg`)"),
    ],
)
def test_a_worker_killed_by_sigsegv_or_sigkill_says_so_in_show_and_the_log(
    tmp_path: Path, nodes, crash: str, says: str
) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = first.paths.root
    node = nodes(home)
    ran = syncq(home, "add", "x", "-m", "echo", "--param", f"crash={crash}", "--max-attempts", "1", "--wait")
    assert ran.returncode == 1 and says in ran.stderr
    prompt_id = json.loads(syncq(home, "log", "--json").stdout.splitlines()[-1])["id"]
    shown = syncq(home, "show", prompt_id).stdout
    assert "failed" in shown and says.split(":")[0] in " ".join(shown.split())
    assert says in node.wait_event("finished", prompt=prompt_id)["error"]


def test_a_second_node_in_one_home_refuses_to_start_and_names_the_first(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = first.paths.root
    running = nodes(home)
    second = syncq(home, "node", "--listen", "127.0.0.1:0", "--no-api", "--no-discovery")
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"Error: a node already runs in this home (pid {running.proc.pid}, listening on {running.url}): "
        "stop it first, or give this one its own home with --home"
    ]
    running.kill()  # kill -9: the kernel lets go of the lock
    assert nodes(home).alive


def test_ctrl_c_stops_a_node_with_a_loaded_worker_without_a_traceback(tmp_path: Path) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = first.paths.root
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    # Its own process group, as a terminal gives a command: Ctrl-C sends SIGINT to the whole group.
    node = subprocess.Popen(
        [SYNCQ, "node", "--listen", "127.0.0.1:0", "--no-api", "--no-discovery"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert node.stdout is not None
        started = [node.stdout.readline() for _ in range(2)]  # listening, serving
        assert "listening on" in started[0], started
        assert syncq(home, "add", "warm", "-m", "echo", "--wait").stdout.strip() == "warm"
        os.killpg(node.pid, signal.SIGINT)
        rest, _ = node.communicate(timeout=30)
        output = "".join(started) + rest
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
    assert node.returncode == 0
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert output.rstrip().endswith("stopped")


def test_ctrl_c_of_a_wait_says_the_prompt_goes_on_and_how_to_cancel_it(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = first.paths.root
    nodes(home)
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    waiting = subprocess.Popen(
        [SYNCQ, "add", "slow one", "-m", "echo", "--param", "delay=30", "--follow"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a suite started in the background (`make test &`, a CI runner's
        # non-interactive shell) ignores SIGINT, every child inherits that, and Python then
        # installs no KeyboardInterrupt handler; the command would rightly go on waiting.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert waiting.stdout is not None
    assert waiting.stdout.read(4) == "slow"  # the first word streamed: it follows the prompt
    with Space.open(home) as space:
        prompt_id = space.entries(limit=None)[-1].prompt.id
    waiting.send_signal(signal.SIGINT)
    _, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-2:] == [
        f"the prompt {prompt_id} goes on without this wait: `syncq show {prompt_id}` tells how it "
        f"went, `syncq cancel {prompt_id}` stops it",
        "Aborted!",
    ]
    assert entry(home, prompt_id).status is Status.RUNNING  # it goes on


def test_waiting_for_a_model_nobody_serves_says_so_and_suggests_near_names(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = first.paths.root
    node = nodes(home)
    node.wait_event("serving")
    with Space.open(home) as space:
        wait_until(lambda: space.mesh_models(), what="the node to note the mesh's models")
    waited = syncq(home, "add", "hi", "-m", "ech", "--wait", "--timeout", "0.5")
    assert waited.returncode == 1
    first_line = waited.stderr.splitlines()[0]
    assert first_line == (
        "waiting: no node of this space has advertised model 'ech' yet (did you mean echo?); "
        "Ctrl-C stops waiting and leaves the prompt queued"
    )
    assert "the prompt stays queued" in waited.stderr
    queued = syncq(home, "add", "hi", "-m", "ech")
    assert queued.returncode == 0 and "did you mean echo?" in queued.stderr


def test_the_python_waits_end_for_a_prompt_no_node_can_run(tmp_path: Path, nodes) -> None:
    import asyncio

    import syncq as api

    with Space.init(tmp_path / "a", name="a") as first:
        home = first.paths.root
    (home / "models.toml").write_text(BAD_CPU)
    nodes(home)
    with api.open(home) as client:
        outcome = client.run("hello", model="badcpu", timeout=60)  # its worker dies by SIGILL
    assert outcome.status is Status.QUEUED and outcome.error == SIGILL_SAYS and not outcome.ok
    assert outcome.problem().startswith(f"no node can run badcpu now: {SIGILL_SAYS}; the prompt stays queued")

    async def later() -> api.Outcome:  # a prompt added once the model is known to be unusable
        async with api.aopen(home) as space:
            return await space.run("again", model="badcpu", timeout=60)

    again = asyncio.run(later())
    assert again.status is Status.QUEUED and again.error == f"a: {SIGILL_SAYS}"
