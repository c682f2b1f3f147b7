"""The local hop on its own (no Ray): a replica's door on a Unix socket and a caller's view of the doors on its node.
Each call's requests get their own answers; a request is arrays and plain values, never code; a stopping replica
answers what it was sent and takes no more; a dead one is a lost replica, retried as a handle call's would be.
Through real replicas in test_serving.py (and under replica kills and rolling updates in test_faults.py)."""

from __future__ import annotations

import asyncio
import pickle
import shutil
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serve_apps.coalescing import ManyRequests, once_more_if_the_replica_died
from serve_apps.local_hop import LocalDoor, LocalReplicas, NotSent, ReplicaLost, private_dir
from serve_apps.request_error import RequestError
from tests.helpers import eventually, run_async


class _Times10(ManyRequests):
    """A replica whose model multiplies by ten; a negative input is the caller's error. `hold` holds every call."""

    name = "times10"

    def __init__(self) -> None:
        self.hold = asyncio.Event()
        self.hold.set()
        self.calls = 0

    async def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        await self.hold.wait()
        if (inputs["x"] < 0).any():
            raise RequestError(422, "negative")
        return {"y": inputs["x"] * 10}

    async def infer_many(self, many: list) -> list:
        self.calls += 1
        return await super().infer_many(many)


@pytest.fixture()
def folder() -> Iterator[Path]:
    """A deployment's socket folder. pytest's tmp_path is longer than a Unix socket's path may be: a short one."""
    root = Path(tempfile.mkdtemp(prefix="mfhop-"))
    try:
        path = private_dir(root / "hop", "node", "app", "model")
        assert path is not None
        yield path
    finally:
        shutil.rmtree(root)


def test_a_call_over_the_local_hop_gets_each_request_its_own_answer(folder: Path) -> None:
    async def scenario() -> None:
        replica = _Times10()
        door = LocalDoor(folder, replica.infer_many)
        replicas = LocalReplicas("model", folder)
        connection = replicas.pick(running=1)
        assert connection is not None
        requests = [
            {"x": np.array([[1.0, 2.0]], np.float32)},
            {"x": np.array([[-1.0]], np.float32)},
            {"x": np.arange(3)},
        ]
        first, refused, third = await connection.call(requests)
        np.testing.assert_array_equal(first["y"], [[10.0, 20.0]])
        assert first["y"].dtype == np.float32
        assert isinstance(refused, RequestError) and refused.status == 422  # that caller's error, the others answered
        np.testing.assert_array_equal(third["y"], [0, 10, 20])
        assert replica.calls == 1, "three requests, one call"
        await door.close(drain_s=0.5)
        assert not door.path.exists()

    run_async(scenario())


def test_a_request_is_arrays_and_values_never_code(folder: Path, tmp_path: Path) -> None:
    """Whoever can reach a door (this user's processes only) can ask for inference and nothing else: a pickle that
    would build an object by calling something other than numpy's array constructors is refused unread."""
    marker = tmp_path / "ran"

    class Opens:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    async def scenario() -> None:
        replica = _Times10()
        door = LocalDoor(folder, replica.infer_many)
        reader, writer = await asyncio.open_unix_connection(str(door.path))
        payload = pickle.dumps([{"x": Opens()}])
        writer.write(struct.pack("!IQ", len(payload), 7) + payload)
        length, call_id = struct.unpack("!IQ", await reader.readexactly(12))
        answer = pickle.loads(await reader.readexactly(length))
        assert call_id == 7 and isinstance(answer, RuntimeError) and "is not part of a request" in str(answer)
        assert replica.calls == 0
        writer.close()
        await door.close(drain_s=0.5)

    run_async(scenario())
    assert not marker.exists(), "the request ran code in the replica"


def test_a_stopping_replica_answers_what_it_was_sent_and_takes_no_more(folder: Path) -> None:
    async def scenario() -> None:
        replica = _Times10()
        replica.hold.clear()
        door = LocalDoor(folder, replica.infer_many)
        replicas = LocalReplicas("model", folder)
        connection = replicas.pick(running=1)
        assert connection is not None
        in_flight = asyncio.create_task(connection.call([{"x": np.array([1])}]))
        await eventually(lambda: replica.calls == 1, "the call reached the replica")
        stopping = asyncio.create_task(door.close(drain_s=30))
        await eventually(lambda: not connection.usable, "the replica said goodbye")
        assert replicas.pick(running=1) is None, "a replica that said goodbye is not picked"
        with pytest.raises(NotSent):
            await connection.call([{"x": np.array([2])}])
        assert not stopping.done(), "the replica stopped before answering what it was sent"
        replica.hold.set()
        (answer,) = await in_flight
        np.testing.assert_array_equal(answer["y"], [10])
        async with asyncio.timeout(5):  # the caller had every answer and closed: the replica stops at once
            await stopping
        assert not door.path.exists()

    run_async(scenario())


