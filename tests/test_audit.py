"""The audit log: its chain against every kind of tampering, rotation, several writers, query, ship, the CLI.

No Ray. Tampering is done the way an intruder would do it, on the file's text; expectations name the exact problems
`verify` must report, so noise (one edit reported three ways) fails a test as surely as silence does.
"""

from __future__ import annotations

import getpass
import hashlib
import itertools
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from filelock import FileLock
from typer.testing import CliRunner

from modelfleet.cli.audit import app
from monitoring.audit import (
    CURRENT,
    FIELDS,
    GENESIS,
    AuditLog,
    BackgroundAuditWriter,
    actor_from_env,
    audit_folder,
    query,
    ship,
    verify,
)
from tests.helpers import ROOT

ROTATED_1, ROTATED_2, ROTATED_3 = (f"audit-{a:012d}-{b:012d}.jsonl" for a, b in ((1, 3), (4, 6), (7, 9)))


def _written(folder: Path, count: int, **options: int) -> AuditLog:
    log = AuditLog(folder, **options)
    for n in range(1, count + 1):
        log.append("deploy", f"models:/digits/{n}", actor="key:ci", details={"n": n})
    return log


def _rotating(folder: Path, count: int) -> AuditLog:
    """Three records a file (each line is 360 to 370 bytes)."""
    return _written(folder, count, max_bytes=1200)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _canonical_hash(record: dict) -> str:
    """The hash as docs/audit.md defines it, written out independently of the module."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _problems(folder: Path) -> list[tuple[str, str]]:
    return [(p.kind, p.message) for p in verify(folder).problems]


def test_records_are_chained_json_lines_in_a_private_folder(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    log = _written(folder, 3)
    denied = log.append(
        "request.denied", "/v2/models/digits/infer", "denied", actor="key:unknown", source="10.0.0.7", request_id="r-1"
    )
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE((folder / n).stat().st_mode) for n in (CURRENT, "head.json")} == {0o600}
    records = [json.loads(line) for line in _lines(folder / CURRENT)]
    assert [list(r) for r in records] == [list(FIELDS)] * 4
    assert [r["seq"] for r in records] == [1, 2, 3, 4] and records[-1] == denied
    assert records[0]["prev"] == GENESIS
    assert all(r["hash"] == _canonical_hash(r) for r in records)
    assert all(after["prev"] == before["hash"] for before, after in itertools.pairwise(records))
    assert datetime.strptime(denied["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) <= datetime.now(UTC)
    assert (denied["actor"], denied["source"], denied["request_id"]) == ("key:unknown", "10.0.0.7", "r-1")
    assert log.append("cluster.up", "local-sim")["actor"] == actor_from_env() == f"user:{getpass.getuser()}"
    result = verify(folder)
    assert (result.ok, result.records, result.first_seq, result.last_seq, result.files) == (True, 5, 1, 5, 1)
    assert result.notes == []


def test_details_are_checked_and_client_chosen_fields_are_bounded(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    with pytest.raises(ValueError, match="looks like a secret"):
        log.append("key.created", "keys.yaml", details={"api_key": "mf_x"})
    with pytest.raises(ValueError):
        log.append("deploy", "x", details={"ratio": float("nan")})
    record = log.append("request.denied", "/" + "a" * 5000, "denied", details={"blob": "b" * 9000, 1: (2, 3)})
    assert len(record["target"]) < 600 and record["target"].endswith("[4489 more]")
    assert record["details"] == {
        "omitted": f"{len(json.dumps({'blob': 'b' * 9000, '1': [2, 3]}))} characters of details"
    }
    small = log.append("deploy", "x", details={1: (2, 3)})
    assert small["details"] == {"1": [2, 3]}  # as verify reads it back, so the hash holds
    assert verify(tmp_path).ok


def _edit(lines: list[str]) -> None:
    assert '"outcome":"ok"' in lines[2]
    lines[2] = lines[2].replace('"outcome":"ok"', '"outcome":"failed"')


def _edit_and_rehash(index: int) -> Callable[[list[str]], None]:
    def tamper(lines: list[str]) -> None:
        record = json.loads(lines[index])
        record["actor"] = "user:mallory"
        record["hash"] = _canonical_hash(record)
        lines[index] = json.dumps(record, separators=(",", ":")) + "\n"

    return tamper


def _swap(lines: list[str]) -> None:
    lines[1], lines[2] = lines[2], lines[1]


def _move_second_to_end(lines: list[str]) -> None:
    lines.append(lines.pop(1))


TAMPERING = {
    "edited": (_edit, [("edited", "line 3 of audit.jsonl was edited (its content does not match its hash)")]),
    "edited and re-hashed": (
        _edit_and_rehash(2),
        [("edited", "line 3 of audit.jsonl was edited and re-hashed, or replaced (line 4 of audit.jsonl, the record")],
    ),
    "last edited and re-hashed": (
        _edit_and_rehash(5),
        [("head_mismatch", "line 6 of audit.jsonl (seq 6) does not match head.json")],
    ),
    "removed": (
        lambda lines: lines.pop(2),
        [("missing", "a record is missing before line 3 of audit.jsonl (seq 3 expected, 4 found)")],
    ),
    "two removed": (
        lambda lines: lines.__delitem__(slice(1, 3)),
        [("missing", "2 records are missing before line 2 of audit.jsonl (seq 2..3 expected, 4 found)")],
    ),
    "swapped": (_swap, [("out_of_order", "line 3 of audit.jsonl is out of order (seq 2 after seq 3)")]),
    "moved": (_move_second_to_end, [("out_of_order", "line 6 of audit.jsonl is out of order (seq 2 after seq 6)")]),
    "tail removed": (lambda lines: lines.__delitem__(slice(4, 6)), [("truncated", "the last 2 records were removed")]),
    "first removed": (
        lambda lines: lines.pop(0),
        [("missing", "audit.jsonl starts at seq 2, but head.json says seq 1: its first lines were removed")],
    ),
    "garbled": (
        lambda lines: lines.__setitem__(2, "garbage\n"),
        [("unparseable", "line 3 of audit.jsonl is not an audit record (Expecting value)")],
    ),
    "garbage added": (
        lambda lines: lines.insert(3, '{"seq": 4}\n'),
        [("unparseable", "line 4 of audit.jsonl is not an audit record (not the fields of a record)")],
    ),
    "copied": (lambda lines: lines.insert(3, lines[2]), [("duplicate", "line 4 of audit.jsonl repeats seq 3")]),
    "a key twice": (
        lambda lines: lines.__setitem__(2, lines[2].replace('{"seq"', '{"actor":"user:x","seq"')),
        [("unparseable", "line 3 of audit.jsonl is not an audit record (a key appears twice)")],
    ),
}


@pytest.mark.parametrize("tampering", TAMPERING)
def test_verify_names_each_kind_of_tampering_once(tmp_path: Path, tampering: str) -> None:
    tamper, expected = TAMPERING[tampering]
    _written(tmp_path, 6)
    assert verify(tmp_path).ok
    lines = _lines(tmp_path / CURRENT)
    tamper(lines)
    (tmp_path / CURRENT).write_text("".join(lines))
    found = _problems(tmp_path)
    assert [kind for kind, _ in found] == [kind for kind, _ in expected], found
    assert all(message.startswith(start) for (_, message), (_, start) in zip(found, expected, strict=True)), found


def test_rotation_keeps_one_chain_across_files(tmp_path: Path) -> None:
    _rotating(tmp_path, 11)
    assert sorted(p.name for p in tmp_path.glob("audit*.jsonl")) == [ROTATED_1, ROTATED_2, ROTATED_3, CURRENT]
    assert all(p.stat().st_size <= 1200 for p in tmp_path.glob("audit*.jsonl"))
    chained = [
        json.loads(line) for name in (ROTATED_1, ROTATED_2, ROTATED_3, CURRENT) for line in _lines(tmp_path / name)
    ]
    assert [r["seq"] for r in chained] == list(range(1, 12))
    assert all(after["prev"] == before["hash"] for before, after in itertools.pairwise(chained))
    result = verify(tmp_path)
    assert (result.ok, result.records, result.first_seq, result.last_seq, result.files) == (True, 11, 1, 11, 4)
    assert [r["seq"] for r in query(tmp_path, newest_files=2)] == [7, 8, 9, 10, 11]  # the last closed file and the open


def test_tampering_in_a_rotated_file_names_that_file(tmp_path: Path) -> None:
    _rotating(tmp_path, 11)
    lines = _lines(tmp_path / ROTATED_2)
    lines[1] = lines[1].replace('"key:ci"', '"key:cj"')
    (tmp_path / ROTATED_2).write_text("".join(lines))
    assert _problems(tmp_path) == [
        ("edited", f"line 2 of {ROTATED_2} was edited (its content does not match its hash)")
    ]


def test_retention_of_the_oldest_file_is_a_note_but_a_removed_middle_file_is_missing_records(tmp_path: Path) -> None:
    for folder in (tmp_path / "retention", tmp_path / "removal"):
        _rotating(folder, 11)
    (tmp_path / "retention" / ROTATED_1).unlink()
    result = verify(tmp_path / "retention")
    assert (result.ok, result.first_seq, result.records) == (True, 4, 8)
    assert result.notes == [
        "the chain starts at seq 4: the records before it are not here (older files removed by retention, or deleted)"
    ]
    (tmp_path / "removal" / ROTATED_2).unlink()
    assert _problems(tmp_path / "removal") == [
        ("missing", f"3 records are missing before line 1 of {ROTATED_3} (seq 4..6 expected, 7 found)")
    ]


def test_a_log_that_keeps_few_files_removes_the_oldest_and_stays_verifiable(tmp_path: Path) -> None:
    """A server's log (denied requests) keeps a bounded number of closed files: hostile traffic cannot fill the disk."""
    _written(tmp_path, 20, max_bytes=1200, keep_files=2)  # 3 records a file: 6 closed files made, 2 kept
    rotated = sorted(p.name for p in tmp_path.glob("audit-*.jsonl"))
    assert len(rotated) == 2, rotated
    result = verify(tmp_path)
    assert result.ok and result.last_seq == 20 and result.first_seq == 13, result.as_dict()
    assert result.notes and "starts at seq 13" in result.notes[0]


