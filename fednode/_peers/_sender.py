"""The writing half of a peer link: one frame at a time, and a queue for the frames that find it busy.

Nobody but the writer ever waits on the socket. A frame that finds the link idle is written at once
by whoever sends it; one that finds it busy goes through the send queue, written in order by the
sender task (:meth:`FrameSender.run`):

* control frames (pongs, cancels, protocol-error replies), dropped while more than
  :data:`CONTROL_QUEUE` control and relayed frames wait (safe for each of them: the next ping gets
  its pong; a dropped cancel only means the peer finishes work nobody waits for);
* relayed requests and answers (see :class:`fednode.Transit`), never dropped: their number is
  bounded by the links' ``max_inflight``;
* everything else (requests, answers, notifications): a task waits for each (see :class:`Outgoing`).

How long a write may take is watched from outside (the link's heartbeat task reads
:attr:`FrameSender.writing` and :attr:`FrameSender.writing_since`), so no cancel scope is entered
per frame.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.events import TextMessage

from .._errors import INTERNAL_ERROR, LinkClosedError, MessageTooLargeError, ProtocolError
from . import _wire as wire

#: Control and relayed frames that may wait in the queue before control frames are dropped.
CONTROL_QUEUE = 64

#: Frames the sender task writes in a row before it lets other tasks run (a frame the socket takes
#: at once is written without a checkpoint, see :func:`send_text`).
DRAIN_BATCH = 16

#: What a relayed frame carries along, handed back when it cannot be sent (a link's Transit).
Tag = TypeVar("Tag")


@attrs.define(eq=False)
class Outgoing:
    """A frame left to the sender task because the link was busy, which a task waits for.

    ``written`` (for :meth:`FrameSender.send`) is set once the frame is written or never will be
    (then ``error`` says why); a request waits for its answer instead. A frame abandoned while
    still queued (its request timed out, its sender was cancelled) is not written at all.
    """

    text: str
    written: trio.Event | None = None
    error: LinkClosedError | None = None
    started: bool = False
    abandoned: bool = False


class FrameSender(Generic[Tag]):
    """Writes one link's frames, one at a time, in order.

    Args:
        ws: the link's WebSocket.
        peer_id: the peer's id (for error messages).
        max_message_size: the largest frame sent, in characters.
        on_lost: called with a description when the connection turns out to be closed; the link
            ends, and calls :meth:`close`.
        on_too_large: called with the tag of a relayed frame that could not be sent (too large, or
            not JSON) and the error.
    """

    def __init__(self, ws: WebSocketConnection, *, peer_id: str, max_message_size: int,
                 on_lost: Callable[[str], None], on_too_large: Callable[[Tag, ProtocolError], None]) -> None:
        self.ws = ws
        self.peer_id = peer_id
        self.max_message_size = max_message_size
        #: why the link ended, once it has (then nothing more is written)
        self.closed: str | None = None
        #: a frame is being written, since :attr:`writing_since`, by :attr:`writer` (if it said who)
        self.writing = False
        self.clock = trio.lowlevel.current_clock()  # cheaper than trio.current_time() once per frame
        self.writing_since = self.clock.current_time()
        self.writer: object | None = None
        #: frames handed to the sender task and not written yet
        self.queued = 0
        self._backlog = 0  # of which control and relayed frames (for CONTROL_QUEUE)
        self._on_lost = on_lost
        self._on_too_large = on_too_large
        # Unbounded as a channel; bounded by what is put in (see CONTROL_QUEUE).
        self._queue_send, self._queue_recv = trio.open_memory_channel[
            tuple[wire.Message, Tag | None] | Outgoing](math.inf)
        self._write_done = trio.lowlevel.ParkingLot()  # where the sender waits for a direct write to end
        self._sender_waits = False
        self._lock = direct_lock(ws)

    def _closed_error(self, state: str = "is closed") -> LinkClosedError:
        return LinkClosedError(self.peer_id, f"link to {self.peer_id!r} {state} ({self.closed})")

    async def send(self, message: wire.Message) -> None:
        """Send one frame, after the frames already waiting to be sent (see :meth:`fednode._peers._link.Link.send`)."""
        text = self.encode(message)
        if not (self.writing or self.queued):
            await self.write(text)
            return
        written = trio.Event()
        outgoing = Outgoing(text, written=written)
        self.hand_over(outgoing)
        try:
            await written.wait()
        finally:
            outgoing.abandoned = True  # no effect once the sender has started it
        if outgoing.error is not None:
            raise outgoing.error

    def encode(self, message: wire.Message) -> str:
        """The frame for ``message``; raises MessageTooLargeError over ``max_message_size``."""
        text = wire.encode(message)
        if len(text) > self.max_message_size:
            raise MessageTooLargeError(
                f"{message.TYPE} frame of {len(text)} characters exceeds max_message_size {self.max_message_size}")
        return text

    async def write(self, text: str, writer: object | None = None) -> None:
        """Write one frame now: the caller has made sure that nobody else is writing.

        No cancel scope is entered (this is the path every frame takes); the bound is kept by tasks
        that exist anyway. The link's heartbeat task closes the link when the frame has not been
        taken for the stall limit: the peer has stopped reading, and closing the stream frees the
        writer. When a request (``writer``) writes its own frame and is still at it at its deadline,
        the deadline keeper closes the link: only that frees the caller, and the frame may be
        half-written. A frame the socket takes at once costs no pass of the event loop (see
        :func:`send_text`); a cancelled caller writes nothing, as before.

        Raises:
            LinkClosedError: the link is closed, or closed before the frame was written.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled writer writes nothing (not a yield)
        if self.closed is not None:
            raise self._closed_error()
        self.writing = True
        self.writer = writer
        self.writing_since = self.clock.current_time()
        try:
            await send_text(self.ws, text, self._lock)
        except ConnectionClosed as exc:
            self._on_lost(describe_close(exc))
            raise self._closed_error("closed") from None
        finally:
            self.writing = False
            self.writer = None
            if self._sender_waits:
                self._sender_waits = False
                self._write_done.unpark()

    def hand_over(self, outgoing: Outgoing) -> None:
        """Queue a frame for the sender task (the link is busy)."""
        if self.closed is not None:
            raise self._closed_error()
        self.queued += 1
        self._queue_send.send_nowait(outgoing)  # unbounded channel: never blocks

    def send_control(self, message: wire.Message) -> None:
        """Queue a frame that may be lost (dropped while the queue is long)."""
        if self._backlog < CONTROL_QUEUE:
            self.enqueue(message, None)

    def enqueue(self, message: wire.Message, tag: Tag | None) -> None:
        """Queue a frame that is never dropped (a relayed one), unless the link has ended."""
        if self.closed is None:
            self.queued += 1
            self._backlog += 1
            self._queue_send.send_nowait((message, tag))  # unbounded channel: never blocks

    async def run(self) -> None:
        """The sender task: write the queued frames in order, until the link ends (see :meth:`close`)."""
        queue = self._queue_recv
        async for item in queue:
            drained = 0
            while True:  # drain with a checkpoint only every DRAIN_BATCH frames
                try:
                    if self.writing:  # a frame written directly, before this one was queued
                        self._sender_waits = True
                        await self._write_done.park()
                    if isinstance(item, Outgoing):
                        if not item.abandoned and not await self._send_outgoing(item):
                            return
                    else:
                        self._backlog -= 1
                        if not await self.send_frame(*item):
                            return
                except BaseException:  # cancelled (the link is ending) while waiting or writing
                    if isinstance(item, Outgoing) and item.written is not None and not item.written.is_set():
                        item.error = LinkClosedError(self.peer_id, f"link to {self.peer_id!r} is closing")
                        item.written.set()
                    raise
                finally:
                    self.queued -= 1
                drained += 1
                if drained % DRAIN_BATCH == 0:
                    await trio.lowlevel.checkpoint()
                try:
                    item = queue.receive_nowait()
                except trio.WouldBlock:
                    break

    async def _send_outgoing(self, outgoing: Outgoing) -> bool:
        outgoing.started = True
        try:
            await self.write(outgoing.text)
        except LinkClosedError as exc:
            outgoing.error = exc
        if outgoing.written is not None:
            outgoing.written.set()
        return outgoing.error is None

    def close(self, reason: str) -> None:
        """The link has ended: write nothing more, and tell whoever waits for a frame still queued."""
        if self.closed is None:
            self.closed = reason
        while True:
            try:
                item = self._queue_recv.receive_nowait()
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                return
            self.queued -= 1
            if not isinstance(item, Outgoing):
                self._backlog -= 1
            elif item.written is not None:
                item.error = self._closed_error("closed")
                item.written.set()

    async def send_frame(self, message: wire.Message, tag: Tag | None) -> bool:
        """Write a queued or relayed frame now, handling its failure; False once the link is closed."""
        try:
            try:
                await self.write(self.encode(message))
            except ProtocolError as exc:  # too large (or not JSON)
                if tag is not None:  # a request passed on: the asker gets the error
                    self._on_too_large(tag, exc)
                elif type(message) is wire.Response:  # an answer passed back: say why it is missing
                    error = wire.Error(id=message.id, code=INTERNAL_ERROR, message=str(exc))
                    await self.write(self.encode(error))
        except LinkClosedError:
            return False  # whatever was passed on to this peer has been failed as the link ended
        return True

    async def relay(self, message: wire.Message, tag: Tag | None) -> None:
        """Send a frame passed on by another link's reader: at once when the link is idle, else queued.

        A reader must never be held up for long by another link, or its own peer would miss our
        pongs: this link is closed when the frame is not taken within the stall limit (half the
        heartbeat slack), which means this peer has stopped reading.
        """
        if self.writing or self.queued or self.closed is not None:
            self.enqueue(message, tag)
            return
        await self.send_frame(message, tag)


