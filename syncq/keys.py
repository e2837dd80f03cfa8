"""The home directory and the key files in it.

Layout of ``$SYNCQ_HOME`` (default: the platformdirs user data dir, e.g. ``~/.local/share/syncq``)::

    identity.key   this device's Ed25519 + X25519 seeds and name   mode 0600
    space.key      the space id and its secret per key epoch       mode 0600
    syncq.db       the SQLite store (envelopes, checkpoint)        ciphertext only
    api.key        the local HTTP API's key (``load_api_key``)     mode 0600

Key files are written atomically (temporary file created with mode 0600, fsync, rename) and
refused on read when other users could read or write them: a leaked space secret exposes every
prompt ever written.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.errors import HomeError, InsecureKeyFile, NotInitialized
from syncq.ids import SpaceId

HOME_ENV = "SYNCQ_HOME"
_DEVICE_FORMAT = "syncq-device-v1"
_SPACE_FORMAT = "syncq-space-v1"


def resolve_home(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """The home: ``--home`` > ``$SYNCQ_HOME`` > the platformdirs user data dir."""
    if explicit:
        return Path(explicit).expanduser()
    if environ.get(HOME_ENV):
        return Path(environ[HOME_ENV]).expanduser()
    import platformdirs  # imported here: it costs ~30 ms and most calls name a home

    return Path(platformdirs.user_data_dir("syncq", appauthor=False))


@dataclass(frozen=True, slots=True)
class HomePaths:
    """Where each file of a home lives."""

    root: Path

    @property
    def identity(self) -> Path:
        """This device's key file."""
        return self.root / "identity.key"

    @property
    def space_key(self) -> Path:
        """The space's key file."""
        return self.root / "space.key"

    @property
    def database(self) -> Path:
        """The SQLite store."""
        return self.root / "syncq.db"

    @property
    def blobs(self) -> Path:
        """The attachments' database (``syncq.blobstore``)."""
        return self.root / "blobs.db"

    @property
    def api_key(self) -> Path:
        """The local HTTP API's key (``load_api_key``)."""
        return self.root / "api.key"

    @property
    def node_lock(self) -> Path:
        """Held by the node running in this home (``node.lock``)."""
        return self.root / "node.lock"

    def check_initialized(self) -> None:
        """Raise ``HomeError`` or ``NotInitialized`` unless the home holds a space."""
        if self.root.exists() and not self.root.is_dir():
            raise HomeError(f"the home {self.root} is not a directory")
        if not self.space_key.exists():
            raise NotInitialized(
                f"no space in {self.root}: run `syncq init` first (or pass --home / set {HOME_ENV})"
            )
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise HomeError(f"the home {self.root} is not readable by this user")

    def create(self) -> None:
        """Create the home directory (mode 0700). Raises ``HomeError``."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise HomeError(f"cannot create the home {self.root}: {exc.strerror}") from exc
        if not self.root.is_dir():
            raise HomeError(f"the home {self.root} is not a directory")


def make_home_private(paths: HomePaths) -> list[Path]:
    """Make the home 0700, and each folder directly in it 0700 and each file 0600 (the
    database, its WAL, config.toml, the portal and work folders ...), where they were looser;
    returns what was changed. Everything below them is made private by whoever writes it (the
    node runs with umask 077), and the home's own 0700 already keeps other users out of all of
    it. Symbolic links are left alone; key files are not loosened or fixed here: one that others
    could read is refused (``read_secret``), as its secret may have leaked. Raises
    ``HomeError``."""
    changed: list[Path] = []
    try:
        entries = [paths.root, *paths.root.iterdir()]
    except OSError as exc:
        raise HomeError(f"cannot read the home {paths.root}: {exc.strerror}") from exc
    for path in entries:
        if path in (paths.identity, paths.space_key):
            continue
        try:
            if _make_private(path):
                changed.append(path)
        except FileNotFoundError:  # gone meanwhile (a WAL checkpointed away): nothing to protect
            continue
        except OSError as exc:
            raise HomeError(f"cannot make {path} private: {exc.strerror}") from exc
    return changed


def make_tree_private(root: Path) -> int:
    """Every folder under ``root`` 0700 and every file 0600 where they were looser (what an
    older syncq, or a client with umask 022, left); links are not followed. Returns how many
    were changed. The node runs it once as it starts; it skips what it cannot change."""
    changed = 0
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            try:
                changed += _make_private(Path(folder, name))
            except OSError:
                continue  # gone meanwhile, or not ours: the home's own 0700 still guards it
    return changed


def _make_private(path: Path) -> bool:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_IMODE(st.st_mode) & 0o077:
        return False
    wanted = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
    os.chmod(path, stat.S_IMODE(st.st_mode) & wanted)
    return True


def save_device(paths: HomePaths, keys: DeviceKeys, name: str) -> None:
    """Write this device's identity."""
    doc = {
        "format": _DEVICE_FORMAT,
        "name": name,
        "ed25519_seed": _b64(keys.signing_seed),
        "x25519_seed": _b64(keys.exchange_seed),
    }
    write_secret(paths.identity, json.dumps(doc, indent=2).encode())


def load_device(paths: HomePaths) -> tuple[DeviceKeys, str]:
    """Read this device's identity and name. Raises ``InsecureKeyFile`` or ``HomeError``."""
    doc = _read_json(paths.identity, _DEVICE_FORMAT)
    try:
        keys = DeviceKeys(signing_seed=_unb64(doc["ed25519_seed"]), exchange_seed=_unb64(doc["x25519_seed"]))
        return keys, str(doc["name"])
    except (KeyError, ValueError, TypeError) as exc:
        raise HomeError(f"{paths.identity} is damaged: {exc}") from exc