def test_a_rotated_file_cut_at_its_start_does_not_match_its_name(tmp_path: Path) -> None:
    _rotating(tmp_path, 11)
    lines = _lines(tmp_path / ROTATED_1)
    (tmp_path / ROTATED_1).write_text("".join(lines[1:]))
    result = verify(tmp_path)
    assert [(p.kind, p.file) for p in result.problems] == [("misnamed", ROTATED_1)]
    assert "holds seq 2..3, not what its name says" in result.problems[0].message


def test_appending_after_removed_records_keeps_the_gap_visible(tmp_path: Path) -> None:
    log = _written(tmp_path, 6)
    (tmp_path / CURRENT).write_text("".join(_lines(tmp_path / CURRENT)[:4]))
    assert log.append("deploy", "models:/digits/7")["seq"] == 7  # chained on from head.json, not from the cut end
    assert _problems(tmp_path) == [
        ("missing", "2 records are missing before line 5 of audit.jsonl (seq 5..6 expected, 7 found)")
    ]


def test_an_append_that_died_before_moving_the_head_is_adopted(tmp_path: Path) -> None:
    log = _written(tmp_path, 3)
    stale_head = (tmp_path / "head.json").read_text()
    log.append("deploy", "a")
    log.append("deploy", "b")
    (tmp_path / "head.json").write_text(stale_head)  # as if the process died after its fsync, before the head
    result = verify(tmp_path)
    assert result.ok and result.notes[0].startswith("2 records follow head.json's seq 3")
    assert log.append("deploy", "c")["seq"] == 6
    assert verify(tmp_path).ok and verify(tmp_path).notes == []
    (tmp_path / "head.json").unlink()
    assert "no head.json" in verify(tmp_path).notes[0]
    assert log.append("deploy", "d")["seq"] == 7  # recovered from the last line
    assert verify(tmp_path).ok and verify(tmp_path).notes == []


