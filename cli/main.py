"""The ``syncq`` command: parse, make one library call, render.

One error boundary (``SyncqGroup.invoke``) turns every ``SyncqError`` into a one-line message and
exit code 1; click's usage errors exit with 2; nothing a user can cause prints a traceback. Human
output uses rich (imported only when a table is drawn, to keep start-up fast); ``--json`` prints
one JSON object per line for scripts.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import click

from syncq.errors import SyncqError
from syncq.errors import UserError as SyncqUserError

STATUSES = ("queued", "claimed", "running", "done", "failed", "cancelled")
KINDS = ("llm", "asr", "image")


# Commands whose module is imported only when they run: `syncq add` must start fast.
LAZY = {name: "syncq.cli.mesh" for name in ("node", "join", "peers", "portal")}
LAZY |= {"api-key": "syncq.cli.web", "web": "syncq.cli.web"}
LAZY |= {"invite": "syncq.cli.devices", "devices": "syncq.cli.devices"}


class SyncqGroup(click.Group):
    """The command group with syncq's error boundary, loading mesh commands lazily."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY:
            import importlib

            command: click.Command = getattr(importlib.import_module(LAZY[name]), name.replace("-", "_"))
            return command
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SyncqError as exc:
            raise click.ClickException(str(exc)) from exc
        except BrokenPipeError:
            # `syncq log | head`: the reader left; say nothing.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)


def _home(ctx: click.Context) -> Path:
    from syncq.keys import resolve_home

    return resolve_home(ctx.obj.get("home"), os.environ)


def _open(ctx: click.Context) -> Any:
    from syncq.space import Space

    space = Space.open(_home(ctx))
    ctx.call_on_close(space.close)
    if space.made_private:
        click.echo(
            f"notice: other users could read {space.paths.root}: made it private (folders 0700, files 0600)",
            err=True,
        )
    return space


@click.group(cls=SyncqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="Home directory of the space (default: $SYNCQ_HOME, else the user data dir).",
)
@click.version_option(package_name="syncq")
@click.pass_context
def cli(ctx: click.Context, home: Path | None) -> None:
    """syncq: run AI prompts across all of your devices, end-to-end encrypted.

    \b
    Example:
      syncq init --name laptop
      syncq add "Why is the sky blue?" -m smollm2-135m
      syncq log
    """
    ctx.ensure_object(dict)
    ctx.obj["home"] = home