def save_space(paths: HomePaths, keys: SpaceKeys) -> None:
    """Write the space's secrets."""
    doc = {
        "format": _SPACE_FORMAT,
        "space_id": keys.space_id,
        "role": "relay" if keys.is_relay else "member",
        "secrets": {str(epoch): _b64(secret) for epoch, secret in sorted(keys.secrets.items())},
        "relay_auth": {str(epoch): _b64(key) for epoch, key in sorted(keys.relay_auth.items())},
        "generations": {str(epoch): gen for epoch, gen in sorted(keys.generations.items())},
    }
    write_secret(paths.space_key, json.dumps(doc, indent=2).encode())


def load_space(paths: HomePaths) -> SpaceKeys:
    """Read the space's secrets. Raises ``InsecureKeyFile`` or ``HomeError``."""
    doc = _read_json(paths.space_key, _SPACE_FORMAT)
    try:
        secrets = {int(epoch): _unb64(secret) for epoch, secret in doc["secrets"].items()}
        relay = {int(epoch): _unb64(key) for epoch, key in doc.get("relay_auth", {}).items()}
        generations = {int(epoch): int(gen) for epoch, gen in doc.get("generations", {}).items()}
        keys = SpaceKeys(
            space_id=SpaceId(str(doc["space_id"])),
            secrets=secrets,
            relay_auth=relay,
            generations=generations,
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise HomeError(f"{paths.space_key} is damaged: {exc}") from exc
    if not (secrets or relay) or any(len(s) != 32 for s in [*secrets.values(), *relay.values()]):
        raise HomeError(f"{paths.space_key} is damaged: bad secrets")
    return keys


def api_key(home: str | os.PathLike[str] | None = None) -> str:
    """The key of the HTTP API of the home (``home`` > ``$SYNCQ_HOME`` > the default), for a
    client of it: ``OpenAI(base_url=..., api_key=syncq.api_key())``. Raises as ``load_api_key``."""
    return load_api_key(HomePaths(resolve_home(home, os.environ)))


def load_api_key(paths: HomePaths) -> str:
    """The home's HTTP API key, made (random, 256 bits, mode 0600) the first time it is asked
    for. Clients send it as ``Authorization: Bearer KEY``. Raises ``InsecureKeyFile``,
    ``NotInitialized`` or ``HomeError``."""
    paths.check_initialized()
    if not paths.api_key.exists():
        import secrets  # here: only the node and `syncq api-key` need it

        made = "sk-syncq-" + secrets.token_urlsafe(32)
        tmp = paths.api_key.with_name(f"api.key.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(made + "\n")
                f.flush()
                os.fsync(f.fileno())
            # link, not rename: of two processes making it at once, the first one's key stays
            # and nobody ever reads a half-written file.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, paths.api_key)
        except OSError as exc:
            raise HomeError(f"cannot write {paths.api_key}: {exc.strerror}") from exc
        finally:
            tmp.unlink(missing_ok=True)
    key = read_secret(paths.api_key).decode("utf-8", "replace").strip()
    if len(key) < 16:
        raise HomeError(f"{paths.api_key} is damaged (too short): remove it and a new key is made")
    return key


def write_secret(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, atomically. Raises ``HomeError``.

    The temporary file is this writer's own (``mkstemp``, 0600): a node and a command of one home
    may both save space.key at once (each learns a rotation), and with one shared name each
    would move or delete the other's."""
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise HomeError(f"cannot write {path}: {exc.strerror}") from exc


def read_secret(path: Path) -> bytes:
    """Read a key file, refusing one that other users can read or write.

    Raises ``InsecureKeyFile`` or ``HomeError``.
    """
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise NotInitialized(f"{path} is missing: run `syncq init` first") from exc
    except OSError as exc:
        raise HomeError(f"cannot read {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureKeyFile(
            f"{path} can be read by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"it holds secret keys. Fix it with: chmod 600 {path}"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HomeError(f"cannot read {path}: {exc.strerror}") from exc


def _read_json(path: Path, expected_format: str) -> dict[str, Any]:
    try:
        doc = json.loads(read_secret(path))
    except ValueError as exc:
        raise HomeError(f"{path} is damaged (not JSON)") from exc
    if not isinstance(doc, dict) or doc.get("format") != expected_format:
        raise HomeError(f"{path} is not a {expected_format} file")
    return doc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected base64 text")
    return base64.b64decode(text, validate=True)


# What a new home holds once built; ``discard_home`` removes these and nothing else.
_HOME_FILES = (
    "identity.key",
    "identity.key.tmp",
    "space.key",
    "space.key.tmp",
    "syncq.db",
    "syncq.db-wal",
    "syncq.db-shm",
    "syncq.db-journal",
)


def discard_home(paths: HomePaths, *, remove_root: bool) -> None:
    """Remove what building a home wrote, after the build failed: so that a failed `syncq init`
    or `syncq join` leaves no half-built home behind (which would refuse the next attempt, or
    look initialised without its device list). Files the home held before (a config.toml) are
    kept; the folder goes only if the build created it and it is empty. Never raises."""
    for name in _HOME_FILES:
        with contextlib.suppress(OSError):  # a directory by that name: not ours to remove
            (paths.root / name).unlink(missing_ok=True)
    if remove_root:
        with contextlib.suppress(OSError):  # not empty (something else is in it)
            paths.root.rmdir()
