"""A soak with real processes: ``make soak MINUTES=10`` (tests/soak/test_soak.py runs one minute).

Six `syncq node` processes on 127.0.0.1: a relay every device dials through a fault-injecting
proxy of its own, two GPU boxes running echo (one also dialled directly by the laptop), and three
clients: the laptop (prompts through its HTTP API and its file portal), the phone (through the
CLI and the Python API) and a tablet (the Python API), which the laptop removes midway. Meanwhile
links are cut, delayed and partitioned at random, and random nodes are killed with SIGKILL and
restarted.

Then the faults stop, every link heals and every node comes back, and the soak checks what the
product promises:
- every prompt acknowledged (an id printed, a 201, a folder in ``queued/``) is on every member,
  save what the tablet wrote after its removal;
- every member holds the same prompts, runs and results;
- every prompt ran, and ran once unless two nodes that could not see each other both ran it
  (counted as ``duplicates``; both runs show in ``syncq show``).

The last line printed is one JSON object: minutes, acknowledged, lost, divergent, duplicates,
kills, partitions, converge_s (and a few more counts). Exits 1 when anything was lost or
diverged, or the mesh did not converge.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
sys.path.insert(0, str(HELPERS))
os.environ["SYNCQ_TEST_KNOBS"] = "1"  # the echo executor's delay knob, in the nodes started here

from harness import SYNCQ, NodeProcess, api_key  # noqa: E402
from proxy import Proxy  # noqa: E402
from spaces import join, sync  # noqa: E402

from syncq.errors import SyncqError  # noqa: E402
from syncq.lifecycle import TERMINAL, Status  # noqa: E402
from syncq.records import RunStatus  # noqa: E402
from syncq.space import Space  # noqa: E402
from syncq.store import Peer  # noqa: E402

MEMBERS = ("laptop", "phone", "gpu1", "gpu2")  # what must end equal (the relay holds ciphertext)
CONVERGE_S = 240.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One device: its home, its node process (restartable on the same ports) and its proxy to
    the relay."""

    def __init__(self, home: Path, *args: str, port: int = 0) -> None:
        self.home, self.args = home, args
        self.port = port or free_port()
        self.proc: NodeProcess | None = None
        self.lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.home.name

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.alive

    def start(self) -> None:
        with self.lock:
            for _ in range(40):
                try:
                    self.proc = NodeProcess(self.home, *self.args, port=self.port).start()
                    return
                except AssertionError as exc:
                    if "address already in use" not in str(exc):
                        raise
                    time.sleep(0.25)  # the old process's port, a moment after SIGKILL
            raise RuntimeError(f"{self.name} could not listen on {self.port}")

    def kill(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.alive:
                self.proc.kill()

    def stop(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.alive:
                self.proc.stop()


class Soak:
    def __init__(self, root: Path, minutes: float, seed: int) -> None:
        self.root, self.minutes = root, minutes
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, str] = {}  # prompt id: how it came in
        self.tablet_seqs: dict[str, int] = {}  # the tablet's prompts: their envelope's seq
        self.cutoff: int | None = None
        self.portal_sent: list[str] = []  # markers of folders renamed into the inbox
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.build()

    # -- the mesh ------------------------------------------------------------------------------

    def build(self) -> None:
        root = self.root
        with Space.init(root / "laptop", name="laptop", device_list=True) as laptop:
            joined = [join(root / name, laptop, name) for name in ("phone", "gpu1", "gpu2", "tablet")]
            joined.append(join(root / "relay", laptop, "relay", role="relay"))
            # Everyone knows the whole device list before the first session, as after the
            # join handshakes and a first round of syncs: strangers to each other refuse (4410).
            sync([laptop, *joined])
            for space in joined:
                space.close()
        self.relay = Node(root / "relay", "--no-executors")
        self.api_port = free_port()
        self.nodes = {
            "laptop": Node(root / "laptop", "--no-executors", "--api", f"127.0.0.1:{self.api_port}"),
            "phone": Node(root / "phone", "--no-executors"),
            "gpu1": Node(root / "gpu1"),
            "gpu2": Node(root / "gpu2"),
            "tablet": Node(root / "tablet", "--no-executors"),
        }
        self.proxies = {name: Proxy(self.relay.port) for name in self.nodes}
        self.direct = Proxy(self.nodes["gpu1"].port)  # the laptop also dials gpu1 itself
        for name, proxy in self.proxies.items():
            with Space.open(root / name) as space:
                space.store.save_peer(Peer(url=proxy.url, source="config"))
                if name == "laptop":
                    space.store.save_peer(Peer(url=self.direct.url, source="config"))
        self.relay.start()
        for node in self.nodes.values():
            node.start()
        self.key = api_key(root / "laptop")
        self.inbox = root / "laptop" / "portal" / "inbox"
        self.outside = root / "portal-drafts"
        self.outside.mkdir()

    def everyone(self) -> list[Node]:
        return [self.relay, *self.nodes.values()]

    # -- clients -------------------------------------------------------------------------------

    def text(self, how: str) -> tuple[str, float]:
        with self.lock:
            self.counts[f"tried_{how}"] += 1
            n = sum(v for k, v in self.counts.items() if k.startswith("tried_"))
        return f"{how} {n}", self.rng.choice((0.0, 0.05, 0.3, 1.0))

    def ack(self, prompt_id: str, how: str) -> None:
        with self.lock:
            self.acked[prompt_id] = how

    def via_cli(self) -> None:
        text, delay = self.text("cli")
        done = subprocess.run(
            [SYNCQ, "add", text, "-m", "echo", "--param", f"delay={delay}"],
            env={**os.environ, "SYNCQ_HOME": str(self.root / "phone")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            self.ack(done.stdout.strip().split()[-1], "cli")
        elif "Traceback" in done.stderr:
            self.errors.append(f"syncq add: {done.stderr[-500:]}")

    def via_python(self, home: str = "phone") -> None:
        text, delay = self.text("python" if home == "phone" else "tablet")
        with Space.open(self.root / home) as space:
            prompt = space.add(text, model="echo", params={"delay": delay})
            if home == "tablet":
                self.tablet_seqs[prompt.id] = space.store.tops()[space.device.public_key]
        self.ack(prompt.id, "python" if home == "phone" else "tablet")

    def via_http(self) -> None:
        text, delay = self.text("http")
        body = json.dumps({"text": text, "model": "echo", "params": {"delay": delay}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/api/prompts",
            data=body,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (http, loopback)
                if response.status == 201:
                    self.ack(json.loads(response.read())["id"], "http")
        except OSError:
            pass  # the laptop's node is down or cut off from it: not acknowledged, not counted

    def via_portal(self) -> None:
        text, _ = self.text("portal")
        marker = f"marker-{len(self.portal_sent)}"
        draft = self.outside / marker
        draft.mkdir()
        (draft / "request.yaml").write_text(f"model: echo\nprompt: {text}\n")
        (draft / marker).write_text("")
        draft.rename(self.inbox / marker)
        self.portal_sent.append(marker)

    def portal_acks(self) -> dict[str, str]:
        """Marker: prompt id, for every folder the portal took (queued/ID or outbox/ID)."""
        portal = self.root / "laptop" / "portal"
        found = {}
        for where in ("queued", "outbox"):
            for folder in (portal / where).glob("*"):
                for marker in folder.glob("marker-*"):
                    found[marker.name] = folder.name
        return found

    def client(self, actions: list[Any], every: float) -> None:
        while not self.stop.is_set():
            action = self.rng.choice(actions)
            try:
                action()
            except SyncqError as exc:  # a store busy past its timeout, say: not acknowledged
                self.counts["client_errors"] += 1
                self.errors.append(f"{action.__name__}: {exc}")
            self.stop.wait(self.rng.uniform(0.5, 1.5) * every)

    # -- faults --------------------------------------------------------------------------------

    def faults(self) -> None:
        pending: list[tuple[float, Any]] = []
        while not self.stop.is_set():
            now = time.monotonic()
            for due, undo in [p for p in pending if p[0] <= now]:
                undo()
                pending.remove((due, undo))
            roll = self.rng.random()
            proxies = [*self.proxies.values(), self.direct]
            if roll < 0.3:
                proxy = self.rng.choice(proxies)
                proxy.partition()
                self.counts["partitions"] += 1
                pending.append((now + self.rng.uniform(1, 5), proxy.heal))
            elif roll < 0.5:
                proxy = self.rng.choice(proxies)
                proxy.delay = self.rng.uniform(0.05, 0.5)
                self.counts["delays"] += 1
                pending.append((now + self.rng.uniform(1, 5), lambda p=proxy: setattr(p, "delay", 0.0)))
            elif roll < 0.8:
                node = self.rng.choice([n for n in self.everyone() if n.up])
                node.kill()
                self.counts["kills"] += 1
                pending.append((now + self.rng.uniform(0.5, 3), node.start))
            self.stop.wait(self.rng.uniform(0.5, 2.5))
        for _, undo in pending:
            undo()

    def remove_tablet(self) -> None:
        if self.stop.wait(self.minutes * 30):
            return
        with Space.open(self.root / "laptop") as laptop:
            self.cutoff = laptop.remove_device("tablet").cutoff
        self.counts["removals"] += 1

    # -- the run and its checks ----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        threads = [
            threading.Thread(target=self.client, args=([self.via_cli, self.via_python], 0.4)),
            threading.Thread(target=self.client, args=([self.via_http, self.via_portal], 0.4)),
            threading.Thread(target=self.client, args=([lambda: self.via_python("tablet")], 1.0)),
            threading.Thread(target=self.faults),
            threading.Thread(target=self.remove_tablet),
        ]
        for thread in threads:
            thread.start()
        time.sleep(self.minutes * 60)
        self.stop.set()
        for thread in threads:
            thread.join()
        for proxy in [*self.proxies.values(), self.direct]:
            proxy.delay = 0.0
            proxy.heal()
        for node in self.everyone():
            if not node.up:
                node.start()
        healed = time.monotonic()
        converged = self.wait_converged()
        report = self.report(converged, time.monotonic() - healed)
        return report

    def counting(self) -> set[str]:
        """The acknowledged prompts that must survive: all but what the tablet wrote after its
        cutoff (a removed device's later envelopes count nowhere)."""
        with self.lock:
            acked = dict(self.acked)
        for prompt_id in self.portal_acks().values():
            acked.setdefault(prompt_id, "portal")
        cutoff = self.cutoff
        return {
            p
            for p, how in acked.items()
            if how != "tablet" or cutoff is None or self.tablet_seqs.get(p, 0) <= cutoff
        }

    def dumps(self) -> dict[str, list[Any]]:
        found = {}
        for name in MEMBERS:
            with Space.open(self.root / name) as space:
                found[name] = [
                    (
                        e.prompt.id,
                        e.status.value,
                        sorted((r.node, r.attempt, r.status.value, r.output) for r in e.results),
                    )
                    for e in space.entries(limit=None)
                ]
        return found

    def wait_converged(self) -> bool:
        deadline = time.monotonic() + CONVERGE_S
        while time.monotonic() < deadline:
            try:
                dumps = self.dumps()
            except SyncqError:
                time.sleep(0.5)
                continue
            first = dumps["laptop"]
            ids = {p for p, _, _ in first}
            if (
                all(d == first for d in dumps.values())
                and self.counting() <= ids
                and all(Status(s) in TERMINAL for _, s, _ in first)
                and len(self.portal_acks()) == len(self.portal_sent)
            ):
                return True
            time.sleep(1.0)
        return False

    def report(self, converged: bool, converge_s: float) -> dict[str, Any]:
        dumps = self.dumps()
        counting = self.counting()
        lost = {p for d in dumps.values() for p in counting - {i for i, _, _ in d}}
        first = dumps["laptop"]
        divergent = sum(1 for d in dumps.values() if d != first)
        done = Counter()
        for prompt_id, _, runs in first:
            done[prompt_id] = sum(1 for _, _, status, _ in runs if status == RunStatus.DONE.value)
        statuses = Counter(s for _, s, _ in first)
        return {
            "minutes": self.minutes,
            "acknowledged": len(counting),
            "lost": len(lost),
            "divergent": divergent,
            "duplicates": sum(1 for n in done.values() if n > 1),
            "kills": self.counts["kills"],
            "partitions": self.counts["partitions"],
            "converge_s": round(converge_s, 1) if converged else None,
            "converged": converged,
            "statuses": dict(statuses),
            "portal_lost": len(self.portal_sent) - len(self.portal_acks()),
            "removals": self.counts["removals"],
            "delays": self.counts["delays"],
            "client_errors": self.counts["client_errors"],
            "by_channel": dict(Counter(self.acked.values())),
            "errors": self.errors[:5],
            "held": {name: len(d) for name, d in dumps.items()},
            "missing": {name: len(counting - {i for i, _, _ in d}) for name, d in dumps.items()},
        }

    def close(self) -> None:
        for node in self.everyone():
            node.stop()
        for proxy in [*self.proxies.values(), self.direct]:
            proxy.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0, help="the faults' and clients' random choices")
    parser.add_argument("--keep", action="store_true", help="keep the homes (their path is printed)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="syncq-soak-"))
    soak = Soak(root, args.minutes, args.seed)
    try:
        report = soak.run()
    finally:
        soak.close()
        if args.keep:
            print(f"homes kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report))
    bad = report["lost"] or report["divergent"] or not report["converged"] or report["portal_lost"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
