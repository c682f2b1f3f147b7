"""Cold start: from no replica to the first answer, digits and MiniLM through modelfleet and through plain Ray Serve.

Every side scales the model from zero with Ray Serve's most eager autoscaling settings (no upscale delay, metrics
every 0.1 s, back to zero 2 s after the last request: bench/coldstart_digits.yaml, bench/coldstart_embeddings.yaml
and bench/_coldstart_serve.py), one after the other on this machine. Each trial waits until the model has no replica
process left, then times one V2 request from send to answer, then a second one (warm). For modelfleet, the
replica's own log says how long fetching and loading the model took; the rest is Serve's part (the autoscaler's
decision, the actor's start, imports) plus the first inference. A third side adds a standby replica
(`standby: {num_replicas: 1, num_cpus: 0.25, idle_s: 1}`, serve_apps/standby.py), which answers while the model
has no replica of its own and drops it after 1 s idle, so every trial loads the model there too.

    python -m bench.coldstart [--trials 5] [--models digits,embeddings]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import psutil

from groundwork.processes import free_port
from serve_apps.samples import sample_v2
from serve_apps.spec import load_app_spec

from ._harness import (
    REPO,
    RESULTS,
    Server,
    Target,
    TargetFailed,
    console,
    exit_on_failure,
    interrupt_on_signals,
    print_table,
    spec_variant,
    write_results,
)

SPECS = {"digits": REPO / "bench" / "coldstart_digits.yaml", "embeddings": REPO / "bench" / "coldstart_embeddings.yaml"}
STANDBY = {"num_replicas": 1, "num_cpus": 0.25, "idle_s": 1}
RAY_SERVE_LOGS = Path("/tmp/ray/session_latest/logs/serve")
SCALE_DOWN_TIMEOUT_S = 60


@dataclass
class Side:
    name: str
    cold_s: list[float] = field(default_factory=list)
    warm_s: list[float] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)  # fetch + load, from the replica's log (modelfleet)


def _replicas(server: Server, model: str) -> int:
    """Replica processes of the model's own deployment (Ray titles them ray::ServeReplica:APP:DEPLOYMENT; the app
    is named after the model on every side)."""
    count = 0
    for process in server.processes():
        try:
            title = process.cmdline()[0] if process.cmdline() else ""
        except psutil.Error:
            continue
        head = title.split(".", 1)[0]  # while a replica runs a call, Ray appends the method's name
        deployment = head.removeprefix(f"ray::ServeReplica:{model}:")
        if deployment != head and deployment not in ("ingress", "standby"):  # the model's own replica
            count += 1
    return count


def _last_load_s(model: str, deployment: str) -> float | None:
    """The newest 'model MODEL ... loaded in Ns' line a modelfleet replica of `deployment` logged."""
    loaded = re.compile(rf"model {model} v\S+ loaded on \S+ in ([\d.]+)s")
    logs = sorted(RAY_SERVE_LOGS.glob(f"replica_{model}_{deployment}_*.log"), key=lambda p: p.stat().st_mtime)
    for log in reversed(logs):
        found = loaded.findall(log.read_text(errors="replace"))
        if found:
            return float(found[-1])
    return None


def _post(client: httpx.Client, url: str, body: bytes) -> float:
    started = time.perf_counter()
    response = client.post(url, content=body, headers={"Content-Type": "application/json"})
    took = time.perf_counter() - started
    if response.status_code != 200 or orjson.loads(response.content)["outputs"][0]["shape"][0] != 1:
        raise TargetFailed(f"{url} answered {response.status_code}: {response.content[:200]!r}")
    return took


def measure(server: Server, side: Side, model: str, trials: int, body: bytes, loads_in: str | None) -> None:
    """`loads_in`: the deployment whose log says how long the first request's model load took (None: no log)."""
    infer = f"/v2/models/{model}/infer"
    with httpx.Client(timeout=120) as client:
        for trial in range(trials):
            deadline = time.monotonic() + SCALE_DOWN_TIMEOUT_S
            while _replicas(server, model):
                if time.monotonic() > deadline:
                    raise TargetFailed(f"the model still has a replica {SCALE_DOWN_TIMEOUT_S} s after its last request")
                time.sleep(0.2)
            time.sleep(1.5)  # the replica's process gone, Serve's own bookkeeping (and a standby's idle model) settled
            side.cold_s.append(_post(client, server.url + infer, body))
            side.warm_s.append(_post(client, server.url + infer, body))
            load = _last_load_s(model, loads_in) if loads_in else None
            if load is not None:
                side.load_s.append(load)
            console.print(
                f"  {side.name} trial {trial + 1}: cold {side.cold_s[-1] * 1000:.0f} ms, warm "
                f"{side.warm_s[-1] * 1000:.1f} ms" + (f", load {load * 1000:.0f} ms" if load is not None else "")
            )