def test_a_torn_last_line_is_named_and_the_next_append_starts_a_line_of_its_own(tmp_path: Path) -> None:
    log = _written(tmp_path, 3)
    with (tmp_path / CURRENT).open("a") as f:
        f.write('{"seq":4,"id":"')  # a crash in the middle of a write
    log.append("deploy", "after")
    assert [kind for kind, _ in _problems(tmp_path)] == ["unparseable"]
    assert len(_lines(tmp_path / CURRENT)) == 5


APPENDER = """
import sys, time
from pathlib import Path
from monitoring.audit import AuditLog
folder, name, count, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
while not go.exists():
    time.sleep(0.01)
log = AuditLog(folder, max_bytes=8000)
for n in range(count):
    log.append("deploy", f"models:/{name}/{n}", actor=f"key:{name}")
"""


def test_several_processes_append_one_unbroken_chain(tmp_path: Path) -> None:
    folder, go = tmp_path / "audit", tmp_path / "go"
    writers = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(folder), f"p{i}", "50", str(go)], cwd=ROOT)
        for i in range(4)
    ]
    go.touch()  # all four start together
    assert [w.wait(timeout=120) for w in writers] == [0] * 4
    result = verify(folder)
    assert (result.ok, result.records, result.first_seq, result.last_seq) == (True, 200, 1, 200), result.problems
    assert len(list(folder.glob("audit-*.jsonl"))) >= 3  # rotations happened while others waited on the lock
    for i in range(4):
        mine = query(folder, actor=f"key:p{i}")
        assert [r["target"] for r in mine] == [f"models:/p{i}/{n}" for n in range(50)]


