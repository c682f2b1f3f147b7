"""Echo throughput: modelfleet against bare uvicorn and default Ray Serve, one after another in one run.

The echo model does no work, so what is left is serving overhead. Absolute
numbers on a shared 2-core box drift from run to run; the ratio to bare
uvicorn, measured minutes apart, is what to compare across runs. Every target
gets the same load run as `modelfleet loadtest` (bench/_load.py): p50/p95/p99
from every request's own latency.

    python -m bench.ingress [--duration 20] [--users 32] [--targets modelfleet-handle-hop,...]
"""

from __future__ import annotations

from ._load import run_load  # (first: it imports Locust, whose gevent patches the process)

# isort: split
import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import orjson

from groundwork.processes import free_port
from loadtests.measure import SATURATED_CORES
from loadtests.scenario import from_bodies

from ._harness import Server, Target, TargetFailed, console, interrupt_on_signals, print_table, write_results
from ._payloads import ECHO_BODY, ECHO_PATH, JSON_HEADERS

TARGET_RATIO = 0.5  # modelfleet's echo should reach half of bare uvicorn's requests/s, with no failures
FLEET = "modelfleet-embedded"
FLEET_HANDLE = "modelfleet-handle-hop"
FLEET_UNCOALESCED = "modelfleet-handle-hop-uncoalesced"
WARM_UP_REQUESTS = 300


@dataclass
class LoadResult:
    """One target's load run: figures from its loadtests record (every request's own latency), CPU per role."""

    target: str
    users: int
    duration_s: float
    requests: int = 0
    failures: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    generator_cpu_cores: float = 0.0
    server_cpu_cores: dict[str, float] = field(default_factory=dict)
    niceness: dict[str, int] = field(default_factory=dict)
    load_avg_1m_before: float = 0.0
    error: str | None = None


def modelfleet_target(name: str, spec: str) -> Target:
    port = free_port()
    argv = [sys.executable, "-m", "modelfleet", "run", spec, "--host", "127.0.0.1", "--port", str(port)]
    return Target(name, argv, port)


