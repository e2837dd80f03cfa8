"""Which real clients work against a syncq node: drives benchmarks/compat/clients.py in an
interpreter that has the clients (they are not the project's dependencies) and prints its JSON
table (client, version, call, works, detail).

    python benchmarks/compat/run.py --python /tmp/compat/bin/python            # a fresh node
    python benchmarks/compat/run.py --python ... --base http://127.0.0.1:7331 --key KEY
    python benchmarks/compat/run.py --python ... openai ollama curl             # some suites

Without ``--base`` it starts a node of its own in a temporary home (echo, smollm2-135m and
gemma3-270m, as ``syncq init`` makes one) on free ports, and stops it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The syncq of the interpreter running this (the project's venv), else the one on PATH.
_BESIDE = Path(sys.executable).parent / "syncq"
SYNCQ = [str(_BESIDE) if _BESIDE.exists() else "syncq"]
START_TIMEOUT_S = 60


@contextlib.contextmanager
def node() -> Iterator[tuple[str, str]]:
    """A node in a fresh home: (API base URL, key)."""
    with tempfile.TemporaryDirectory(prefix="syncq-compat-") as home:
        env = {**os.environ, "SYNCQ_HOME": home}
        subprocess.run([*SYNCQ, "init", "--if-missing"], env=env, check=True, capture_output=True)
        key = subprocess.run(
            [*SYNCQ, "api-key"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        args = ["node", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0", "--no-discovery", "--json-log"]
        proc = subprocess.Popen([*SYNCQ, *args], env=env, stdout=subprocess.PIPE, text=True)
        try:
            yield _api_url(proc), key
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _api_url(proc: subprocess.Popen[str]) -> str:
    # The node logs one JSON object a line; the "api-listening" one names the bound port.
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    for line in proc.stdout:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("event") == "api-listening":
                return str(event["url"])
        if time.monotonic() > deadline:
            break
    raise SystemExit(f"the node gave no API address (exit {proc.poll()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="the interpreter that has the clients")
    parser.add_argument("--base", help="a running node's API, e.g. http://127.0.0.1:7331")
    parser.add_argument("--key", help="its API key (syncq api-key)")
    parser.add_argument("suites", nargs="*", help="openai langchain_openai litellm ... curl")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        base, key = (args.base, args.key) if args.base else stack.enter_context(node())
        env = {**os.environ, "SYNCQ_COMPAT_BASE": base.rstrip("/"), "SYNCQ_COMPAT_KEY": key or ""}
        done = subprocess.run(
            [args.python, str(HERE / "clients.py"), *args.suites],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
    rows = json.loads(done.stdout or "[]")
    print(json.dumps(rows, indent=1))
    if done.returncode:
        raise SystemExit(done.returncode)


if __name__ == "__main__":
    main()
