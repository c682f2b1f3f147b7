"""The audit log: one hash-chained JSON line for every state change and every denied request (issue 18).

A record says who (a key's name or the OS user, never a secret) did what to which target, with what outcome, from
where. Its `prev` is the hash of the record before it and its `hash` covers the record itself, so `verify` finds an
edited, removed or reordered line and names it; `head.json` remembers the newest record, so removing the last lines
shows too. A file lock serialises appends from any number of processes; files rotate by size without breaking the
chain, and `ship` copies closed files to a storage URI, the anchor that someone able to rewrite this folder cannot
reach. A busy server hands its records to a `BackgroundAuditWriter`, which never blocks it. See docs/audit.md.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import fnmatch
import getpass
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple

from filelock import FileLock

from groundwork.local_rays import modelfleet_home
from providers.storage import resolve_uri, scheme_of, upload

__all__ = [
    "CURRENT",
    "FIELDS",
    "FOLDER_ENV",
    "GENESIS",
    "AuditLog",
    "BackgroundAuditWriter",
    "Problem",
    "VerifyResult",
    "actor_from_env",
    "audit_folder",
    "audit_log_from_env",
    "query",
    "ship",
    "verify",
]

log = logging.getLogger("modelfleet.audit")
FOLDER_ENV = "MODELFLEET_AUDIT_LOG"
CURRENT = "audit.jsonl"
HEAD = "head.json"
SHIPPED = "shipped.json"
GENESIS = "0" * 64  # the `prev` of the first record ever
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
MAX_TEXT_CHARS = 512  # a field a client chose (a path, a request id) cannot bloat the log
MAX_DETAILS_CHARS = 4096
FIELDS = (
    "seq",
    "id",
    "time",
    "actor",
    "action",
    "target",
    "outcome",
    "source",
    "request_id",
    "details",
    "prev",
    "hash",
)
_ROTATED = re.compile(r"audit-(\d{12})-(\d{12})(?:\.(\d+))?\.jsonl")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SECRET_LIKE = re.compile(r"secret|passw|token|api_?key|authorization|credential|cookie", re.I)
_BATCH = 256  # records the background writer appends under one lock and one fsync


def audit_folder() -> Path:
    """MODELFLEET_AUDIT_LOG, else $MODELFLEET_HOME/audit."""
    named = os.environ.get(FOLDER_ENV)
    return Path(named) if named else modelfleet_home() / "audit"


def audit_log_from_env() -> AuditLog:
    return AuditLog(audit_folder())


def actor_from_env() -> str:
    """The OS user running this process, as an actor: `user:<name>`."""
    try:
        return f"user:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return f"uid:{os.getuid()}"


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else f"{text[:MAX_TEXT_CHARS]}...[{len(text) - MAX_TEXT_CHARS} more]"


def _entry(
    action: str,
    target: str,
    outcome: str,
    actor: str | None,
    source: str | None,
    request_id: str | None,
    details: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A record before it has a place in the chain, stamped now. Raises for the caller's bugs (details that are not
    JSON, or look like a secret), never for what a client sent (long fields are cut)."""
    # The round trip gives the details exactly as `verify` will read them back (string keys, lists), or raises.
    plain = json.loads(json.dumps(dict(details or {}), allow_nan=False))
    for key in plain:
        if _SECRET_LIKE.search(key):
            raise ValueError(f"details key {key!r} looks like a secret; audit records never hold secrets")
    size = len(json.dumps(plain))
    return {
        "id": uuid.uuid4().hex,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": _bounded(actor or actor_from_env()),
        "action": _bounded(action),
        "target": _bounded(target),
        "outcome": _bounded(outcome),
        "source": None if source is None else _bounded(source),
        "request_id": None if request_id is None else _bounded(request_id),
        "details": plain if size <= MAX_DETAILS_CHARS else {"omitted": f"{size} characters of details"},
    }


def _digest(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):  # a reader would see one value and a viewer maybe the other
        raise ValueError("a key appears twice")
    return found


def _parse(raw: bytes) -> dict[str, Any]:
    """A record as written; ValueError saying why a line is not one."""
    try:
        record = json.loads(raw, object_pairs_hook=_unique_keys)
    except ValueError as exc:  # not JSON, not UTF-8, a key twice
        raise ValueError(str(exc).split(":")[0] if raw.strip() else "a blank line") from None
    if not isinstance(record, dict) or list(record) != list(FIELDS):
        raise ValueError("not the fields of a record")
    if type(record["seq"]) is not int or record["seq"] < 1:
        raise ValueError("seq is not a positive integer")
    if not all(isinstance(record[k], str) and _HEX64.fullmatch(record[k]) for k in ("prev", "hash")):
        raise ValueError("prev or hash is not a sha256")
    return record