@cli.command()
@click.option("--name", help="A name for this device (default: the host name).")
@click.option("--if-missing", is_flag=True, help="Do nothing if the home holds a space already.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def init(ctx: click.Context, name: str | None, if_missing: bool, as_json: bool) -> None:
    """Create a new space and this device's identity in the home.

    \b
    Example:
      syncq init --name laptop
    """
    from syncq.keys import HomePaths
    from syncq.space import Space

    home = _home(ctx)
    if if_missing and HomePaths(home).space_key.exists():
        return
    space = Space.init(home, name=name or socket.gethostname(), device_list=True)
    ctx.call_on_close(space.close)
    from syncq.cli import render

    render.initialised(space, as_json)


@cli.command()
@click.argument("text", required=False)
@click.option("-m", "--model", help="The model to run it on, e.g. smollm2-135m (with --continue: ID's).")
@click.option(
    "-f",
    "--file",
    "files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Attach a file (repeatable).",
)
@click.option("--kind", type=click.Choice(KINDS), help="Kind of model (default: from the model's backend).")
@click.option("--system", metavar="TEXT", help="A system prompt: the conversation's first turn.")
@click.option(
    "--continue",
    "continued",
    metavar="ID",
    help="Go on from a done prompt: its conversation and answer, then TEXT as the next user turn.",
)
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first (-1000..1000).")
@click.option("--max-attempts", type=int, default=3, show_default=True, help="Runs before it fails.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A model parameter (repeatable).")
@click.option("--keep-alive", type=click.FloatRange(min=0), help="Seconds to keep the model loaded after it.")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option("--follow", is_flag=True, help="Print the output as it streams, from whichever node runs it.")
@click.option(
    "--timeout", type=click.FloatRange(min=0), help="With --wait/--follow: give up after this many seconds."
)
@click.option("--json", "as_json", is_flag=True, help="Print the prompt (or, waiting, the result) as JSON.")
@click.pass_context
def add(
    ctx: click.Context,
    text: str | None,
    model: str | None,
    files: tuple[Path, ...],
    kind: str | None,
    system: str | None,
    continued: str | None,
    priority: int,
    max_attempts: int,
    params: tuple[str, ...],
    keep_alive: float | None,
    wait: bool,
    follow: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Queue a prompt (TEXT, or - to read it from stdin) and print its id.

    Works with no node running: the prompt waits in the local store until a device that serves
    the model picks it up. A prompt whose input is its files (speech, an image) needs no TEXT.

    With --system the prompt is a conversation: the system turn, then TEXT. With --continue ID
    it goes on from a done prompt (on whichever device it ran): ID's conversation and answer,
    then TEXT as the next user turn, on ID's model unless -m names another.

    \b
    Example:
      syncq add "Why is the sky blue?" -m smollm2-135m --param max_tokens=64
      syncq add "Why is the sky blue?" -m smollm2-135m --system "Answer in one sentence." --wait
      syncq add "And at sunset?" --continue 01JDX4 --wait
      echo "Summarise this" | syncq add - -m smollm2-135m
      syncq add --file talk.wav -m whisper-tiny.en --wait
    """
    from syncq.records import parse_param

    if text is None and not files:
        raise SyncqUserError("give the prompt's TEXT (or - to read it from stdin), or a --file")
    if text == "-":
        text = sys.stdin.read()
    if (system is not None or continued is not None) and not (text or "").strip():
        raise SyncqUserError("--system and --continue need the TEXT of the user's turn")
    parsed = dict(parse_param(p) for p in params)
    if keep_alive is not None:
        parsed["keep_alive"] = keep_alive
    if model is None and continued is None:
        raise click.UsageError("give the model to run it on with -m (e.g. -m smollm2-135m), or --continue ID")
    space = _open(ctx)
    from syncq.cli.chat import conversation

    llm, model_before = conversation(space, text or "", system=system, continued=continued)
    model = model or model_before or ""  # one of the two, checked above
    _refuse_knobs(space, model, parsed)
    from syncq.cli import progress

    if files:
        from syncq.cli.mesh import apply_blob_limit

        apply_blob_limit(space)
    attached = [progress.attach(space, path, quiet=as_json) for path in files]
    prompt = space.add(
        text or "",
        model=model,
        kind=kind,
        params=parsed,
        priority=priority,
        max_attempts=max_attempts,
        files=attached,
        llm=llm,
    )
    try:
        _after_add(space, prompt, model, wait=wait, follow=follow, timeout=timeout, as_json=as_json)
    except KeyboardInterrupt:
        # Stored already: it runs whether or not anyone waits for it.
        click.echo(
            f"\nthe prompt {prompt.id} goes on without this wait: `syncq show {prompt.id}` "
            f"tells how it went, `syncq cancel {prompt.id}` stops it",
            err=True,
        )
        raise click.Abort() from None


def _refuse_knobs(space: Any, model: str, params: dict[str, Any]) -> None:
    """Refuse echo's test knobs outside the test suite and on other models."""
    from syncq.records import TEST_KNOBS

    if not TEST_KNOBS & params.keys():
        return  # the usual add: no executor module to import, no mesh to read
    from syncq.executors.echo import knob_problem, knobs_enabled

    backend = (space.mesh_models() or {}).get(model)
    problem = knob_problem(model, backend, params, knobs_enabled(os.environ))
    if problem is not None:
        raise SyncqUserError(problem)


def _after_add(
    space: Any, prompt: Any, model: str, *, wait: bool, follow: bool, timeout: float | None, as_json: bool
) -> None:
    """What `syncq add` prints once the prompt is stored: its id, or (waiting) its result."""
    unserved = _unserved(space, model)
    if unserved and not (wait or follow):
        click.echo(f"warning: {unserved}; queued anyway", err=True)
    if wait or follow:
        from syncq.cli import follow as following

        if unserved:
            click.echo(f"waiting: {unserved}; Ctrl-C stops waiting and leaves the prompt queued", err=True)
        following.result(space, prompt.id, stream=follow, timeout=timeout, as_json=as_json)
    elif as_json:
        import json

        queued = {"id": prompt.id, "model": prompt.model, "kind": prompt.kind, "status": "queued"}
        click.echo(json.dumps(queued | {"files": [f.to_wire() for f in prompt.files]}))
    else:
        click.echo(prompt.id)


def _served(space: Any) -> set[str] | None:
    found = space.mesh_models()
    return set(found) if found is not None else None


def _unserved(space: Any, model: str) -> str:
    """What to say of a model no node of the space has advertised ("" if one has, or if no node
    ran here to know): queueing for it is right for offline use, but the user may have mistyped."""
    served = space.mesh_models()
    if served is None or model in served:
        return ""
    import difflib

    said = f"no node of this space has advertised model {model!r} yet"
    near = difflib.get_close_matches(model, served, n=3, cutoff=0.5)
    near += [name for name in sorted(served) if name.startswith(model) and name not in near]
    if near:
        return f"{said} (did you mean {' or '.join(near[:3])}?)"
    return f"{said} (served: {', '.join(sorted(served)) or 'none'})"


@cli.command(name="log")
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many prompts (0: all).",
)
@click.option("--status", type=click.Choice(STATUSES), help="Only prompts with this status.")
@click.option("--model", help="Only prompts for this model.")
@click.option("--since", metavar="ID", help="Only prompts added after this id (or prefix).")
@click.option(
    "--grep",
    metavar="TEXT",
    help="Only prompts whose text, conversation, answer or error contains TEXT (ignoring case; "
    "a plain substring, not a pattern).",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new prompts and status changes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def log_(
    ctx: click.Context,
    limit: int,
    status: str | None,
    model: str | None,
    since: str | None,
    grep: str | None,
    follow: bool,
    as_json: bool,
) -> None:
    """List prompts with their status, newest last (like a chat).

    --grep searches the decrypted log in memory: nothing is written to disk. -n counts the
    prompts that match, newest first.

    \b
    Example:
      syncq log -n 50 --status done
      syncq log --grep "sky blue" -n 0
      syncq log --json | jq .status
    """
    from syncq.cli import render

    space = _open(ctx)
    entries = space.entries(limit=limit or None, status=status, model=model, since=since, grep=grep)
    filtered = any(f is not None for f in (status, model, since, grep))
    render.log(entries, as_json, _served(space), filtered=filtered)
    if follow:
        from syncq.cli import follow as following

        following.log(space, entries, status=status, model=model, grep=grep, as_json=as_json)


@cli.command()
@click.argument("prompt_id", metavar="ID")
@click.option(
    "--save",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also save every attachment (the prompt's and the result's) into this folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def show(ctx: click.Context, prompt_id: str, save: Path | None, as_json: bool) -> None:
    """Show one prompt: its input, status, claims, every run and their files.

    ID may be any unique prefix of the id.

    \b
    Example:
      syncq show 01JDX4
      syncq show 01JDX4 --save ./talk
    """
    from syncq.cli import render

    space = _open(ctx)
    entry = space.show(prompt_id)
    render.show(entry, as_json, _served(space))
    if save is not None:
        from syncq.cli import progress

        refs = [*entry.prompt.files, *(entry.result.files if entry.result else ())]
        progress.save(space, refs, save, timeout=None, quiet=as_json, force=False)


@cli.command()
@click.argument("prompt_id", metavar="ID")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The folder to save the files into.",
)
@click.option(
    "--input", "inputs", is_flag=True, help="Save the prompt's attachments instead of the result's."
)
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
@click.option("--timeout", type=click.FloatRange(min=0), help="Give up fetching after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per saved file.")
@click.pass_context
def get(
    ctx: click.Context,
    prompt_id: str,
    output: Path,
    inputs: bool,
    force: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Save a prompt's result files (images, transcripts) into a folder.

    Files not on this device yet are fetched from the peers by the node running in this home,
    with progress shown. Prints each saved file's path.

    \b
    Example:
      syncq get 01JDX4 -o ./out
    """
    from syncq.cli import progress, render

    space = _open(ctx)
    entry = space.show(prompt_id)
    if inputs:
        refs = list(entry.prompt.files)
    elif entry.result is None or entry.status.value != "done":
        raise SyncqUserError(f"prompt {entry.prompt.id} is {entry.status.value}: it has no result files yet")
    else:
        refs = list(entry.result.files)
    if not refs:
        raise SyncqUserError(f"prompt {entry.prompt.id} has no {'input' if inputs else 'result'} files")
    render.saved(progress.save(space, refs, output, timeout=timeout, quiet=as_json, force=force), as_json)


@cli.command()
@click.argument("prompt_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def cancel(ctx: click.Context, prompt_id: str, as_json: bool) -> None:
    """Cancel a queued or running prompt (ID or a unique prefix).

    \b
    Example:
      syncq cancel 01JDX4
    """
    from syncq.cli import render

    render.changed(_open(ctx).cancel(prompt_id), as_json)


@cli.command()
@click.argument("prompt_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def retry(ctx: click.Context, prompt_id: str, as_json: bool) -> None:
    """Queue a failed prompt again (ID or a unique prefix), for another round of attempts.

    \b
    Example:
      syncq retry 01JDX4
    """
    from syncq.cli import render

    render.changed(_open(ctx).retry(prompt_id), as_json)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object summing up what was written.")
@click.pass_context
def export(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Write the decrypted history into FILE, a plain SQLite database to browse and search.

    Tables prompts, runs and files (attachments' names, sizes and digests), with full-text
    search on prompts and answers, for Datasette or sqlite-utils. FILE holds your prompts and
    answers unencrypted: it is created readable by you alone (0600). Run it again to bring FILE
    up to date: only prompts new or changed since are written.

    \b
    Example:
      syncq export history.db
      sqlite-utils search history.db prompts "sky blue"
      datasette history.db
    """
    from syncq.cli import progress, render

    from syncq.export import export as export_history

    space = _open(ctx)
    warned = False

    def moved(done: int, total: int) -> None:
        nonlocal warned
        if not warned:  # the first call: FILE passed its checks, nothing is written yet
            warned = True
            click.echo(
                f"warning: {file} holds this space's prompts and answers in plaintext, unencrypted "
                "(readable by you alone, 0600): keep it private, delete it when done",
                err=True,
            )
        if bar is not None:
            bar(done, total)

    with progress.counter("exporting prompts", quiet=as_json) as bar:
        summary = export_history(space, file, progress=moved)
    render.exported(summary, as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List every model of the mesh and the nodes that serve it (warm or cold).

    \b
    Example:
      syncq models
    """
    from syncq.cli import render

    render.models(_open(ctx).log.nodes(), as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show this device, its space, prompt counts per status and the store's size.

    \b
    Example:
      syncq status --json
    """
    from syncq.cli import render

    render.status(_open(ctx).status(), as_json)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="syncq")
