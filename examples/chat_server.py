"""A multi-user chat relay: every TCP connection is a conversation, every line a question.

Each question is queued in the space (``syncq.aopen``) with the conversation so far (the
model sees the earlier questions and its answers), and its answer streams back to that
connection as it arrives, from whichever node of the mesh runs it: this program needs no model,
no GPU and no node of its own beyond the one that syncs this home. Conversations never wait on
one another: each is a coroutine awaiting its own prompt, and one process holds any number.

    syncq node &                                   # syncs this home with the mesh
    python examples/chat_server.py --model smollm2-135m --port 7400
    nc 127.0.0.1 7400                              # then type a question and press enter

Options: --home (default: $SYNCQ_HOME or the user data dir), --host, --port, --model,
--param KEY=VALUE (repeatable, e.g. --param max_tokens=128). A client that disconnects leaves
its prompt to finish; the answer stays in `syncq log`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import syncq
from syncq.records import parse_param


async def converse(
    space: syncq.AsyncClient,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    model: str,
    params: dict[str, object],
) -> None:
    """One conversation: answer each line the client sends, streaming."""
    history: list[syncq.Message] = []
    writer.write(f"connected: ask {model} anything, one question per line\n".encode())
    with contextlib.suppress(ConnectionError):
        await writer.drain()
        while line := await reader.readline():
            question = line.decode(errors="replace").strip()
            if not question:
                continue
            try:
                asked = [*history, syncq.Message(role="user", content=question)]
                prompt = space.add(model=model, params=params, messages=asked)  # type: ignore[arg-type]
                async for chunk in space.stream(prompt.id):
                    writer.write(chunk.encode())
                    await writer.drain()
                outcome = await space.result(prompt.id)
                ending = "\n" if outcome.ok else f"[{outcome.status}: {outcome.error}]\n"
                if outcome.ok:  # an unanswered question is left out of what the model is shown
                    history = [*asked, syncq.Message(role="assistant", content=outcome.text)]
            except syncq.SyncqError as exc:
                ending = f"[error: {exc}]\n"
            writer.write(ending.encode())
            await writer.drain()
    writer.close()


async def serve(home: str | None, host: str, port: int, model: str, params: dict[str, object]) -> None:
    async with syncq.aopen(home) as space:
        server = await asyncio.start_server(
            lambda r, w: converse(space, r, w, model, params), host=host, port=port
        )
        bound = server.sockets[0].getsockname()
        print(f"chat relay on {bound[0]}:{bound[1]}, answering with {model}", flush=True)
        async with server:
            await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7400)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    try:
        params = dict(parse_param(p) for p in args.param)
        asyncio.run(serve(args.home, args.host, args.port, args.model, params))
    except syncq.UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