def direct_lock(ws: WebSocketConnection) -> trio.StrictFIFOLock | trio.Lock | None:
    """The send lock of a trio-websocket connection, if :func:`send_text` can use it (else None)."""
    lock = getattr(ws, "_stream_lock", None)
    parts = ("_close_reason", "_wsproto", "_stream", "_abort_web_socket")
    usable = isinstance(lock, trio.StrictFIFOLock | trio.Lock) and all(hasattr(ws, name) for name in parts)
    return lock if usable else None


async def send_text(ws: WebSocketConnection, text: str, lock: trio.StrictFIFOLock | trio.Lock | None) -> None:
    """``ws.send_message(text)``, without its checkpoints when the socket takes the frame at once.

    ``send_message`` costs two passes of the event loop (an ``epoll_wait`` and the loop's own work)
    per frame even when nothing has to wait: trio-websocket's send ``lock`` yields on ``acquire``
    when it is free, and the socket's send yields after sending. Here the free lock is taken with
    ``acquire_nowait`` and, over plain TCP, the frame is written to the non-blocking socket
    directly; only what the socket does not take at once (or any frame over TLS) goes through
    ``send_all``, which waits as usual. So a frame that fits costs no checkpoint: the frame sender
    checkpoints between frames itself (see :meth:`FrameSender.run`). When the lock is held or the
    connection is closing (or ``lock`` is None: see :func:`direct_lock`), ``send_message`` does it all.

    Raises:
        ConnectionClosed: as ``send_message``.
    """
    if lock is None or lock.locked() or ws._close_reason is not None:
        await ws.send_message(text)
        return
    data = ws._wsproto.send(TextMessage(data=text))
    lock.acquire_nowait()
    try:
        stream = ws._stream
        if type(stream) is trio.SocketStream and not stream.socket.did_shutdown_SHUT_WR:
            fd = stream.socket.fileno()
            sent = 0
            if fd >= 0:
                try:
                    sent = os.write(fd, data)
                except OSError:  # would block, or broken: send_all waits, or says what broke
                    sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await ws._abort_web_socket()
        raise ConnectionClosed(ws._close_reason) from None
    finally:
        lock.release()


def describe_close(exc: ConnectionClosed) -> str:
    """Why a connection closed, for an end reason."""
    reason = exc.reason
    if reason is None:
        return "connection closed"
    if reason.code == 1006:
        return "connection lost (1006)"
    text = f": {reason.reason}" if reason.reason else ""
    return f"connection closed ({reason.code}{text})"
