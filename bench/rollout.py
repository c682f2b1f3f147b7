"""Rollouts under load at real length: what callers lose, how soon a bad version is taken back, what a shadow costs.

    python -m bench.rollout [--interval 60s] [--steps 5,25,50,100] [--users 4]

One `modelfleet run` of examples/digits/champion.yaml with a registry of its own (MODELFLEET_HOME in a temporary
folder): digits registered four times, as the good version, the same weights again, a version that fails a fifth
of its requests and one 50 ms slower (FaultyDigitsNet, its faults in the artifact). A constant load from
`modelfleet loadtest` (127.0.0.1) runs through each case:
1. a canary of the good version again: promoted, and how many requests failed (the goal: none);
2. a canary of the failing version: failed requests against the bound the issue sets (first step's share x 20% x
   two intervals of the traffic measured), and seconds from its first step to its rollback;
3. a canary of the slow version: seconds to its rollback on latency;
4. a shadow of the good version, every request copied: callers' p50/p95 beside case 1's baseline window (before
   the rollout), and the shadow's agreement.
What counts is the load generator's own tally; times are the registry's record of each step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests.app_process import AppProcess
from loadtests.chaos import BackgroundLoad

from ._harness import LOGS, REPO, console, interrupt_on_signals, print_table, write_results

SPEC = REPO / "examples/digits/champion.yaml"
DIGITS = REPO / "examples/digits/artifacts/digits/1/model.safetensors"
PIXELS = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [float(i % 17) for i in range(64)]}]
}


def _register(home: Path, folder: Path) -> dict[str, int]:
    """digits as good, good again, failing and slow, in `home`'s registry; digits@champion -> good."""
    import torch
    from safetensors.torch import load_file, save_file

    os.environ["MODELFLEET_HOME"] = str(home)
    from registry import Registry, publish

    def faulty(name: str, fail_rate: float, delay_s: float) -> Path:
        state = load_file(DIGITS) | {"fault_fail_rate": torch.tensor(fail_rate), "fault_delay_s": torch.tensor(delay_s)}
        save_file(state, folder / name)
        return folder / name

    versions = {}
    registry = Registry()
    for what, weights, net in (
        ("good", DIGITS, "DigitsNet"),
        ("good again", DIGITS, "DigitsNet"),
        ("failing 20%", faulty("failing.safetensors", 0.2, 0.0), "FaultyDigitsNet"),
        ("50 ms slower", faulty("slow.safetensors", 0.0, 0.05), "FaultyDigitsNet"),
    ):
        uri, sha256 = publish(str(weights))
        module = f"examples.digits.model:{net}"
        versions[what] = registry.register(
            "digits", artifact_uri=uri, sha256=sha256, format="safetensors", module=module
        ).version
    registry.set_alias("digits", "champion", versions["good"])
    registry.close()
    return versions


def _events(home: Path) -> list:
    from registry import Registry

    registry = Registry()
    try:
        rollout = registry.rollout("champion", "digits")
        return registry.rollout_events(rollout.id) if rollout else []
    finally:
        registry.close()


