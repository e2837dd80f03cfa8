"""`syncq node`: a websocket server, outgoing connections to every known peer, and gossip.

The node is a thin asyncio shell around the library: ``Space`` stores and verifies envelopes,
``SyncSession`` speaks the protocol, and this module moves bytes and runs timers:

- a server (default 0.0.0.0:7330) and a dialler per known peer that reconnects with
  exponential backoff and jitter (0.5 s doubling to 60 s);
- a watcher that wakes on writes to the home (inotify) and checks SQLite's ``data_version``, so
  envelopes written by other processes (`syncq add` while the node runs) are forwarded within
  a few ms, and peers added with `syncq peers add` are dialled;
- presence (``nodes[id]``, at most once a minute) and a heartbeat in the store's metadata that
  `syncq status` reads to say whether a node runs;
- the file portals (``portal``): request folders in, result folders out.

All library calls run on the event-loop thread: each is a short SQLite transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import InvalidHandshake, InvalidURI

from syncq import __version__
from syncq.errors import StoreError, SyncqError, UserError
from syncq.keys import make_tree_private
from syncq.protocol import MAX_HANDSHAKE_FRAME, CloseCode, Role
from syncq.records import ModelAd, NodeInfo
from syncq.space import Space, wall_clock_ms
from syncq.store import Peer, SqliteStore, no_hook
from syncq.viewstore import NODE_FLUSH_S
from syncq.watch import RECHECK_S, FolderWatch, wait_event

from .connection import Connection
from .logs import NodeLog
from .portal import Portal
from .supervise import Supervisor, TaskHealth
from .transfers import Transfers

if TYPE_CHECKING:
    from syncq.client import AsyncClient

    from .api_auth import ApiSettings
    from .discovery import Discovery
    from .scheduler import Scheduler

WATCH_INTERVAL_S = 0.005  # without inotify: how often to look for other processes' writes
WATCH_SAFETY_S = 1.0  # with inotify: a look this often even without a reported write
HEARTBEAT_S = 5.0
VIEW_MOST = 64  # prompts written into the local view per flush: ~10 ms of the loop
VIEW_BUSY_S = 0.025  # of every NODE_FLUSH_S, at most this long spent writing the view
PRESENCE_S = 60.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 60.0
PING_S = 20.0
RELAY_BLOB_DAYS = 30.0  # a relay forgets a kept file nobody stored or read for this long
SNAPSHOT_EVERY = 500  # envelopes applied between snapshots (at least; syncq.replica.snapshot_due)
SNAPSHOT_CHECK_S = 2.0  # how often the node asks whether one is due
PRUNE_DAYS = 30.0  # envelopes a snapshot covers stay this long (and while a recent peer lacks them)
FORGET_EVERY_S = 6 * 3600.0
DEVICES_EVERY_S = 0.2  # how often, at most, the node acts on a changed device list
MAX_HANDSHAKING = 32  # inbound connections not yet past AUTH; past it the oldest is closed (4429)


class Node:
    """The running node of one home."""

    def __init__(
        self,
        space: Space,
        *,
        host: str,
        port: int,
        log: NodeLog,
        discovery: bool,
        discovery_interfaces: list[str] | None = None,
        scheduler: Callable[[Node], Scheduler] | None = None,
        portals: Sequence[Path] = (),
        api: tuple[str, int] | None = None,
        api_settings: ApiSettings | None = None,
        relay_blob_days: float = RELAY_BLOB_DAYS,
        snapshot_every: int = SNAPSHOT_EVERY,
        prune_days: float = PRUNE_DAYS,
    ) -> None:
        self.space = space
        self.relay_blob_days = relay_blob_days  # 0: keep every file forever
        self.snapshot_every = snapshot_every  # 0: never write one
        self.prune_days = prune_days  # 0: keep every envelope
        self.host = host
        self.port = port
        self.log = log
        self.discovery = discovery
        self.discovery_interfaces = discovery_interfaces
        self.connections: dict[str, Connection] = {}  # by peer id, once authenticated
        # Inbound connections in the order they came, to cap those still in their handshake.
        self._inbound_conns: dict[Connection, None] = {}
        self._dialers: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self.url = ""
        self.scheduler = scheduler(self) if scheduler is not None and not space.is_relay else None
        self.portals = [] if space.is_relay else [Portal(self, root) for root in portals]
        self.api = None if space.is_relay else api
        self.api_settings = api_settings  # None: the API's defaults, the home's key
        self._advertised: tuple[object, ...] | None = None
        self._served: list[str] | None = None  # the model names last logged
        self.transfers = Transfers(self)
        self._discovery: Discovery | None = None
        self._devices_at = 0.0  # when the device list was last acted on (loop time)
        self._devices_later: asyncio.TimerHandle | None = None
        self.supervisor = Supervisor(log, self._report_tasks, wall_clock_ms)
        self._api_client: AsyncClient | None = None  # the API's, told of every change
        self._changed_soon: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # while ``run`` runs

    def spawn(self, work: Coroutine[object, object, None]) -> None:
        """Run ``work`` in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(self.supervisor.ended)  # one that raised is logged, not lost

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until ``stop()``; then close every connection and return."""
        # Everything the node writes (work/ files, decrypted attachments, portal results, its
        # workers' outputs) is this user's only: the home's folders 0700, its files 0600.
        os.umask(0o077)
        self._loop = asyncio.get_running_loop()
        store = self.space.store
        if isinstance(store, SqliteStore):
            store.committed = self._wrote
        server = await serve(
            self._inbound,
            self.host,
            self.port,
            max_size=MAX_HANDSHAKE_FRAME,  # raised per connection once the peer's AUTH verifies
            compression=None,  # ciphertext does not compress; deflate cost 7x throughput
            ping_interval=PING_S,
            ping_timeout=PING_S,
        )
        self.port = _bound_port(server)
        self.url = f"ws://{self.host}:{self.port}"
        self.space.store.set_meta("node.listen", self.url)
        self.log.event("listening", url=self.url, node=self.space.device_id, name=self.space.name)
        if self.space.is_relay and self.space.replica.root is None:
            reason = "its relay code predates device lists: it stores what any holder of a relay code sends"
            self.log.event("relay-unrooted", level="warning", reason=reason)
        tasks = self._start_tasks()
        self._dial_known()
        try:
            await self._stop.wait()
        finally:
            for task in [*tasks, *self._dialers.values()]:
                task.cancel()
            server.close()
            await server.wait_closed()
            self.transfers.close()
            self.space.store.set_meta("node.heartbeat", "0")
            if isinstance(store, SqliteStore):
                store.committed = no_hook  # a write after this run wakes nothing
            self._loop = None
            self.log.event("stopped")

    def stop(self) -> None:
        """Ask ``run`` to finish (signal handlers call this)."""
        self._stop.set()

    def _start_tasks(self) -> list[asyncio.Task[None]]:
        """The node's long-running tasks, each supervised (``node/supervise.py``): one that
        crashes is logged and started again, and `syncq status` shows it."""
        self.space.store.set_meta("node.tasks", "{}")  # this run's counts only
        self.spawn(self._make_home_private())
        keep = self.supervisor.start
        tasks = [keep("watch", self._watch), keep("heartbeat", self._heartbeat)]
        if self.prune_days > 0:
            tasks.append(keep("prune", self._prune))
        if not self.space.is_relay:
            tasks.append(keep("presence", self._presence))
            tasks.append(keep("view", self._keep_view))
            if self.snapshot_every > 0:
                tasks.append(keep("snapshots", self._keep_snapshots))
        elif self.relay_blob_days > 0:
            tasks.append(keep("forget", self._forget_old_blobs))
        if self.scheduler is not None:
            tasks.append(keep("scheduler", self.scheduler.run))
        for i, portal in enumerate(self.portals):
            tasks.append(keep("portal" if i == 0 else f"portal {portal.root}", portal.run))
        if self.api is not None:
            host, port = self.api
            tasks.append(keep("api", lambda: self._serve_api(host, port)))
        if self.discovery:
            from .discovery import Discovery

            self._discovery = Discovery(self, self.discovery_interfaces)
            tasks.append(keep("discovery", self._discovery.run))
        return tasks

    async def _make_home_private(self) -> None:
        """Once, as the node starts: what earlier runs or clients left readable by others in the
        home is made private (folders 0700, files 0600), off the loop (a walk of the home)."""
        changed = await asyncio.to_thread(make_tree_private, self.space.paths.root)
        if changed:
            self.log.event("home-private", count=changed, home=str(self.space.paths.root))

    def _report_tasks(self, health: dict[str, TaskHealth]) -> None:
        """Tell `syncq status` which tasks crashed and were restarted (``node.tasks``)."""
        text = json.dumps({name: dataclasses.asdict(h) for name, h in health.items()})
        self.space.store.set_meta("node.tasks", text)

    async def _serve_api(self, host: str, port: int) -> None:
        from syncq.client import AsyncClient

        from .api import bind, serve_api
        from .api_auth import api_settings

        try:
            sock = bind(host, port)
        except UserError as exc:  # another node of this machine has it: sync and run anyway
            self.log.event("api-unavailable", level="error", reason=str(exc))
            return
        bound = sock.getsockname()
        settings = self.api_settings or api_settings(self.space.paths.root, {})
        if settings.key is None:
            self.log.event("api-without-key", level="warning", reason='api_key = "" in config.toml')
        self.log.event("api-listening", url=f"http://{host}:{bound[1]}")
        self.space.store.set_meta("node.api", f"http://{host}:{bound[1]}")  # for `syncq web`

        def report(exc: BaseException) -> None:
            self.log.event("api-error", level="error", error=f"{type(exc).__name__}: {exc}"[:500])

        # The API works on the node's own Space: a request's prompt is in the Doc the scheduler
        # reads the moment it is stored, and its answer in the Doc the API reads (issue 15: with
        # a Space of its own, every envelope of an echo chat was read back and decrypted by the
        # other Doc as well). Its writes reach the node through the store's commit hook
        # (``_wrote``), and the node tells it of every change (``announce``).
        async with AsyncClient(self.space, announced=True, borrowed=True) as client:
            self._api_client = client
            if self.scheduler is not None:  # a request whose answer is its acknowledgement
                client.run_at_once = self.scheduler.run_at_once
            try:
                await serve_api(client, sock, settings, listen=(host, bound[1]), report=report)
            finally:
                self._api_client = None

    # -- peers -----------------------------------------------------------------------------

    def add_peer(self, url: str, source: str) -> None:
        """Dial ``url`` from now on (and remember it)."""
        known = {p.url for p in self.space.store.peers()}
        if url not in known:
            self.space.store.save_peer(Peer(url=url, source=source))
        self._dial(url)

    def _dial_known(self) -> None:
        for peer in self.space.store.peers():
            if not peer.url.startswith("inbound:"):
                self._dial(peer.url)

    def _dial(self, url: str) -> None:
        if url not in self._dialers and url != self.url:
            self._dialers[url] = asyncio.create_task(self._dialer(url))

    async def _dialer(self, url: str) -> None:
        delay = BACKOFF_FIRST_S
        while True:
            try:
                if await self._dial_once(url):
                    delay = BACKOFF_FIRST_S  # it worked: retry soon after a drop
            except Exception as exc:  # a dialler must never die: log what broke and redial
                self.log.event("dial-failed", level="warning", url=url, reason=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _dial_once(self, url: str) -> bool:
        """One connection to ``url``, until it ends; whether the peer was admitted."""
        try:
            async with connect(
                url,
                max_size=MAX_HANDSHAKE_FRAME,  # raised once the peer's AUTH verifies
                compression=None,
                open_timeout=10,
                ping_interval=PING_S,
                ping_timeout=PING_S,
            ) as ws:
                conn = Connection(self, ws, Role.INITIATOR, url)
                await conn.run()
                # A device the peer's list refuses (4410) backs off like one that never got in.
                return conn.session.peer_id is not None and conn.session.close_code != CloseCode.NOT_LISTED
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            self._remember(url, error=str(exc) or type(exc).__name__)
            return False

    async def _inbound(self, ws: ServerConnection) -> None:
        # Strangers cost memory until they prove themselves: only so many at once. Past the
        # cap the *oldest* goes, not the newcomer: a member's handshake takes a round trip, so
        # silent strangers holding the cap cannot lock members out for their 10 s timeout.
        strangers = [c for c in self._inbound_conns if c.session.peer_id is None and c.peering.open]
        if len(strangers) >= MAX_HANDSHAKING:
            oldest = strangers[0]
            oldest.session.fail(CloseCode.BUSY, "too many connections in their handshake")
            self.spawn(oldest.close())
        conn = Connection(self, ws, Role.RESPONDER, None)
        self._inbound_conns[conn] = None
        try:
            await conn.run()
        finally:
            self._inbound_conns.pop(conn, None)

    def connected(self, conn: Connection) -> bool:
        """Register an authenticated connection; False if it duplicates one to the same peer.

        Both ends keep the connection opened by the node with the smaller id, so two nodes
        that dial each other settle on the same one.
        """
        peer = conn.session.peer_id
        assert peer is not None
        existing = self.connections.get(peer)
        if existing is not None:
            mine_first = self.space.device_id < peer
            keep_new = (conn.session.role is Role.INITIATOR) == mine_first
            if not keep_new:
                return False
            existing.session.fail(CloseCode.NORMAL, "duplicate connection")  # not a fault
            self.spawn(existing.close())
        self.connections[peer] = conn
        self._remember(conn.key, node_id=peer, name=conn.peering.peer_name, connected=True)
        return True  # "peer-connected" is logged once the peer's HAVE came (``Connection.run``)

    def disconnected(self, conn: Connection) -> None:
        """Forget a connection that ended."""
        peer = conn.session.peer_id
        registered = peer is not None and self.connections.get(peer) is conn
        if not registered and conn.url and conn.error:  # refused: `syncq peers` says why
            self._remember(conn.url, error=conn.error)
        if registered:
            assert peer is not None
            del self.connections[peer]
            refused = {"error": conn.error} if conn.error else {}  # a 4410 after it was admitted
            self._remember(conn.key, node_id=peer, name=conn.peering.peer_name, connected=False, **refused)
            self.transfers.disconnected(conn)
            self.log.event("peer-disconnected", peer=conn.label, reason=conn.session.close_reason or "closed")

    def _remember(self, key: str, **fields: Any) -> None:
        """Update what the peers table says about a peer (`syncq peers` reads it)."""
        old = next((p for p in self.space.store.peers() if p.url == key), None)
        base = old or Peer(url=key, source="inbound" if key.startswith("inbound:") else "config")
        peer = dataclasses.replace(base, **{"error": None, **fields})  # a fresh event clears old errors
        if peer.connected or "connected" in fields:
            peer = dataclasses.replace(peer, last_seen=wall_clock_ms())
        try:
            self.space.store.save_peer(peer)
        except StoreError as exc:
            self.log.event("store-failed", level="error", reason=str(exc))

    # -- envelopes ---------------------------------------------------------------------------

    def stored(self, source: Connection, added: int) -> None:
        """New envelopes arrived from ``source``: offer them to every other peer (gossip)."""
        self._wake_all(c for c in self.connections.values() if c is not source)
        if self.space.is_relay:
            self.transfers.envelopes_stored()  # a device list may list a peer that asked to keep
        self.log_changed()
        self.log.event("received", peer=source.label, envelopes=added, level="debug")

    def changed(self) -> None:
        """This node wrote to the log (the scheduler, a portal, the API): offer the new
        envelopes to every peer, and let the scheduler, the portals and the API look. Once per
        turn of the loop for all the writes of that turn."""
        if self._changed_soon is None and self._loop is not None:
            self._changed_soon = self._loop.call_soon(self._changed_now)

    def _changed_now(self) -> None:
        self._changed_soon = None
        self._wake_all(self.connections.values())
        self._look_here()  # the scheduler, for a prompt the API or a portal added

    def _wrote(self) -> None:
        """The store's commit hook: own envelopes were stored (by the scheduler, a portal or
        the HTTP API, all on this loop: the store's connection is its thread's alone)."""
        self.changed()

    def log_changed(self) -> None:
        """Envelopes from elsewhere (a peer, another process) reached the log: act on the
        device list (soon), look for work."""
        self._devices_soon()
        self._look_here()

    def _look_here(self) -> None:
        """Let this node's scheduler, portals and API look at the log again."""
        if self.scheduler is not None:
            self.scheduler.wake()
        for portal in self.portals:
            portal.wake()
        if self._api_client is not None:
            self._api_client.announce()

    def live(self, prompt_id: str, attempt: int, chunks: Sequence[str]) -> None:
        """Output of a job running here, as it comes (every chunk of the run so far): this
        node's HTTP API streams it to its clients at once, not when the scheduler next writes
        the stream into the log."""
        if self._api_client is not None:
            self._api_client.live(prompt_id, attempt, chunks)

    def _devices_soon(self) -> None:
        # At most every DEVICES_EVERY_S, with a trailing call: a bulk sync stores a batch every
        # few milliseconds, and each look resolves the device list; a removal waits 0.2 s at most.
        if self._devices_later is not None:
            return
        loop = asyncio.get_running_loop()
        wait = max(0.0, self._devices_at + DEVICES_EVERY_S - loop.time())
        self._devices_later = loop.call_later(wait, self._devices_now)

    def _devices_now(self) -> None:
        self._devices_later = None
        self._devices_at = asyncio.get_running_loop().time()
        try:
            self.devices_changed()
        except SyncqError as exc:  # a store that cannot be read or written now: said, tried again later
            self.log.event("devices-failed", level="error", reason=str(exc))

    def devices_changed(self) -> None:
        """The device list may have changed: take keys another process of this home rotated to,
        close every session with a peer the list now refuses (4410), rotate the keys if a
        removal taints the newest epoch, and re-advertise pending invites."""
        if self.space.keys_changed():
            self.log.event("keys-changed", epoch=self.space.keys.epoch)
        for conn in list(self.connections.values()):
            peer = conn.session.peer_id
            refusal = self.space.peer_refusal(bytes.fromhex(peer)) if peer is not None else None
            if refusal is not None and conn.peering.open:
                conn.peering.refuse(refusal)
                self.spawn(conn.close())
        if not self.space.is_relay and self.space.rotate_if_needed():
            self.log.event("keys-rotated", epoch=self.space.keys.epoch)
            self.changed()  # the keys envelope goes to every peer still admitted
            if self.snapshot_every > 0:
                self.write_snapshot()  # under the new epoch, holding nothing voided by the removal
        self.invites_changed()

    def invites_changed(self) -> None:
        """Invites may have been made, used or revoked: LAN discovery re-advertises."""
        if self._discovery is not None:
            self._discovery.invites_changed()

    def progress(self, conn: Connection) -> None:
        """Record how far behind the peer is (shown by `syncq peers`)."""
        self._remember(
            conn.key,
            node_id=conn.session.peer_id,
            name=conn.peering.peer_name,
            connected=True,
            behind=conn.peering.behind(),
        )

    def _wake_all(self, conns: Iterable[Connection]) -> None:
        for conn in conns:
            conn.wake.set()

    # -- timers ----------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Notice other processes' commits (`syncq add`, the Python API, `syncq peers add`).

        It sleeps until inotify reports a write in the home (``syncq.watch``), then reads
        ``data_version``, again at ``RECHECK_S`` (a commit is visible a moment after its writes)
        until it moves; a look every ``WATCH_SAFETY_S`` covers lost events. An idle node (a
        laptop's) thus does nothing at all; without inotify it polls every ``WATCH_INTERVAL_S``.
        """
        store, blobs = self.space.store, self.space.blobs
        version, blob_version = store.data_version(), blobs.data_version()
        self.transfers.fetch_wanted()
        watch = FolderWatch(self.space.paths.root)
        written = asyncio.Event()
        fd = watch.fileno()
        loop = asyncio.get_running_loop()
        if fd is not None:
            loop.add_reader(fd, watch.reader(written.set))
        try:
            while True:
                await wait_event(written, WATCH_SAFETY_S if fd is not None else WATCH_INTERVAL_S)
                written.clear()
                start = loop.time()
                for delay in (0.0, *RECHECK_S):
                    await asyncio.sleep(max(0.0, start + delay - loop.time()))
                    if blobs.data_version() != blob_version:  # `syncq get` or `add --file`
                        blob_version = blobs.data_version()
                        self.transfers.fetch_wanted()
                        self.transfers.offer_to_relays()
                    now = store.data_version()
                    if now != version:
                        version = now
                        self._wake_all(self.connections.values())
                        self.log_changed()
                        self._dial_known()  # `syncq peers add` from another process
                        break
        finally:
            if fd is not None:
                loop.remove_reader(fd)
            watch.close()

    async def _keep_view(self) -> None:
        """Write what peers changed into the local view (``Replica.flush_view``), so that
        `syncq log` and `status` in another process can read it instead of loading the Doc."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(NODE_FLUSH_S)
            # A long backlog (a rebuild, a snapshot taken) goes in slices of ``VIEW_MOST``, the
            # loop free in between (one flush of 100k rows held it for 10 s), and for at most
            # ``VIEW_BUSY_S`` a turn: flushing without a break slowed a 100k sync from 5 to 19 s.
            until = loop.time() + VIEW_BUSY_S
            while self.space.replica.view_behind() and self.space.replica.flush_view(most=VIEW_MOST):
                if loop.time() >= until:
                    break
                await asyncio.sleep(0)

    async def _prune(self) -> None:
        """Drop envelopes snapshots have covered for ``prune_days`` and every peer seen in that
        time holds (``Replica.prune``): looked at a few times per period, at most hourly."""
        retention_ms = int(self.prune_days * 86_400_000)
        while True:
            await asyncio.sleep(min(3600.0, max(1.0, retention_ms / 4000)))
            # On the loop: the store's connection is its thread's alone. One transaction.
            if not self.space.replica.prunable(retention_ms):
                continue
            self.log.event("pruning", level="debug")
            gone = self.space.replica.prune(retention_ms)
            if gone:
                self.log.event("pruned", envelopes=gone)

    async def _keep_snapshots(self) -> None:
        """Write a snapshot once enough was applied since the last (``Replica.snapshot_due``),
        and offer it to connected relays, which serve it to newcomers."""
        while True:
            await asyncio.sleep(SNAPSHOT_CHECK_S)
            if self.space.replica.snapshot_due(self.snapshot_every):
                self.write_snapshot()

    def write_snapshot(self) -> None:
        """Write a snapshot of the Doc now (on the loop: it reads the Doc the loop writes) and
        offer it to every connected relay that does not hold it."""
        self.log.event("snapshot-writing", level="debug")
        snapshot = self.space.replica.write_snapshot(self.space.device)
        if snapshot is None:
            return
        self.log.event("snapshot-written", envelopes=snapshot.count, bytes=len(snapshot.data))
        for conn in self.connections.values():
            if conn.session.peer_relay and conn.peering.offer_snapshot(snapshot):
                conn.wake.set()

    async def _heartbeat(self) -> None:
        self.space.store.set_meta("node.pid", str(os.getpid()))
        while True:
            self.space.store.set_meta("node.heartbeat", str(wall_clock_ms()))
            self._note_mesh_models()
            await asyncio.sleep(HEARTBEAT_S)

    def _note_mesh_models(self) -> None:
        # `syncq add` warns about a model nobody serves without loading the Doc, and takes the
        # prompt's kind from it: it reads this. A model a node found unusable keeps its backend
        # here (its kind), and a wait for it ends at once (``client.stranded``).
        if self.space.is_relay:
            return
        backends = {m.name: m.backend for n in self.space.log.nodes() for m in n.models}
        text = json.dumps(backends, sort_keys=True)
        if self.space.store.get_meta("mesh.models") != text:
            self.space.store.set_meta("mesh.models", text)

    async def _forget_old_blobs(self) -> None:
        while True:
            before = wall_clock_ms() / 1000 - self.relay_blob_days * 86400
            forgotten = await self.transfers.forget_unused(before)
            if forgotten:
                self.log.event("blobs-forgotten", count=forgotten, days=self.relay_blob_days)
            await asyncio.sleep(FORGET_EVERY_S)

    async def _presence(self) -> None:
        while True:
            self.advertise(force=True)
            await asyncio.sleep(PRESENCE_S)

    def advertise(self, *, force: bool = False) -> None:
        """Write this node's presence (name, models warm or cold); without ``force`` only when
        the models changed, so ``last_seen`` costs one envelope a minute."""
        models = self._models()
        self._log_served(models)
        if not force and models == self._advertised:
            return
        self._advertised = models
        info = NodeInfo(
            id=self.space.device_id,
            name=self.space.name,
            version=__version__,
            last_seen=wall_clock_ms(),
            listen=self.url,
            models=models,
        )
        try:
            self.space.put_node(info)
            self.changed()
            self._note_mesh_models()
        except StoreError as exc:
            self.log.event("store-failed", level="error", reason=str(exc))

    def _log_served(self, models: tuple[ModelAd, ...]) -> None:
        """Say which models this node serves: at start, and when discovery changes the list."""
        names = sorted(m.name for m in models if not m.unusable)
        if names != self._served:
            self._served = names
            self.log.event("serving", models=names)

    def _models(self) -> tuple[ModelAd, ...]:
        if self.scheduler is None:
            return ()
        manager = self.scheduler.manager
        return tuple(
            ModelAd(
                name=s.name,
                backend=s.backend,
                loaded=manager.loaded(s.name),
                size=s.size,
                unusable=manager.unusable.get(s.name, ""),
            )
            for s in manager.specs.values()
        )


def _bound_port(server: Server) -> int:
    for sock in server.sockets:
        return int(sock.getsockname()[1])
    raise RuntimeError("the server has no socket")