def test_a_stopping_replica_does_not_wait_for_a_caller_that_no_longer_reads(folder: Path) -> None:
    """A caller whose own replica stopped first (its event loop gone, its process not yet) holds its connection open
    and never reads the goodbye: once it has had its answers and sent nothing more, the replica stops anyway
    (it used to wait out the whole drain, and Serve's shutdown with it)."""

    async def scenario() -> None:
        replica = _Times10()
        door = LocalDoor(folder, replica.infer_many)
        reader, writer = await asyncio.open_unix_connection(str(door.path))
        payload = pickle.dumps([{"x": np.array([1])}])
        writer.write(struct.pack("!IQ", len(payload), 1) + payload)
        await reader.readexactly(12)  # answered; from here on this caller neither reads nor closes
        async with asyncio.timeout(5):  # bounds the failure: the drain below would take 60 s
            await door.close(drain_s=60)
        writer.close()

    run_async(scenario())


def test_a_replica_that_dies_mid_call_is_lost_and_not_picked_again(folder: Path) -> None:
    async def scenario() -> None:

        async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(12)  # a call arrives; the replica's process ends before answering
            writer.transport.abort()

        server = await asyncio.start_unix_server(dies, str(folder / "dying.sock"))
        replicas = LocalReplicas("model", folder)
        connection = replicas.pick(running=1)
        assert connection is not None
        with pytest.raises(ReplicaLost):
            await connection.call([{"x": np.array([1])}])
        assert not connection.usable
        assert replicas.pick(running=1) is None, "a lost replica is not picked again"
        server.close()

    run_async(scenario())


def test_a_call_whose_replica_was_lost_is_sent_once_more() -> None:
    """As for a handle call whose replica died: inference is a pure function of its inputs, so asking again is safe
    (unless the spec says otherwise: `retry` decides)."""
    attempts: list[int] = []

    async def call() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ReplicaLost("replica x closed before answering call 1")
        return "answered by another replica"

    assert run_async(once_more_if_the_replica_died(call, retry=lambda: True)) == "answered by another replica"
    attempts.clear()
    with pytest.raises(ReplicaLost):
        run_async(once_more_if_the_replica_died(call, retry=lambda: False))


def test_a_socket_nobody_listens_on_is_not_sent_to_and_is_removed(folder: Path) -> None:
    async def scenario() -> None:
        stale = folder / "crashed.sock"
        leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        leftover.bind(str(stale))  # what a killed replica leaves: the file, and nobody listening
        leftover.close()
        connection = LocalReplicas("model", folder).pick(running=1)
        assert connection is not None
        with pytest.raises(NotSent):
            await connection.call([{"x": np.array([1])}])
        assert not stale.exists()

    run_async(scenario())


def test_the_local_hop_is_taken_only_while_every_running_replica_is_here(folder: Path) -> None:
    async def scenario() -> None:
        replicas_here = [_Times10(), _Times10()]
        for replica in replicas_here:
            replica.hold.clear()
        doors = [LocalDoor(folder, r.infer_many) for r in replicas_here]
        replicas = LocalReplicas("model", folder)
        assert replicas.pick(running=None) is None, "nothing heard from Serve yet: the handle"
        assert replicas.pick(running=0) is None
        assert replicas.pick(running=3) is None, "a replica elsewhere: the handle, which reaches it too"
        first = replicas.pick(running=2)
        assert first is not None
        busy = asyncio.create_task(first.call([{"x": np.array([1])}]))
        await eventually(lambda: first.in_flight == 1, "the call left")
        second = replicas.pick(running=2)
        assert second is not None and second is not first, "the replica with fewer calls in flight"
        for replica in replicas_here:
            replica.hold.set()
        await busy
        for door in doors:
            await door.close(drain_s=0.5)

    run_async(scenario())


def test_a_socket_folder_others_can_enter_is_refused() -> None:
    root = Path(tempfile.mkdtemp(prefix="mfhop-"))
    try:
        shared = root / "shared"
        shared.mkdir()
        shared.chmod(0o755)
        assert private_dir(shared, "node", "app", "model") is None
        fresh = private_dir(root / "fresh", "node", "app", "model")
        assert fresh is not None and fresh.is_dir() and (root / "fresh").stat().st_mode & 0o777 == 0o700
        assert private_dir(root / ("x" * 120), "node", "app", "model") is None, "too long for a socket's path"
    finally:
        shutil.rmtree(root)
