"""An echo of this tree against another revision's, alternated round by round, with bare uvicorn.

A ratio measured on another day, or by another measuring stack, cannot say
whether a code change made serving slower: this box drifts by ±15% between
runs and even between rounds. Here both revisions are served one after the
other in the same run, under the same load (`modelfleet loadtest`'s own, as in
bench.ingress), alternating the order each round; bare uvicorn runs in every
round as the yardstick. The other revision is checked out into a temporary git
worktree and served from there (its own `serve_apps` first on PYTHONPATH, which
Ray's workers inherit), with this tree's Python environment.

    python -m bench.ingress_ab REV [--rounds 3] [--duration 20] [--users 32] [--spec bench/echo_embedded.yaml]

`--spec examples/echo/app.yaml` compares the echo one hop away (a deployment of its own) instead of the embedded one.
"""

from __future__ import annotations

from ._load import run_load  # noqa: F401  (first: it imports Locust, whose gevent patches the process)

# isort: split
import argparse
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._harness import REPO, Target, console, interrupt_on_signals, print_table, write_results
from .ingress import LoadResult, measure, modelfleet_target, targets

SPEC = "bench/echo_embedded.yaml"


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """`revision` checked out (detached) in a temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="modelfleet-ab-")) / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), revision], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], check=False)


def _served_from(tree: Path, name: str, spec: str) -> Target:
    """`modelfleet run` of the tree's `spec`, with the tree's packages ahead of this one's."""
    target = modelfleet_target(name, str(tree / spec))
    target.argv = ["bash", "-c", f'cd "{tree}" && exec "$@"', "run-from-tree", *target.argv]
    target.env = {"PYTHONPATH": str(tree)}
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revision", help="The git revision to compare this tree with (a commit, tag or branch).")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of (bare, this, other), order alternating.")
    parser.add_argument("--duration", type=float, default=20, help="Seconds of measured load per target.")
    parser.add_argument("--users", type=int, default=32, help="Concurrent Locust users (no wait time).")
    parser.add_argument("--spec", default=SPEC, help="The app both revisions serve (a path inside the repository).")
    args = parser.parse_args()
    interrupt_on_signals()
    results: dict[str, list[LoadResult]] = {"bare-uvicorn": [], "this-tree": [], args.revision: []}
    try:
        with worktree(args.revision) as tree:
            bare, this = targets()[0], modelfleet_target("this-tree", args.spec)
            other = _served_from(tree, args.revision, args.spec)
            for round_ in range(args.rounds):
                pair = [this, other] if round_ % 2 == 0 else [other, this]
                for target in [bare, *pair]:
                    results[target.name].append(measure(target, args.users, args.duration))
    except KeyboardInterrupt:
        console.print("interrupted; every target was stopped")
        sys.exit(130)

    rows, summary = [], {}
    for name, runs in results.items():
        rps = [r.rps for r in runs if not r.error]
        ratios = [
            r.rps / b.rps
            for b, r in zip(results["bare-uvicorn"], runs, strict=True)
            if not (b.error or r.error) and b.rps
        ]
        summary[name] = {"rps": rps, "median_rps": statistics.median(rps) if rps else None, "vs_bare": ratios}
        rows.append(
            [
                name,
                ", ".join(f"{x:,.0f}" for x in rps),
                f"{statistics.median(rps):,.0f}" if rps else "n/a",
                ", ".join(f"{x:.2f}x" for x in ratios),
                str(sum(r.failures for r in runs)),
            ]
        )
    print_table(
        f"{args.spec}, this tree against {args.revision} ({args.users} users, {args.duration:g}s per run)",
        ["target", "req/s per round", "median req/s", "vs bare, same round", "failures"],
        rows,
    )
    path = write_results(
        "ingress_ab",
        {
            "command": f"python -m bench.ingress_ab {args.revision} --rounds {args.rounds} "
            f"--duration {args.duration:g} --users {args.users} --spec {args.spec}",
            "results": results,
            "summary": summary,
        },
    )
    console.print(f"wrote {path.relative_to(REPO)}")
    sys.exit(1 if any(r.error for runs in results.values() for r in runs) else 0)


if __name__ == "__main__":
    main()