def targets() -> list[Target]:
    python = sys.executable
    bare = free_port()
    serve_port, tuned_port = free_port(), free_port()
    return [
        Target(
            "bare-uvicorn",
            [
                python,
                "-m",
                "uvicorn",
                "bench._bare_echo:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(bare),
                "--workers",
                "1",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            bare,
            startup_timeout_s=30,
        ),
        # Ray's own default niceness (15) for its workers, whatever this shell says: it is "default Ray Serve".
        Target(
            "default-ray-serve",
            [python, "-m", "bench._default_serve", str(serve_port)],
            serve_port,
            env={"RAY_worker_niceness": None},
        ),
        # Ray Serve with the two knobs a user reaches for first: room for every user's request, workers not niced.
        Target(
            "ray-serve-tuned",
            [python, "-m", "bench._default_serve", str(tuned_port), "64"],
            tuned_port,
            env={"RAY_worker_niceness": "0"},
        ),
        # The echo costs less than a hop between processes: embedded in the ingress, as such a model should be.
        modelfleet_target(FLEET, "bench/echo_embedded.yaml"),
        # The same echo as a deployment of its own, one handle call away (what every non-embedded model pays):
        # concurrent requests share calls (coalescing.py), and, to see what that buys, one call per request.
        modelfleet_target(FLEET_HANDLE, "examples/echo/app.yaml"),
        modelfleet_target(FLEET_UNCOALESCED, "bench/echo_uncoalesced.yaml"),
    ]


def warm_up(url: str, requests: int = WARM_UP_REQUESTS, threads: int = 8) -> None:
    """A few hundred requests, a few at a time; each answer is checked, so a broken target stops here."""

    def one(client: httpx.Client) -> None:
        resp = client.post(url + ECHO_PATH, content=ECHO_BODY, headers=JSON_HEADERS)
        if resp.status_code != 200 or orjson.loads(resp.content)["outputs"][0]["data"] != [1, 2, 3, 4]:
            raise TargetFailed(f"{url}{ECHO_PATH} answered {resp.status_code}: {resp.text[:200]}")

    with (
        httpx.Client(timeout=30, limits=httpx.Limits(max_connections=threads)) as client,
        ThreadPoolExecutor(threads) as pool,
    ):
        for future in [pool.submit(one, client) for _ in range(requests)]:
            future.result()


def measure(target: Target, users: int, duration_s: float) -> LoadResult:
    console.print(f"[bold]{target.name}[/bold]: starting ({' '.join(target.argv[1:4])} …)")
    try:
        with Server(target) as server:
            warm_up(server.url)
            idle = server.settle()
            niceness = server.niceness()
            console.print(
                f"  warmed up ({WARM_UP_REQUESTS} requests), idle at {idle:.2f} cores; measuring {duration_s:.0f}s "
                f"with {users} users"
            )
            load_avg = os.getloadavg()[0]
            scenario = from_bodies(server.url + ECHO_PATH, [ECHO_BODY.decode()], expect='"outputs"')
            run = run_load(server, scenario, users, duration_s)
    except TargetFailed as exc:
        console.print(f"[red]{target.name} failed:[/red] {exc}")
        return LoadResult(target=target.name, users=users, duration_s=duration_s, error=str(exc))
    record = run.record
    return LoadResult(
        target=target.name,
        users=users,
        duration_s=duration_s,
        requests=record.requests,
        failures=record.failures,
        rps=record.rps,
        p50_ms=record.p50_ms or 0.0,
        p95_ms=record.p95_ms or 0.0,
        p99_ms=record.p99_ms or 0.0,
        generator_cpu_cores=record.generator_cpu_cores,
        server_cpu_cores=run.server_cpu_cores,
        niceness=niceness,
        load_avg_1m_before=load_avg,
    )


def _niceness_text(niceness: dict[str, int]) -> str:
    """The processes that serve requests, and whether anything runs at another niceness."""
    serving = {r: n for r, n in niceness.items() if r == "main" or "Proxy" in r or "ServeReplica" in r}
    others = sorted(set(niceness.values()) - set(serving.values()))
    text = ", ".join(f"{role} {nice}" for role, nice in sorted(serving.items()))
    return text + (f" (other processes: {others})" if others else "")


def _ms(value: float) -> str:
    """Tenths below 100 ms: the samples are every request's own latency, not Locust's rounded buckets."""
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def report(results: list[LoadResult]) -> dict[str, float | None]:
    base = next((r.rps for r in results if r.target == "bare-uvicorn" and not r.error and r.rps), None)
    ratios = {r.target: (r.rps / base if base and not r.error else None) for r in results}
    rows = []
    for r in results:
        if r.error:
            rows.append([r.target, "failed", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                r.target,
                f"{r.rps:,.0f}",
                _ms(r.p50_ms),
                _ms(r.p95_ms),
                _ms(r.p99_ms),
                f"{r.failures}",
                f"{ratios[r.target]:.2f}x" if ratios[r.target] is not None else "n/a",
                f"{r.generator_cpu_cores:.2f}",
            ]
        )
    print_table(
        f"Echo, POST {ECHO_PATH}",
        ["target", "req/s", "p50 ms", "p95 ms", "p99 ms", "failures", "req/s vs bare", "Locust CPU (cores)"],
        rows,
    )
    for r in results:
        if r.error:
            continue
        cpu = ", ".join(
            f"{role.removeprefix('ray::')} {cores:.2f}" for role, cores in list(r.server_cpu_cores.items())[:4]
        )
        console.print(f"{r.target}: niceness {_niceness_text(r.niceness)}; server CPU (cores) {cpu}")
        if r.generator_cpu_cores >= SATURATED_CORES:
            console.print(
                f"[yellow]warning:[/yellow] Locust used {r.generator_cpu_cores:.2f} cores against {r.target}: "
                "the generator saturates a core, so this figure is partly the generator's own limit"
            )
    for r in results:
        if r.target.startswith("modelfleet") and ratios.get(r.target) is not None:
            met = ratios[r.target] >= TARGET_RATIO and r.failures == 0
            console.print(
                f"{r.target}: target ≥{TARGET_RATIO}x bare uvicorn req/s with 0 failures "
                f"{'met' if met else 'missed'} ({ratios[r.target]:.2f}x, {r.failures} failures)"
            )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=20, help="Seconds of measured load per target.")
    parser.add_argument("--users", type=int, default=32, help="Concurrent Locust users (no wait time).")
    parser.add_argument(
        "--targets",
        default="",
        help="Comma-separated target names to run (default: all); bare-uvicorn always runs, as the baseline.",
    )
    args = parser.parse_args()
    chosen = {name for name in args.targets.split(",") if name}
    interrupt_on_signals()
    try:
        results = [
            measure(target, args.users, args.duration)
            for target in targets()
            if not chosen or target.name in chosen | {"bare-uvicorn"}
        ]
    except KeyboardInterrupt:
        console.print("interrupted; every target was stopped")
        sys.exit(130)
    ratios = report(results)
    path = write_results(
        "ingress",
        {
            "command": f"python -m bench.ingress --duration {args.duration:g} --users {args.users}"
            + (f" --targets {args.targets}" if chosen else ""),
            "results": results,
            "rps_vs_bare": ratios,
        },
    )
    console.print(f"wrote {path.relative_to(path.parents[2])}")
    sys.exit(1 if any(r.error for r in results) else 0)


if __name__ == "__main__":
    main()
