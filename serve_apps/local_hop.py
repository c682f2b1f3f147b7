"""The hop to a deployment's replicas on the caller's own node, over a Unix socket instead of a Ray Serve handle.

A handle call costs the caller about a millisecond of CPU (router, gRPC, pickling, a metric) and the replica about as
much, whatever it carries: with calls coalesced (coalescing.py) an echo one hop away still answered only 0.30x what a
bare uvicorn echo does (BENCHMARKS.md). When every running replica of a deployment is on the caller's Ray node, a
coalesced call goes over a Unix socket to the one of them with the fewest calls in flight instead: a length-prefixed
frame of pickled requests, answered on the replica's own event loop by the same `infer_many` a handle call reaches.
Serve still places, scales, health-checks and stops the replicas, and each replica counts the requests it holds,
however they came, for the autoscaler (autoscaling_policy.py). Anything else (a replica elsewhere, a multiplexed
family, whose ids Serve routes to the replica holding them, no replica yet) keeps the handle.

Where: one directory per Ray node, app and deployment under Ray's temp dir, in a directory only this user can enter;
a replica puts `<random>.sock` there when it starts and removes it when Serve stops it, and callers list the
directory at most once a second.

Stopping without losing a call: Serve stops routing to a stopping replica and calls its `__del__`; there the replica
removes its socket, says goodbye on each connection and keeps answering what it is sent until the caller, who sends
nothing after a goodbye, has had every answer and closes the connection (bounded by `DRAIN_S`). A connection lost
with calls unanswered means the replica died: `ReplicaLost`, which callers retry as they would a handle call whose
replica died (coalescing.once_more_if_the_replica_died).

Who may connect: this user's processes only (the directory's mode); what a connection sends is unpickled with numpy
arrays and plain containers only, so it can ask for inference and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import itertools
import logging
import os
import pickle
import secrets
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DRAIN_S", "LocalDoor", "LocalReplicas", "NotSent", "ReplicaLost", "door_dir", "node_dir", "private_dir"]

logger = logging.getLogger("ray.serve")

# A frame: payload length, call id (0: the replica's goodbye), then the pickled payload.
HEADER = struct.Struct("!IQ")
GOODBYE = 0
MAX_FRAME = 1 << 31  # what a coalesced call may carry; larger is not a caller of ours
DRAIN_S = 10.0  # a stopping replica's wait for its callers to take their answers (Serve's grace period is 20 s)
QUIET_S = 0.5  # after its goodbye, how long a stopping replica waits for calls already on their way
LIST_EVERY_S = 1.0  # how often a caller looks for replicas that came or went
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS

# What a request may be made of, besides plain containers, strings and numbers: numpy's own pickles of arrays.
_ARRAY_GLOBALS = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
}


class ReplicaLost(ConnectionError):
    """The replica's connection closed before it answered a call it was sent: it died (or was killed) meanwhile."""


class NotSent(ConnectionError):
    """The call never reached a replica (it could not be connected to): safe to send another way."""


def door_dir(app: str, deployment: str) -> Path | None:
    """The directory of `deployment`'s sockets on this Ray node, created if need be (see `private_dir`)."""
    node = node_dir()
    return private_dir(node.parent, node.name, app, deployment)


def node_dir() -> Path:
    """This Ray node's folder of sockets (a new one each time Ray starts: the node id is new)."""
    import ray

    context = ray.get_runtime_context()
    return Path(context.get_temp_dir()) / "modelfleet-hop" / context.get_node_id()[:16]


def private_dir(root: Path, node: str, app: str, deployment: str) -> Path | None:
    """`root/node/<app and deployment, hashed>`, created; None (no local hop) where `root` cannot be made a directory
    only this user can enter, or a socket's path in it would be too long."""
    path = root / node / hashlib.sha256(f"{app}\0{deployment}".encode()).hexdigest()[:16]
    if len(str(path)) + len("/0123456789ab.sock") > MAX_SOCKET_PATH:
        logger.warning("local hop off: socket paths under %s would be too long for a Unix socket", root)
        return None
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        owned = root.lstat()
        if not stat.S_ISDIR(owned.st_mode) or owned.st_uid != os.getuid() or owned.st_mode & 0o077:
            logger.warning("local hop off: %s is not a directory only this user can enter", root)
            return None
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        logger.warning("local hop off: %s", exc)
        return None
    return path


