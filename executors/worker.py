"""The worker subprocess: one loaded model, one job at a time, talking over a pipe.

Messages (pickled by ``multiprocessing``, between our own processes only)::

    parent -> worker   ("run", job) | ("cancel", prompt_id) | ("exit",)
    worker -> parent   ("ready", pid, notes) | ("error", message)         after loading
                       ("chunk", text) ... then ("done", output, cancelled) | ("failed", message)

``output`` is the executor's whole ``Output`` (text, usage, files, finish, tool_calls): a field
added to it reaches the node without a change here.

A reader thread takes ``cancel`` while the main thread is busy in ``Executor.run``, which polls
``cancelled()`` between tokens.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from multiprocessing.connection import Connection

from .base import ExecutorError, Job, ModelSpec
from .registry import create


def main(conn: Connection, spec: ModelSpec) -> None:
    """Entry point of the worker process."""
    # Ctrl-C in the node's terminal reaches this process too; the node stops its workers
    # itself. SIGINT was blocked from before the spawn (``Worker.start``) until now.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        executor = create(spec.backend)
        executor.load(spec)
        warm_up = getattr(executor, "warm_up", None)
        if warm_up is not None:
            warm_up()
    except ExecutorError as exc:
        conn.send(("error", str(exc)))
        return
    except Exception as exc:  # a backend's own failure, reported whole
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid(), tuple(getattr(executor, "notes", ()))))
    jobs: queue.Queue[Job | None] = queue.Queue()
    current: list[str] = [""]
    cancel = threading.Event()

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                jobs.put(None)
                return
            if message[0] == "run":
                jobs.put(message[1])
            elif message[0] == "cancel" and message[1] == current[0]:
                cancel.set()
            elif message[0] == "exit":
                jobs.put(None)
                return

    threading.Thread(target=read, daemon=True).start()
    while (job := jobs.get()) is not None:
        current[0] = job.prompt_id
        cancel.clear()
        try:
            out = executor.run(job, lambda text: conn.send(("chunk", text)), cancel.is_set)
            conn.send(("done", out, cancel.is_set()))
        except ExecutorError as exc:
            conn.send(("failed", str(exc)))
        except Exception as exc:  # a backend's own failure fails the job, not the worker
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        current[0] = ""
    executor.unload()