def _parse_or_none(raw: bytes) -> dict[str, Any] | None:
    try:
        return _parse(raw)
    except ValueError:
        return None


class _Head(NamedTuple):
    seq: int
    hash: str
    first: int | None = None  # the seq audit.jsonl starts with: removing its first lines shows too


_START = _Head(0, GENESIS)


def _read_head(folder: Path) -> _Head | None:
    try:
        data = json.loads((folder / HEAD).read_text())
        return _Head(int(data["seq"]), str(data["hash"]), None if data.get("first") is None else int(data["first"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("%s is unreadable (%s); treating it as absent", folder / HEAD, exc)
        return None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    """Replace `path` whole: a reader sees the old content or the new, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _append_bytes(path: Path, data: bytes) -> None:
    """Append and fsync; a line an earlier crash left without its newline is ended first, not glued to."""
    if not data:
        return
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _rotated_files(folder: Path) -> list[str]:
    """Closed files, oldest first (by the seq range in their names)."""
    found = [(m, name) for name in os.listdir(folder) if (m := _ROTATED.fullmatch(name))]
    found.sort(key=lambda item: (int(item[0][1]), int(item[0][2]), int(item[0][3] or 0)))
    return [name for _, name in found]


def _log_files(folder: Path) -> list[str]:
    return _rotated_files(folder) + ([CURRENT] if (folder / CURRENT).exists() else [])


def _tail_records(path: Path, limit: int) -> list[dict[str, Any]]:
    """The records in the last `limit` bytes of `path`, in order (lines that are not records left out)."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - limit)
        f.seek(start)
        lines = f.read().split(b"\n")
    return [r for r in map(_parse_or_none, lines[1:] if start else lines) if r is not None]


def _lines(fh: IO[bytes], size: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for the first `size` bytes of a file: what it held when the snapshot was taken."""
    fh.seek(0)
    consumed = 0
    for number, raw in enumerate(fh, start=1):
        if consumed >= size:
            return
        raw = raw[: size - consumed]
        consumed += len(raw)
        yield number, raw.removesuffix(b"\n")


class AuditLog:
    """The append-only, hash-chained log in `folder`; any number of processes and threads may append at once."""

    def __init__(self, folder: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, keep_files: int | None = None):
        """`keep_files`: at most this many closed files are kept, the oldest removed on rotation (a server's log,
        which hostile traffic could otherwise grow without end); None keeps all. `verify` notes where the kept
        chain starts."""
        if max_bytes < 1:
            raise ValueError(f"max_bytes {max_bytes}: must be at least 1")
        if keep_files is not None and keep_files < 1:
            raise ValueError(f"keep_files {keep_files}: must be at least 1")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.keep_files = keep_files
        self._threads = threading.Lock()
        self._processes = FileLock(self.folder / ".lock", mode=0o600)

    def append(
        self,
        action: str,
        target: str,
        outcome: str = "ok",
        actor: str | None = None,
        source: str | None = None,
        request_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write one record, fsynced, and return it; `actor` defaults to the OS user (`user:<name>`)."""
        return self._write([_entry(action, target, outcome, actor, source, request_id, details)])[0]

    def _write(self, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Chain `entries` on, rotating as needed, with one fsync; the head moves only once they are on disk."""
        if not self.folder.is_dir():
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.folder / CURRENT
        with self._threads, self._processes:
            head = self._head()
            size = path.stat().st_size if path.exists() else 0
            first, pending, records = head.first, bytearray(), []
            for entry in entries:
                record = {"seq": head.seq + 1, **entry, "prev": head.hash}
                record["hash"] = _digest(record)
                line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
                if size and size + len(line) > self.max_bytes:
                    _append_bytes(path, bytes(pending))
                    pending.clear()
                    self._rotate(first, head.seq)
                    size = 0
                if not size:
                    first = record["seq"]
                pending += line
                size += len(line)
                records.append(record)
                head = _Head(record["seq"], record["hash"], first)
            _append_bytes(path, bytes(pending))
            _write_json(self.folder / HEAD, {"seq": head.seq, "hash": head.hash, "file": CURRENT, "first": first})
        return records

    def _head(self) -> _Head:
        seq, digest, first = self._chain_end()
        if first is None and (self.folder / CURRENT).exists():
            with (self.folder / CURRENT).open("rb") as f:
                first = (_parse_or_none(f.readline()) or {}).get("seq")
        return _Head(seq, digest, first)

    def _chain_end(self) -> _Head:
        """head.json, moved on past any records an append wrote before dying; from the last record without it."""
        files = _log_files(self.folder)
        newest = next((self.folder / n for n in reversed(files) if (self.folder / n).stat().st_size), None)
        stored = _read_head(self.folder)
        tail = _tail_records(newest, 16 * 1024) if newest else []
        if newest and stored is not None and (not tail or tail[-1]["hash"] != stored.hash):
            tail = _tail_records(newest, 1024 * 1024)  # an append that died may have left several lines after it
        if stored is None:
            if not tail:
                return _START
            log.warning("%s: no head.json; chaining on from the last record, seq %d", self.folder, tail[-1]["seq"])
            return _Head(tail[-1]["seq"], tail[-1]["hash"])
        for i, record in enumerate(tail):
            if record["seq"] != stored.seq or record["hash"] != stored.hash:
                continue
            head = stored
            for after in tail[i + 1 :]:
                if after["seq"] != head.seq + 1 or after["prev"] != head.hash or _digest(after) != after["hash"]:
                    break
                head = _Head(after["seq"], after["hash"], stored.first)
            return head
        # The end of the log does not hold the head: records were removed or changed. Chaining on from the head
        # keeps that visible to `verify` (a gap) instead of healing over it.
        log.warning(
            "%s: the log does not end with head.json's seq %d; run `modelfleet audit verify`", self.folder, stored.seq
        )
        return stored

    def _rotate(self, first: int | None, last: int) -> None:
        current = self.folder / CURRENT
        name = f"audit-{last if first is None else first:012d}-{last:012d}"
        target, n = self.folder / f"{name}.jsonl", 0
        while target.exists():  # never over a closed file; verify will say why the names disagree
            n += 1
            target = self.folder / f"{name}.{n}.jsonl"
        os.rename(current, target)
        if self.keep_files is not None:
            for old in _rotated_files(self.folder)[: -self.keep_files]:
                os.unlink(self.folder / old)
        _fsync_dir(self.folder)


# ---- reading: one consistent snapshot ------------------------------------------------------------------------------


@contextlib.contextmanager
def _snapshot(folder: Path) -> Iterator[tuple[_Head | None, list[tuple[str, IO[bytes], int]]]]:
    """head.json and every file's handle and size, taken together under the lock: appends and rotations that follow
    cannot make them disagree (an open handle survives a rename)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no audit log at {folder}")
    with contextlib.ExitStack() as files:
        lock, locked = FileLock(folder / ".lock", mode=0o600), False
        if (folder / ".lock").exists():  # a writer has been here (a copy shipped elsewhere is left as it is)
            try:
                lock.acquire(timeout=30)
                locked = True
            except OSError:  # no write access to the folder, or a stuck writer: reading head first is still safe
                pass
        try:
            head = _read_head(folder)
            handles: list[tuple[str, IO[bytes], int]] = []
            for name in _log_files(folder):
                fh = files.enter_context((folder / name).open("rb"))
                handles.append((name, fh, os.fstat(fh.fileno()).st_size))
        finally:
            if locked:
                lock.release()
        yield head, handles


# ---- verify ------------------------------------------------------------------------------------------------------


class Problem(NamedTuple):
    file: str
    line: int | None  # None: the file as a whole, or the log's end
    kind: str  # edited, missing, out_of_order, duplicate, unparseable, misnamed, truncated, head_mismatch
    message: str


@dataclass
class VerifyResult:
    records: int = 0  # lines that parsed as records
    files: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts that are not tampering (retention, a crashed append)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = [p._asdict() for p in self.problems]
        return {"ok": self.ok, **data}


class _Chain:
    """What verify knows as it walks the records in file order."""

    WINDOW = 100_000  # seqs whose hash and place are remembered, for links, reorderings and repeats

    def __init__(self, result: VerifyResult):
        self.result = result
        self.top = 0  # the highest seq seen
        self.previous: int | None = None  # the seq on the line before
        self.seen: dict[int, tuple[str, str, int]] = {}  # seq -> (hash, file, line)
        self.gaps: list[list[Any]] = []  # [first, last, file, line, found]: seqs not seen (yet)
        self.garbled = 0  # lines since the last good record that were not (trustworthy) records

    def problem(self, file: str, line: int | None, kind: str, message: str) -> None:
        self.result.problems.append(Problem(file, line, kind, message))

    def bad_line(self, file: str, line: int, reason: str) -> None:
        self.problem(file, line, "unparseable", f"line {line} of {file} is not an audit record ({reason})")
        self.garbled += 1

    def record(self, file: str, line: int, record: dict[str, Any]) -> bool:
        """Check one record against the chain so far; False if its own hash fails."""
        self.result.records += 1
        seq = record["seq"]
        if _digest(record) != record["hash"]:
            self.problem(
                file, line, "edited", f"line {line} of {file} was edited (its content does not match its hash)"
            )
            self.garbled += 1  # its seq and hash cannot be trusted: the chain steps over it
            return False
        if self.previous is None:
            self.start(file, line, record)
        elif seq > self.top:
            missing_from = self.top + self.garbled + 1  # lines that were not records may be the ones before it
            if missing_from < seq:
                self.gaps.append([missing_from, seq - 1, file, line, seq])
            self.link(file, line, record)
            self.top = seq
        elif self.fill_gap(seq):
            where = f"line {line} of {file}"
            self.problem(file, line, "out_of_order", f"{where} is out of order (seq {seq} after seq {self.previous})")
            self.link(file, line, record)
        elif seq in self.seen:
            _, first_file, first_line = self.seen[seq]
            self.problem(
                file, line, "duplicate", f"line {line} of {file} repeats seq {seq} (line {first_line} of {first_file})"
            )
            self.garbled, self.previous = 0, seq
            return True
        else:  # before the start of the chain, or so far back it is no longer remembered
            where = f"line {line} of {file}"
            self.problem(file, line, "out_of_order", f"{where} is out of order (seq {seq} after seq {self.previous})")
        self.seen[seq] = (record["hash"], file, line)
        if len(self.seen) > 2 * self.WINDOW:
            self.seen = {s: v for s, v in self.seen.items() if s > self.top - self.WINDOW}
        self.garbled, self.previous = 0, seq
        return True

    def start(self, file: str, line: int, record: dict[str, Any]) -> None:
        seq = self.top = self.result.first_seq = record["seq"]
        if seq == 1 and record["prev"] != GENESIS:
            self.problem(file, line, "edited", f"line {line} of {file} is seq 1 but does not start the chain")
        elif seq - self.garbled > 1:
            self.result.notes.append(
                f"the chain starts at seq {seq}: the records before it are not here "
                "(older files removed by retention, or deleted)"
            )

    def link(self, file: str, line: int, record: dict[str, Any]) -> None:
        """A record's prev must be the hash of the record before it, wherever that one is."""
        before = self.seen.get(record["seq"] - 1)
        if before is not None and record["prev"] != before[0]:
            self.problem(
                before[1],
                before[2],
                "edited",
                f"line {before[2]} of {before[1]} was edited and re-hashed, or replaced "
                f"(line {line} of {file}, the record after it, does not chain to it)",
            )

    def fill_gap(self, seq: int) -> bool:
        for i, (first, last, *where) in enumerate(self.gaps):
            if first <= seq <= last:
                self.gaps[i : i + 1] = [g for g in ([first, seq - 1, *where], [seq + 1, last, *where]) if g[0] <= g[1]]
                return True
        return False

    def finish(self, head: _Head | None) -> None:
        for first, last, file, line, found in self.gaps:
            count = last - first + 1
            what = "a record is" if count == 1 else f"{count} records are"
            expected = f"seq {first}" if count == 1 else f"seq {first}..{last}"
            self.problem(
                file,
                line,
                "missing",
                f"{what} missing before line {line} of {file} ({expected} expected, {found} found)",
            )
        self.result.last_seq = self.top or None
        if head is None:
            if self.result.records:
                self.result.notes.append(f"no {HEAD}: removing the newest records would not show")
            return
        removed = head.seq - self.top - self.garbled  # trailing lines that are not records stand for some of them
        if removed > 0:
            what = "the last record was" if removed == 1 else f"the last {removed} records were"
            self.problem(
                CURRENT,
                None,
                "truncated",
                f"{what} removed ({HEAD} names seq {head.seq}; the log ends at seq {self.top})",
            )
        known = self.seen.get(head.seq)
        if known is not None and known[0] != head.hash:
            self.problem(
                known[1],
                known[2],
                "head_mismatch",
                f"line {known[2]} of {known[1]} (seq {head.seq}) does not match {HEAD}: it was edited and re-hashed, "
                "or replaced",
            )
        if head.seq < self.top and known is not None and known[0] == head.hash:
            self.result.notes.append(
                f"{self.top - head.seq} records follow {HEAD}'s seq {head.seq}: an append ended before moving "
                "the head; the next append adopts them"
            )


def verify(folder: str | Path) -> VerifyResult:
    """Walk every file, oldest first, and name each edited, missing, reordered or unreadable line."""
    folder, result = Path(folder), VerifyResult()
    chain = _Chain(result)
    with _snapshot(folder) as (head, files):
        for name, fh, size in files:
            result.files += 1
            earlier = result.records
            marks = [r["seq"] if (r := _checked(chain, name, n, raw)) else None for n, raw in _lines(fh, size)]
            seqs = [seq for seq in marks if seq is not None]
            if not seqs:
                continue
            # Lines that are not records (already named) stand for those that were there.
            starts = min(seqs) - marks.index(seqs[0])
            ends = max(seqs) + len(marks) - 1 - max(i for i, seq in enumerate(marks) if seq is not None)
            named = _ROTATED.fullmatch(name)
            if named and (starts, ends) != (int(named[1]), int(named[2])):
                chain.problem(
                    name,
                    None,
                    "misnamed",
                    f"{name} holds seq {starts}..{ends}, not what its name says: lines were removed from its start "
                    "or end, or it was renamed",
                )
            # With older files before it, a gap shows removed first lines; without, only the head can tell.
            if name == CURRENT and not earlier and head and head.first is not None and starts != head.first:
                chain.problem(
                    name,
                    1,
                    "missing",
                    f"{name} starts at seq {starts}, but {HEAD} says seq {head.first}: "
                    + ("its first lines were removed" if starts > head.first else "lines were added before them"),
                )
        chain.finish(head)
    order = {name: i for i, (name, _, _) in enumerate(files)}
    result.problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line is None, p.line or 0))
    return result


def _checked(chain: _Chain, file: str, line: int, raw: bytes) -> dict[str, Any] | None:
    try:
        record = _parse(raw)
    except ValueError as exc:
        chain.bad_line(file, line, str(exc))
        return None
    return record if chain.record(file, line, record) else None


# ---- query and ship ---------------------------------------------------------------------------------------------


def _names_model(record: Mapping[str, Any], model: str) -> bool:
    target, details = record["target"], record["details"]
    return (
        target in (model, f"models:/{model}")
        or target.startswith((f"models:/{model}/", f"{model}@"))
        or (isinstance(details, dict) and details.get("model") == model)
    )


def _matches(
    record: Mapping[str, Any], since: datetime | None, actor: str | None, model: str | None, action: str | None
) -> bool:
    if actor is not None and actor not in (record["actor"], str(record["actor"]).partition(":")[2]):
        return False
    if action is not None and not fnmatch.fnmatchcase(str(record["action"]), action):
        return False
    if model is not None and not _names_model(record, model):
        return False
    if since is not None:
        try:
            return datetime.fromisoformat(record["time"]) >= since
        except (TypeError, ValueError):
            return False
    return True


def query(
    folder: str | Path,
    since: datetime | None = None,
    actor: str | None = None,
    model: str | None = None,
    action: str | None = None,
    newest_files: int | None = None,
) -> list[dict[str, Any]]:
    """Records matching every filter given, in log order. `actor`: exact, or the name after `user:`/`key:`;
    `action`: an fnmatch pattern ('rollout.*'); `model`: targets `models:/NAME/...`, `NAME@alias`, `NAME`, or
    details.model; `since`: aware, or naive UTC; `newest_files`: read only the newest files (a page that reloads
    need not read a server's whole log). Lines that are not records are skipped (`verify` names them)."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    with _snapshot(Path(folder)) as (_, files):
        return [
            record
            for _, fh, size in (files[-newest_files:] if newest_files else files)
            for _, raw in _lines(fh, size)
            if (record := _parse_or_none(raw)) is not None and _matches(record, since, actor, model, action)
        ]


def ship(folder: str | Path, uri: str, include_current: bool = False) -> list[str]:
    """Upload every closed file not yet shipped to `uri` as `uri/<file name>`; the names uploaded, in order.

    What went where is kept in shipped.json, per destination. `include_current` also uploads the open file as it is
    now, under the name it will have when closed if nothing is appended before then. Raises StorageError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no audit log at {folder}")
    destination = resolve_uri(uri).rstrip("/")
    scheme_of(destination)  # an unknown scheme fails here, naming the URI given, before anything is uploaded
    book_path, uploaded = folder / SHIPPED, []
    with FileLock(folder / ".ship.lock", mode=0o600), tempfile.TemporaryDirectory(dir=folder) as scratch:
        book = json.loads(book_path.read_text()) if book_path.exists() else {}
        shipped = set(book.get(destination, []))
        with _snapshot(folder) as (_, files):
            todo = [(name, folder / name) for name, _, _ in files if name != CURRENT]
            open_file = [(fh, size) for name, fh, size in files if name == CURRENT and size]
            if include_current and open_file:
                todo.append(_copy_current(*open_file[0], Path(scratch)))
        for name, path in todo:
            if name in shipped:
                continue
            upload(path, f"{destination}/{name}")
            shipped.add(name)
            uploaded.append(name)
            book[destination] = sorted(shipped)
            _write_json(book_path, book)
    return uploaded


def _copy_current(fh: IO[bytes], size: int, scratch: Path) -> tuple[str, Path]:
    copy = scratch / CURRENT
    with copy.open("wb") as out:
        for _, raw in _lines(fh, size):
            out.write(raw + b"\n")
    with copy.open("rb") as f:
        first = _parse_or_none(f.readline())
    tail = _tail_records(copy, 1024 * 1024)
    last = tail[-1] if tail else None
    if first is None or last is None:
        raise ValueError(f"cannot name the open file {CURRENT}: its first or last line is not a record; verify it")
    return f"audit-{first['seq']:012d}-{last['seq']:012d}.jsonl", copy


# ---- for servers: records written off the request path -------------------------------------------------------------


class BackgroundAuditWriter:
    """Appends records from a daemon thread, so a request never waits for the disk or the lock.

    `submit` never blocks: when `max_queue` records are waiting it drops the record and counts it in `dropped` (a
    flood of bad keys must not slow the server down); the writer then appends an `audit.dropped` record saying how
    many, so the loss itself is in the chain. `close()` (or exit) waits a bounded time for the queue.
    """

    def __init__(self, log: AuditLog, max_queue: int = 10_000, *, start: bool = True):
        self.log = log
        self.max_queue = max_queue
        self.dropped = 0
        self.written = 0
        self.failed = 0  # records lost to an error while appending (a full disk)
        self._reported_drops = 0
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="modelfleet-audit", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        self._worker.start()
        atexit.register(self.close)

    def submit(
        self,
        action: str,
        target: str,
        outcome: str = "ok",
        actor: str | None = None,
        source: str | None = None,
        request_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> bool:
        """Queue a record stamped now; False if it was dropped (queue full, or closed)."""
        entry = _entry(action, target, outcome, actor, source, request_id, details)
        with self._cond:
            if self._closed or len(self._pending) >= self.max_queue:
                self.dropped += 1
                if self.dropped == self._reported_drops + 1:
                    log.warning("audit queue full (%d waiting): dropping records until it drains", self.max_queue)
                return False
            self._pending.append(entry)
            self._cond.notify()
        return True

    def close(self, timeout_s: float = 5) -> None:
        """Take no more records; wait up to `timeout_s` for those queued to be written."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        atexit.unregister(self.close)
        if self._worker.is_alive():
            self._worker.join(timeout_s)
        with self._cond:
            left = len(self._pending)
        if left or self._worker.is_alive():
            log.error("%d audit records not written before close (the log at %s)", left, self.log.folder)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = [self._pending.popleft() for _ in range(min(_BATCH, len(self._pending)))]
                dropped = self.dropped - self._reported_drops
                self._reported_drops = self.dropped
            if dropped:
                batch.append(_entry("audit.dropped", "audit", "failed", None, None, None, {"dropped": dropped}))
            try:
                self.log._write(batch)
                self.written += len(batch)
            except Exception:  # a full disk, a removed folder: the server carries on, the log says what was lost
                self.failed += len(batch)
                log.exception("could not append %d audit records to %s", len(batch), self.log.folder)
