"""The node's side of pinned definitions: the state directory, the pins file, and ``/pins`` on the data port.

The pins themselves, and holding items whose definitions changed, are the federation's
(:mod:`fednode._federation._pins`). Here they are kept: in ``{state_dir}/pins.json`` when ``[node]
state_dir`` is set (the directory made 0700 if missing, refused if others may read or write it), in
memory otherwise. The file is read once at start-up (a bad one stops the start, naming it) and
written off the event loop (:func:`trio.to_thread.run_sync`), atomically (a temporary file, then a
rename): soon after new definitions were pinned, and before an operator's accept is answered.

``GET /pins`` lists the held items and ``POST /pins/accept`` (``{"names": [...]}`` or ``{"all": true}``)
accepts them, for ``fednode pins``. They need one of the static ``[clients] tokens`` when tokens are
configured (never any other kind of credential: the edge lets these paths through unchecked, see
:func:`fednode._mcp._client_auth.is_open`), and come only from a loopback address otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import ipaddress
import json
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._config._oauth_config import NamedToken
from .._errors import StateError
from .._federation._federation import Federation
from .._federation._pins import PinStore, pins_json

__all__ = ["PIN_FILE", "PinKeeper", "open_state_dir"]

#: The pins file's name in the state directory.
PIN_FILE = "pins.json"
#: The file a node holds locked while it uses the state directory (two nodes would overwrite each other's pins).
LOCK_FILE = "lock"
#: Seconds between new pins and their being saved: the pins of a start-up or of a burst of updates go together,
#: and a peer changing its routes without end makes the node write the file at most this often.
SAVE_DELAY = 5.0
#: Largest ``POST /pins/accept`` body read.
MAX_BODY = 1024 * 1024


def open_state_dir(path: Path) -> Path:
    """Make sure ``path`` can hold the node's state: created 0700 when missing, else a directory
    this user may write that nobody else may read, write or enter.

    Raises:
        StateError: saying what is wrong with it.
    """
    try:
        if not path.exists():
            path.mkdir(mode=0o700, parents=True)
        info = path.stat()
    except OSError as exc:
        raise StateError(f"state_dir {path}: cannot create it: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StateError(f"state_dir {path}: not a directory")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise StateError(f"state_dir {path}: group or other users have access to it (mode {mode:04o}); "
                         f"make it private: chmod 700 {path}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateError(f"state_dir {path}: not writable by this user")
    return path


def write_atomically(file: Path, data: bytes) -> None:
    """Replace ``file`` with ``data``: written to a temporary file beside it, flushed, then renamed over it."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, file)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class PinKeeper:
    """Keeps a node's pins: loads them, saves them when they change, and serves ``/pins``.

    Args:
        state_dir: ``[node] state_dir`` (None: the pins live in memory only).
        log: the node's logger.

    Raises:
        StateError: the state directory or the pins file in it cannot be used.
    """

    def __init__(self, state_dir: Path | None, log: Any) -> None:
        self.log = log
        self._changed = trio.Event()
        self.store = PinStore(on_change=self._changed.set)
        self.file = None if state_dir is None else open_state_dir(state_dir) / PIN_FILE
        self._saved = 0  # the store's change count last saved
        self._saving = trio.Lock()  # one write at a time
        self._held_lock: int | None = None  # the locked file's descriptor (None: not locked)
        if self.file is None:
            log.info("pins.memory_only", detail="no [node] state_dir: pinned definitions are kept in memory only "
                                                "and pinned anew after a restart")
            return
        self._held_lock = _lock(self.file.parent / LOCK_FILE)
        try:
            data = self.file.read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as exc:
            self.close()
            raise StateError(f"pins file {self.file}: cannot read it: {exc.strerror or exc}") from None
        if data is not None:
            try:
                self.store.load(data, str(self.file))
            except StateError:
                self.close()
                raise
        self._saved = self.store.changes
        log.info("pins.loaded", file=str(self.file), pins=len(self.store))

    def close(self) -> None:
        """Let go of the state directory (another node may use it from now on)."""
        if self._held_lock is not None:
            os.close(self._held_lock)  # closing the descriptor releases its lock
            self._held_lock = None

    async def save(self) -> None:
        """Write the pins to the file now if they changed since last written (nothing without a file)."""
        async with self._saving:
            changes = self.store.changes
            if self.file is None or changes == self._saved:
                return
            snapshot = self.store.snapshot()  # taken here: the thread must not read the live pins
            file = self.file
            try:
                await trio.to_thread.run_sync(lambda: write_atomically(file, pins_json(snapshot)))
            except OSError as exc:
                self.log.error("pins.save_failed", file=str(file), error=exc.strerror or str(exc))
                return
            self._saved = changes

    async def keep_saved(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Save the pins :data:`SAVE_DELAY` after they change, until cancelled."""
        task_status.started()
        while True:
            await self._changed.wait()
            await trio.sleep(SAVE_DELAY)
            self._changed = trio.Event()
            self.store.on_change = self._changed.set
            await self.save()

    def routes(self, federation: Federation, tokens: Callable[[], Sequence[NamedToken]]) -> list[Route]:
        """``GET /pins`` and ``POST /pins/accept`` for ``federation``; ``tokens()`` gives ``[clients] tokens``."""

        def refused(request: Request) -> Response | None:
            configured = tokens()
            if configured:
                scheme, _, presented = request.headers.get("authorization", "").partition(" ")
                given = presented.strip().encode()
                # Every token compared, without stopping early (timing tells nothing of a match).
                matched = [hmac.compare_digest(given, token.reveal()) for token in configured]
                if scheme.lower() == "bearer" and any(matched):
                    return None
                return JSONResponse({"error": "a static [clients] token is required"}, status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="fednode"'})
            if _loopback(request.client.host if request.client else ""):
                return None
            return JSONResponse({"error": "without [clients] tokens, pins are managed from this host only"},
                                status_code=403)

        async def list_pins(request: Request) -> Response:
            return refused(request) or JSONResponse(self.describe(federation))

        async def accept(request: Request) -> Response:
            if (refusal := refused(request)) is not None:
                return refusal
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    return JSONResponse({"error": "request body too large"}, status_code=413)
            try:
                asked = json.loads(body)
            except (ValueError, RecursionError):
                asked = None
            names = asked.get("names") if isinstance(asked, dict) else None
            every = isinstance(asked, dict) and asked.get("all") is True
            if every == (names is not None) or not (every or (isinstance(names, list) and names
                                                              and all(isinstance(n, str) for n in names))):
                return JSONResponse({"error": 'expected {"names": ["NAME", ...]} or {"all": true}'}, status_code=400)
            try:
                accepted = federation.catalog.accept_held(None if every else names)
            except LookupError as exc:
                return JSONResponse({"error": str(exc.args[0])}, status_code=404)
            federation.local_changed()  # the catalog rebuilt with them: listed, and clients told, at once
            await self.save()
            for item in accepted:
                self.log.info("pins.accepted", name=item["name"], server=item["server"], origin=item["origin"],
                                 changed=item["changed"])
            return JSONResponse({"accepted": accepted})

        return [Route("/pins", list_pins, methods=["GET"]), Route("/pins/accept", accept, methods=["POST"])]

    def describe(self, federation: Federation) -> dict[str, Any]:
        """What ``/pins`` answers (and ``/status`` shows as ``pins``)."""
        return {"file": None if self.file is None else str(self.file), "pins": len(self.store),
                "held": federation.catalog.held_items(definitions=True)}


def _lock(path: Path) -> int:
    """Lock ``path`` (created 0600) for this process: the descriptor holding the lock.

    Raises:
        StateError: another process holds it.
    """
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateError(f"state_dir {path.parent}: cannot open {path.name}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        with contextlib.suppress(OSError):
            os.close(descriptor)
        raise StateError(f"state_dir {path.parent}: in use by another fednode process (it holds {path}); "
                         "give each node a state_dir of its own") from None
    return descriptor


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