def test_query_filters_by_time_actor_model_and_action(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append("model_version.created", "models:/digits/3", actor="user:alice")
    moment = datetime.fromisoformat(
        log.append("model_version_alias.created", "digits@champion", actor="key:ci")["time"]
    )
    log.append("deploy", "fleet", actor="user:alice", details={"model": "digits"})
    log.append("deploy", "digits-v2", actor="user:bob")  # another model, whose name starts the same
    log.append("rollout.step", "models:/fraud/1", actor="user:bob")

    def seqs(**filters: object) -> list[int]:
        return [r["seq"] for r in query(tmp_path, **filters)]  # type: ignore[arg-type]

    assert seqs() == [1, 2, 3, 4, 5]
    assert seqs(model="digits") == [1, 2, 3]
    assert seqs(actor="alice") == seqs(actor="user:alice") == [1, 3]
    assert seqs(actor="key:ci") == [2] and seqs(actor="ci") == [2] and seqs(actor="user:ci") == []
    assert seqs(action="model_version*") == [1, 2] and seqs(action="deploy") == [3, 4]
    assert seqs(since=moment) == [2, 3, 4, 5]
    assert seqs(since=moment.replace(tzinfo=None)) == [2, 3, 4, 5]  # naive means UTC
    assert seqs(since=datetime.now(UTC) + timedelta(seconds=1)) == []
    assert seqs(model="digits", actor="alice", action="deploy") == [3]


def test_the_background_writer_drops_and_counts_what_does_not_fit(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    writer = BackgroundAuditWriter(log, max_queue=3, start=False)
    accepted = [writer.submit("request.denied", f"/r{n}", "denied", actor="key:unknown") for n in range(5)]
    assert accepted == [True, True, True, False, False] and writer.dropped == 2
    writer.start()
    writer.close()
    records = query(tmp_path)
    assert [r["target"] for r in records] == ["/r0", "/r1", "/r2", "audit"]
    assert (records[-1]["action"], records[-1]["details"]) == ("audit.dropped", {"dropped": 2})
    assert writer.submit("request.denied", "/late", "denied") is False and writer.dropped == 3
    assert verify(tmp_path).ok


def test_the_background_writer_never_blocks_while_the_log_is_held(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append("cluster.up", "local-sim")
    writer = BackgroundAuditWriter(log, max_queue=10)
    with FileLock(tmp_path / ".lock"):  # another process appending, or a stalled disk
        started = time.monotonic()
        accepted = sum(writer.submit("request.denied", "/x", "denied", source="203.0.113.9") for _ in range(2000))
        elapsed = time.monotonic() - started
    writer.close(timeout_s=10)
    assert elapsed < 5  # 2000 submits while every write waits on the lock (blocking would never return)
    assert 10 <= accepted <= 20 and writer.dropped == 2000 - accepted  # the queue, plus one batch taken before it
    records = query(tmp_path)
    denied = [r for r in records if r["action"] == "request.denied"]
    losses = [r["details"]["dropped"] for r in records if r["action"] == "audit.dropped"]
    assert len(denied) == accepted and sum(losses) == writer.dropped  # the loss itself is in the chain
    assert writer.written == accepted + len(losses) and writer.failed == 0
    assert verify(tmp_path).ok


def test_ship_uploads_each_closed_file_once(tmp_path: Path) -> None:
    folder, remote = tmp_path / "audit", tmp_path / "remote"
    log = _rotating(folder, 10)
    uri = f"file://{remote}"
    assert ship(folder, uri) == [ROTATED_1, ROTATED_2, ROTATED_3]
    assert all((remote / n).read_bytes() == (folder / n).read_bytes() for n in (ROTATED_1, ROTATED_2, ROTATED_3))
    assert ship(folder, uri) == []
    for target in ("x", "y", "z"):  # z closes audit-10-12
        log.append("deploy", target)
    assert ship(folder, uri + "/") == ["audit-000000000010-000000000012.jsonl"]
    assert ship(folder, uri, include_current=True) == ["audit-000000000013-000000000013.jsonl"]
    assert json.loads((folder / "shipped.json").read_text()) == {
        uri: [
            ROTATED_1,
            ROTATED_2,
            ROTATED_3,
            "audit-000000000010-000000000012.jsonl",
            "audit-000000000013-000000000013.jsonl",
        ]
    }
    # The shipped copies verify on their own: the anchor outside this folder.
    result = verify(remote)
    assert (result.ok, result.records, result.last_seq) == (True, 13, 13)
    # Each destination keeps its own account.
    assert ship(folder, f"file://{tmp_path / 'elsewhere'}") == [
        ROTATED_1,
        ROTATED_2,
        ROTATED_3,
        "audit-000000000010-000000000012.jsonl",
    ]
    assert sorted(os.listdir(remote)) == sorted(json.loads((folder / "shipped.json").read_text())[uri])


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_verify_says_intact_or_names_each_problem(tmp_path: Path) -> None:
    _rotating(tmp_path, 8)
    code, stdout, _ = _cli("verify", "--path", str(tmp_path))
    assert (code, stdout) == (0, "audit log intact: 8 records (seq 1..8) in 3 files\n")
    code, stdout, _ = _cli("verify", "--path", str(tmp_path), "--json")
    assert code == 0 and json.loads(stdout)["ok"] is True
    lines = _lines(tmp_path / ROTATED_2)
    (tmp_path / ROTATED_2).write_text(lines[1] + lines[0] + lines[2])
    (tmp_path / CURRENT).write_text(_lines(tmp_path / CURRENT)[0])
    code, stdout, stderr = _cli("verify", "--path", str(tmp_path))
    assert (code, stdout) == (1, "")
    assert stderr.splitlines() == [
        f"problem: line 2 of {ROTATED_2} is out of order (seq 4 after seq 5)",
        "problem: the last record was removed (head.json names seq 8; the log ends at seq 7)",
    ]
    code, stdout, _ = _cli("verify", "--path", str(tmp_path), "--json")
    assert code == 1 and [p["kind"] for p in json.loads(stdout)["problems"]] == ["out_of_order", "truncated"]


def test_cli_query_prints_a_table_or_json(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append("key.created", "keys.yaml", actor="user:alice", details={"name": "ci"})
    log.append("request.denied", "/v2/\x1b[2Jmodels", "denied", actor="key:?", source="198.51.100.4")
    code, stdout, _ = _cli("query", "--path", str(tmp_path), "--since", "1h")
    rows = stdout.splitlines()
    assert code == 0 and rows[0].split() == [
        "SEQ",
        "TIME",
        "ACTOR",
        "ACTION",
        "TARGET",
        "OUTCOME",
        "SOURCE",
        "REQUEST_ID",
    ]
    assert rows[1].split()[2:] == ["user:alice", "key.created", "keys.yaml", "ok", "-", "-"]
    assert "\x1b" not in stdout and "/v2/\\x1b[2Jmodels" in rows[2]  # a client's bytes cannot drive the terminal
    code, stdout, _ = _cli("query", "--path", str(tmp_path), "--actor", "alice", "--json")
    assert code == 0 and [r["action"] for r in json.loads(stdout)] == ["key.created"]
    code, stdout, _ = _cli("query", "--path", str(tmp_path), "--since", "2999-01-01T00:00:00Z")
    assert (code, stdout) == (0, "no records match\n")


def test_cli_ship_and_the_default_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_AUDIT_LOG", str(tmp_path / "audit"))
    assert audit_folder() == tmp_path / "audit"
    _rotating(audit_folder(), 4)
    code, stdout, _ = _cli("ship", str(tmp_path / "remote"))  # a plain folder
    assert (code, stdout) == (0, f"shipped 1 file to {tmp_path / 'remote'}: {ROTATED_1}\n")
    assert (tmp_path / "remote" / ROTATED_1).exists()
    assert _cli("ship", str(tmp_path / "remote"))[:2] == (0, f"nothing new to ship to {tmp_path / 'remote'}\n")
    code, _, stderr = _cli("ship", "ftp://host/audit")
    assert code == 2 and stderr.startswith("error: ftp://host/audit: unknown scheme 'ftp'")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["verify", "--path", "{missing}"],
            "error: no audit log at {missing}; pass --path or set MODELFLEET_AUDIT_LOG",
        ),
        (["query", "--path", "{folder}", "--since", "yesterday"], "error: --since 'yesterday': expected a time back"),
        (["query", "--path", "{folder}", "--since", "0s"], "error: --since '0s': pick between 1s and"),
        (["ship", "file:///nowhere", "--path", "{missing}"], "error: no audit log at {missing}"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    _written(tmp_path / "folder", 1)
    paths = {"missing": str(tmp_path / "missing"), "folder": str(tmp_path / "folder")}
    code, stdout, stderr = _cli(*(a.format(**paths) for a in args))
    assert (code, stdout) == (2, "") and stderr.startswith(message.format(**paths)) and stderr.count("\n") == 1