def _case(
    app: AppProcess, home: Path, folder: Path, name: str, to: int, users: int, *options: str, abort_after_s: float = 0
) -> dict:
    """One `rollout start` under a constant load (ended by `rollout abort` after `abort_after_s`, for the strategies
    that hold until an operator ends them): the load's tally and the rollout's own record."""
    load = BackgroundLoad(f"{app.url}/v2/models/digits/infer", PIXELS, folder / name.replace(" ", "-"), 3600, users)
    time.sleep(5)
    env = {**os.environ, "MODELFLEET_HOME": str(home)}
    where = [str(SPEC), "--model", "digits", "--address", str(app.ray_address)]
    command = [sys.executable, "-m", "modelfleet", "rollout", "start", *where, "--to", f"models:/digits/{to}", *options]
    try:
        started = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env
        )
        seen: dict = {}
        if abort_after_s:
            time.sleep(abort_after_s)
            status = subprocess.run(
                [sys.executable, "-m", "modelfleet", "rollout", "status", *where, "--json"],
                capture_output=True, text=True, env=env, cwd=REPO, check=True,
            )  # fmt: skip
            seen = json.loads(status.stdout)["versions"].get(str(to), {})
            abort = [sys.executable, "-m", "modelfleet", "rollout", "abort", *where]
            subprocess.run(abort, env=env, cwd=REPO)  # (refused, exit 2, if it was taken back meanwhile)
        _, stderr = started.communicate(timeout=3 * 3600)
    finally:
        summary = load.stop()
    done = subprocess.CompletedProcess(command, started.returncode, "", stderr)
    events = _events(home)
    first_step = next((e.at for e in events if e.kind == "step"), None)
    end = events[-1] if events else None
    return {
        "case": name,
        "exit": done.returncode,
        "outcome": end.kind if end else "?",
        "reason": (end.detail.get("reason") or "") if end else done.stderr[-300:],
        "seconds_from_first_step": (end.at - first_step).total_seconds() if end and first_step else None,
        "requests": summary["requests"],
        "failures": summary["failures"],
        "rps": summary["rps"],
        "p50_ms": summary["p50_ms"],
        "p95_ms": summary["p95_ms"],
        "candidate": seen,  # a held rollout's candidate as `rollout status` saw it (a shadow's agreement)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", default="60s")
    parser.add_argument("--steps", default="5,25,50,100")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--min-requests", type=int, default=100)
    args = parser.parse_args()
    interrupt_on_signals()
    LOGS.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    home = folder / "home"
    versions = _register(home, folder)
    interval_s = float(args.interval.rstrip("s"))
    judged = ["--interval", args.interval, "--min-requests", str(args.min_requests)]
    rows = []
    with AppProcess(SPEC, LOGS / "rollout-app.log", env={"MODELFLEET_HOME": str(home)}) as app:
        steps = ["--steps", args.steps]
        rows.append(_case(app, home, folder, "canary, good", versions["good again"], args.users, *steps, *judged))
        rows.append(
            _case(app, home, folder, "canary, failing 20%", versions["failing 20%"], args.users, *steps, *judged)
        )
        rows.append(
            _case(app, home, folder, "canary, 50 ms slower", versions["50 ms slower"], args.users, *steps, *judged)
        )
        shadow = ["--strategy", "shadow", "--steps", "100", *judged]
        held = 2 * interval_s + 20  # the candidate's start, then two windows
        name = "shadow, good (2 intervals, then aborted)"
        rows.append(_case(app, home, folder, name, versions["good"], args.users, *shadow, abort_after_s=held))
    first_share = float(args.steps.split(",")[0])
    failing = rows[1]
    failing["bound"] = first_share / 100 * 0.2 * 2 * interval_s * failing["rps"]
    print_table(
        f"rollouts under load (modelfleet loadtest, {args.users} users, interval {args.interval}, steps {args.steps})",
        ["case", "outcome", "s from 1st step", "requests", "failed", "bound", "req/s", "p50 ms", "p95 ms"],
        [
            [
                r["case"],
                f"{r['outcome']}: {r['reason'][:60]}" if r["reason"] else r["outcome"],
                f"{r['seconds_from_first_step']:.0f}" if r["seconds_from_first_step"] is not None else "",
                str(r["requests"]),
                str(r["failures"]),
                f"{r['bound']:.0f}" if "bound" in r else "",
                f"{r['rps']:.0f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p95_ms']:.1f}",
            ]
            for r in rows
        ],
    )
    shadowed = rows[3]["candidate"]
    if shadowed:
        console.print(
            f"shadow: {shadowed.get('shadowed')} copies, {shadowed.get('shadow_errors')} failed, agreement "
            f"{shadowed.get('agreement')}, max |diff| {shadowed.get('max_abs_diff')}, p95 {shadowed.get('p95_ms')} ms"
        )
    console.print(f"results: {write_results('rollout', {'args': vars(args), 'rows': rows})}")


if __name__ == "__main__":
    main()