class _Requests(pickle.Unpickler):
    """Unpickles what a caller sent: arrays and plain values, never an object that runs code as it is built."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a request")


def _frame(call_id: int, payload: bytes) -> list[bytes]:
    return [HEADER.pack(len(payload), call_id), payload]


@dataclass(eq=False)
class _Caller:
    """One connection to a replica's door, as the replica sees it."""

    writer: asyncio.StreamWriter
    calls: set[asyncio.Task[None]] = field(default_factory=set)  # read, not yet answered
    last_call: float = field(default_factory=time.monotonic)


class LocalDoor:
    """A replica's end: answers calls on a Unix socket in `door_dir` with `answer(requests)`."""

    def __init__(self, directory: Path, answer: Callable[[list[Any]], Awaitable[list[Any]]]):
        self.path = directory / f"{secrets.token_hex(6)}.sock"
        self._answer = answer
        self._callers: set[_Caller] = set()
        # Bound now, so the socket exists once the replica does; connections wait in the backlog until accepted.
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.bind(str(self.path))
        self._socket.listen(128)
        self._server: asyncio.Server | None = None
        self._starting = asyncio.get_running_loop().create_task(self._start(), name="local-door")

    @classmethod
    def open(cls, app: str, deployment: str, answer: Callable[[list[Any]], Awaitable[list[Any]]]) -> LocalDoor | None:
        """From a replica's constructor (on the event loop its calls run on); None where no local hop can be."""
        directory = door_dir(app, deployment)
        return cls(directory, answer) if directory is not None else None

    async def _start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, sock=self._socket)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caller = _Caller(writer)
        self._callers.add(caller)
        try:
            while True:
                length, call_id = HEADER.unpack(await reader.readexactly(HEADER.size))
                if length > MAX_FRAME:
                    break
                payload = await reader.readexactly(length)
                caller.last_call = time.monotonic()
                task = asyncio.get_running_loop().create_task(self._call(call_id, payload, writer))
                caller.calls.add(task)
                task.add_done_callback(caller.calls.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the caller closed the connection: it has every answer it waits for
        finally:
            if caller.calls:
                await asyncio.wait(caller.calls)
            self._callers.discard(caller)
            writer.close()

    async def _call(self, call_id: int, payload: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            requests = _Requests(io.BytesIO(payload)).load()
            answer: Any = await self._answer(requests)
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # a call we cannot read or answer fails its callers, not the replica
            logger.error("local hop: call failed: %s: %s", exc.__class__.__name__, exc)
            data = pickle.dumps(RuntimeError(f"{exc.__class__.__name__}: {exc}"))
        if not writer.is_closing():
            writer.writelines(_frame(call_id, data))

    async def close(self, drain_s: float = DRAIN_S) -> None:
        """Stop: no new connections, a goodbye on each open one, and what was sent on it answered before it closes.

        A caller that read the goodbye sends nothing more and closes its end once it has its answers. One that does
        neither (its own replica stopping, its event loop already gone) is let go once it has had every answer and
        sent nothing for `QUIET_S` since the goodbye: a call already on its way would have arrived by then. At most
        `drain_s` in all, then closed under whoever still holds it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        await self._starting
        assert self._server is not None
        self._server.close()
        for caller in self._callers:
            if not caller.writer.is_closing():
                caller.writer.writelines(_frame(GOODBYE, b""))
        said_goodbye = time.monotonic()
        while self._callers and time.monotonic() - said_goodbye < drain_s:
            now = time.monotonic()
            if now - said_goodbye >= QUIET_S and all(
                not c.calls and now - c.last_call >= QUIET_S for c in self._callers
            ):
                break
            await asyncio.sleep(QUIET_S / 10)
        for caller in list(self._callers):
            caller.writer.close()


class _Connection:
    """A caller's connection to one replica's door, opened on first use; calls on it are answered by call id."""

    def __init__(self, path: Path):
        self.path = path
        self.in_flight = 0
        self.usable = True  # False once the replica said goodbye, went away or could not be reached
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self._answers: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._reading: asyncio.Task[None] | None = None  # held: the loop keeps only weak references to tasks

    async def call(self, requests: list[Any]) -> list[Any]:
        self.in_flight += 1
        try:
            writer = await self._connected()
            if not self.usable or writer.is_closing():  # a goodbye, or the replica gone, before this call left
                raise NotSent(f"{self.path.name}: closed")
            call_id = next(self._ids)
            answer = self._answers[call_id] = asyncio.get_running_loop().create_future()
            writer.writelines(_frame(call_id, pickle.dumps(requests, protocol=pickle.HIGHEST_PROTOCOL)))
            result = await answer
        finally:
            self.in_flight -= 1
            self._close_if_done()
        if isinstance(result, Exception):
            raise result
        return result

    def _close_if_done(self) -> None:
        """After a goodbye, once no call of ours is out: our close is what lets the stopping replica go."""
        if not self.usable and not self.in_flight and self._writer is not None:
            self._writer.close()

    async def _connected(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None:
                if not self.usable:
                    raise NotSent(f"{self.path.name}: closed")
                try:
                    reader, self._writer = await asyncio.open_unix_connection(str(self.path))
                except OSError as exc:
                    self.usable = False
                    if isinstance(exc, ConnectionRefusedError):  # nobody listens: its replica died
                        with contextlib.suppress(OSError):
                            self.path.unlink()
                    raise NotSent(f"{self.path.name}: {exc}") from None
                self._reading = asyncio.get_running_loop().create_task(self._read(reader), name="local-hop-answers")
            return self._writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                length, call_id = HEADER.unpack(await reader.readexactly(HEADER.size))
                if call_id == GOODBYE:
                    self.usable = False
                    self._close_if_done()
                    continue
                payload = await reader.readexactly(length)
                answer = self._answers.pop(call_id, None)
                if answer is not None and not answer.done():
                    try:
                        answer.set_result(pickle.loads(payload))
                    except Exception as exc:  # an answer we cannot read fails its callers, not the connection
                        answer.set_exception(RuntimeError(f"local hop: unreadable answer: {exc}"))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.usable = False
            for call_id, answer in self._answers.items():
                if not answer.done():
                    answer.set_exception(
                        ReplicaLost(f"replica {self.path.name} closed before answering call {call_id}")
                    )
            self._answers.clear()


class LocalReplicas:
    """A caller's view of one deployment's replicas on its own node (in `directory`: by default, found from the
    caller's Serve replica context on first use)."""

    def __init__(self, deployment: str, directory: Path | None = None, app: str | None = None):
        self.deployment, self.app = deployment, app  # app: the deployment's application, when not the caller's
        self._dir = directory
        self._looked = directory is not None
        self._connections: dict[str, _Connection] = {}
        self._listed_at = -float("inf")

    def pick(self, running: int | None) -> _Connection | None:
        """The replica here with the fewest calls in flight, when every one of the `running` replicas Serve counts
        is here (else None: the handle, which also reaches those elsewhere)."""
        if not running:
            return None
        if time.monotonic() - self._listed_at > LIST_EVERY_S:
            self._list()
        usable = [c for c in self._connections.values() if c.usable]
        if len(usable) < running:
            return None
        return min(usable, key=lambda c: c.in_flight)

    def _list(self) -> None:
        self._listed_at = time.monotonic()
        if not self._looked:
            from ray import serve

            self._looked = True
            self._dir = door_dir(self.app or serve.get_replica_context().app_name, self.deployment)
        if self._dir is None:
            return
        try:
            names = {entry.name for entry in os.scandir(self._dir) if entry.name.endswith(".sock")}
        except OSError:
            names = set()
        for name in list(self._connections):
            if name not in names or not self._connections[name].usable:
                del self._connections[name]  # gone: a connection still answering its calls ends on its own
        for name in names - self._connections.keys():
            self._connections[name] = _Connection(self._dir / name)