def _ms(values: list[float], q: str) -> str:
    if not values:
        return "-"
    value = statistics.median(values) if q == "p50" else max(values)
    return f"{value * 1000:.0f}"


def _modelfleet(name: str, spec: Path) -> Target:
    port = free_port()
    command = [sys.executable, "-m", "modelfleet", "run", str(spec), "--host", "127.0.0.1", "--port", str(port)]
    return Target(name, command, port)


def cold_starts(model: str, trials: int) -> list[Side]:
    """modelfleet, modelfleet with a standby, and plain Ray Serve: `trials` cold starts of `model` each."""
    spec = SPECS[model]
    body = orjson.dumps(sample_v2(load_app_spec(spec).model(model)))
    with_standby = spec_variant(
        spec, RESULTS / "coldstart" / f"{model}_standby.yaml", lambda s: s.update(standby=STANDBY)
    )
    port = free_port()
    plain = Target(
        f"coldstart-serve-{model}",
        [sys.executable, "-m", "bench._coldstart_serve", str(port), model],
        port,
        "/-/healthz",
    )
    sides = []
    for target, side, loads_in in (
        (_modelfleet(f"coldstart-modelfleet-{model}", spec), Side("modelfleet"), model),
        (_modelfleet(f"coldstart-modelfleet-standby-{model}", with_standby), Side("modelfleet + standby"), "standby"),
        (plain, Side("Ray Serve"), None),
    ):
        console.print(f"[bold]{side.name}[/bold]: {trials} cold starts of {model}")
        with Server(target) as server:
            measure(server, side, model, trials, body, loads_in)
        sides.append(side)
    return sides


def report(model: str, sides: list[Side], trials: int) -> None:
    rows = [
        [
            s.name,
            _ms(s.cold_s, "p50"),
            _ms(s.cold_s, "max"),
            _ms(s.load_s, "p50"),
            _ms([c - w for c, w in zip(s.cold_s, s.warm_s, strict=True)], "p50"),
            f"{statistics.median(s.warm_s) * 1000:.1f}",
        ]
        for s in sides
    ]
    print_table(
        f"{model}: no replica to first answer ({trials} trials each)",
        ["server", "cold p50 ms", "cold max ms", "fetch+load p50 ms", "cold - warm p50 ms", "warm p50 ms"],
        rows,
    )
    theirs = statistics.median(sides[-1].cold_s)
    for side in sides[:-1]:
        ours, worst = statistics.median(side.cold_s), max(side.cold_s)
        met = ours <= 0.5 and worst <= 1.0
        console.print(
            f"{model}, {side.name}: cold start = {ours / theirs:.2f}x plain Ray Serve's; goal p50 ≤ 500 ms and "
            f"max ≤ 1 s: {'met' if met else 'missed'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="Cold starts per side.")
    parser.add_argument("--models", default="digits,embeddings", help="Of digits, embeddings (MiniLM).")
    args = parser.parse_args()
    models = args.models.split(",")
    if unknown := [m for m in models if m not in SPECS]:
        parser.error(f"--models: no {', '.join(unknown)} here; choose from {', '.join(SPECS)}")
    interrupt_on_signals()
    results: dict[str, list[Side]] = {}
    with exit_on_failure():
        for model in models:
            results[model] = cold_starts(model, args.trials)
    for model, sides in results.items():
        report(model, sides, args.trials)
    path = write_results(
        "coldstart", {"command": " ".join(["python -m bench.coldstart", *sys.argv[1:]]), "models": results}
    )
    console.print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
