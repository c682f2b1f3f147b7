"""MiniLM throughput: modelfleet over HTTP against SentenceTransformer.encode in this process, same sentences.

The in-process figure is the ceiling for this box; the ratio says what HTTP,
JSON, batching across requests and Ray cost on top. The commonest traffic
comes first: many callers sending one sentence each (32 and 64 of them), where
only batching across requests can reach the ceiling (the mean rows per model
batch say whether it did); then 16 and 64 sentences per request. Each HTTP setting is first
checked: every sentence sent once, every vector that comes back compared with
the in-process one (a fast wrong answer does not count). Then it is measured
with `modelfleet loadtest`'s own run (bench/_load.py) for as long as the best
raw run took, so both sides get the same time for the same sentences.

    python -m bench.embeddings [--sentences 2048]
"""

from __future__ import annotations

from ._load import run_load  # (first: it imports Locust, whose gevent patches the process)

# isort: split
import argparse
import math
import os
import random
import sys
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
import psutil
import yaml

from groundwork.processes import free_port
from loadtests.scenario import from_bodies

from ._bentoml import BENTOML_VERSION, bentoml_embeddings
from ._harness import (
    Server,
    Target,
    TargetFailed,
    console,
    exit_on_failure,
    interrupt_on_signals,
    print_table,
    write_results,
)
from ._payloads import JSON_HEADERS, embeddings_body

APP = Path("bench/embeddings_app.yaml")
MODEL_DIR = Path("examples/embeddings/artifacts/all-MiniLM-L6-v2")
INFER_PATH = "/v2/models/embeddings/infer"
BATCH_SIZES = (8, 16, 32, 64, 128)
REQUEST_SIZES = (1, 16, 64)
# Per request size, the callers to try: one sentence each needs many of them to fill a batch.
CONCURRENCIES = {1: (32, 64), 16: (2, 4, 8), 64: (2, 4, 8)}
TARGET_RATIO = 0.85  # over HTTP, at least 85% of in-process sentences/s
SINGLE_TARGET_RATIO = 0.8  # one sentence per request, batched across callers: at least 80%
BENTO_TARGET_RATIO = 2.0  # ... and at least twice what BentoML's adaptive batching serves of the same
TOLERANCE = 1e-4  # largest |served - in-process| accepted in any vector component
MIN_HTTP_RUN_S = 5.0  # a load run shorter than this is mostly its first and last requests

WORDS = (
    "the a model server request batch token vector sentence cluster replica latency throughput cold warm "
    "quick brown fox jumps over lazy dog river mountain city market coffee morning evening rain sun wind "
    "engineer deploys reads writes measures compares returns answers slowly quickly never always often "
    "blue green small large old new early late careful simple busy quiet open closed north south"
).split()


def make_sentences(count: int, seed: int = 0) -> list[str]:
    """Synthetic sentences of 10 to 14 words, the same for a given seed."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 14))).capitalize() + "." for _ in range(count)]


@dataclass
class RawRun:
    batch_size: int
    seconds: float
    sentences_per_s: float
    cpu_cores: float
    torch_threads: int


@dataclass
class HttpRun:
    request_size: int
    concurrency: int
    seconds: float
    sentences_per_s: float
    max_abs_error: float
    server_cpu_cores: dict[str, float] = field(default_factory=dict)
    client_cpu_cores: float = 0.0
    requests: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_batch_rows: float | None = None  # rows per model batch, as each request saw it (the ingress's count)


def raw_runs(sentences: list[str]) -> tuple[list[RawRun], np.ndarray]:
    """encode() batch by batch, as a replica does, at each batch size; returns the runs and the vectors."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(MODEL_DIR), device="cpu", local_files_only=True)

    def encode(batch: list[str]) -> np.ndarray:
        # The same call the sentence_transformers loader makes per batch.
        return model.encode(
            batch, batch_size=len(batch), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    me = psutil.Process()
    runs, vectors = [], {}
    with torch.inference_mode():
        encode(sentences[:64])  # first call pays for lazy initialisation
        for size in BATCH_SIZES:
            cpu, started = sum(me.cpu_times()[:2]), time.perf_counter()
            vectors[size] = np.concatenate([encode(sentences[i : i + size]) for i in range(0, len(sentences), size)])
            seconds = time.perf_counter() - started
            cores = (sum(me.cpu_times()[:2]) - cpu) / seconds
            runs.append(RawRun(size, seconds, len(sentences) / seconds, cores, torch.get_num_threads()))
            console.print(f"  raw batch {size:>3}: {runs[-1].sentences_per_s:7.1f} sentences/s")
    best = max(runs, key=lambda r: r.sentences_per_s)
    return runs, vectors[best.batch_size]


def sweep(
    sizes=REQUEST_SIZES, concurrencies=CONCURRENCIES, min_gain: float = 1.03
) -> Generator[tuple[int, int], float, None]:
    """(request size, concurrency) to try next, sent each result; more concurrency stops once it stops paying."""
    for size in sizes:
        best = 0.0
        for concurrency in concurrencies[size]:
            rate = yield size, concurrency
            if rate < best * min_gain:
                break
            best = max(best, rate)


def post_all(
    url: str, bodies: list[tuple[int, bytes]], concurrency: int, path: str = INFER_PATH
) -> list[tuple[int, int, bytes]]:
    """Every body once, `concurrency` in flight at a time: [(first sentence, status, response)]."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with (
        httpx.Client(base_url=url, timeout=120, limits=limits) as client,
        ThreadPoolExecutor(concurrency) as pool,  # greenlets: Locust's gevent has patched the process
    ):

        def one(item: tuple[int, bytes]) -> tuple[int, int, bytes]:
            start, body = item
            resp = client.post(path, content=body, headers=JSON_HEADERS)
            return start, resp.status_code, resp.content

        return list(pool.map(one, bodies))


def v2_vectors(content: bytes) -> np.ndarray:
    output = orjson.loads(content)["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def bento_vectors(content: bytes) -> np.ndarray:
    return np.asarray(orjson.loads(content), dtype=np.float32)


def max_error(
    answers: list[tuple[int, int, bytes]], reference: np.ndarray, vectors: Callable[[bytes], np.ndarray] = v2_vectors
) -> float:
    """Largest |served - in-process| over every vector; raises on a wrong status, shape or count."""
    worst, rows = 0.0, 0
    for start, status, content in answers:
        if status != 200:
            raise TargetFailed(f"answered {status}: {content[:200]!r}")
        served = vectors(content)
        expected = reference[start : start + len(served)]
        if served.shape != expected.shape:
            raise TargetFailed(f"answer for sentences {start}.. has shape {served.shape}, expected {expected.shape}")
        worst, rows = max(worst, float(np.abs(served - expected).max())), rows + len(served)
    if rows != len(reference):
        raise TargetFailed(f"{rows} vectors came back for {len(reference)} sentences")
    return worst


@dataclass
class Api:
    """How a server takes sentences: where to POST, the body for some sentences, the vectors in its answer."""

    path: str
    body: Callable[[list[str]], bytes]
    vectors: Callable[[bytes], np.ndarray]
    expect: str  # in every good answer


MODELFLEET_API = Api(INFER_PATH, embeddings_body, v2_vectors, '"outputs"')
BENTO_API = Api("/encode", lambda sentences: orjson.dumps({"sentences": sentences}), bento_vectors, "[[")


def measure(
    server: Server, api: Api, sentences: list[str], size: int, concurrency: int, reference: np.ndarray, run_s: float
) -> HttpRun:
    """Checked, then measured: a load run keeps every request's latency, not its answer."""
    bodies = [(i, api.body(sentences[i : i + size])) for i in range(0, len(sentences), size)]
    error = max_error(post_all(server.url, bodies, concurrency, api.path), reference, api.vectors)
    scenario = from_bodies(server.url + api.path, [body.decode() for _, body in bodies], expect=api.expect)
    load = run_load(server, scenario, concurrency, run_s, sample_interval_s=0.5)
    record = load.record
    if record.failures or not record.requests:
        first = next(iter(record.errors), "no answer")
        raise TargetFailed(f"{record.failures} of {record.requests} requests failed under load: {first}")
    run = HttpRun(
        size,
        concurrency,
        record.duration_s,
        record.requests * size / record.duration_s,
        error,
        server_cpu_cores=load.server_cpu_cores,
        client_cpu_cores=record.generator_cpu_cores,
        requests=record.requests,
        p50_ms=record.p50_ms,
        p95_ms=record.p95_ms,
        p99_ms=record.p99_ms,
        mean_batch_rows=record.endpoints[0].mean_batch_rows,
    )
    console.print(
        f"  {size:>2} sentences x {concurrency} concurrent: {run.sentences_per_s:7.1f} sentences/s (max "
        f"|error| {run.max_abs_error:.1e}; p50 {run.p50_ms} ms, p95 {run.p95_ms} ms; mean batch "
        f"{run.mean_batch_rows} rows)"
    )
    return run


def http_runs(
    server: Server, sentences: list[str], reference: np.ndarray, run_s: float, sizes: tuple[int, ...] = REQUEST_SIZES
) -> list[HttpRun]:
    post_all(server.url, [(0, embeddings_body(sentences[:64]))] * 4, 1)  # warm-up: first batches are slow
    runs = []
    points = sweep(sizes)
    size, concurrency = next(points)
    while True:
        runs.append(measure(server, MODELFLEET_API, sentences, size, concurrency, reference, run_s))
        try:
            size, concurrency = points.send(runs[-1].sentences_per_s)
        except StopIteration:
            return runs


def bento_runs(server: Server, sentences: list[str], reference: np.ndarray, run_s: float) -> list[HttpRun]:
    """BentoML with one sentence per request, at each single-item concurrency."""
    post_all(server.url, [(0, BENTO_API.body(sentences[:1]))] * 8, 8, BENTO_API.path)  # warm-up
    return [measure(server, BENTO_API, sentences, 1, users, reference, run_s) for users in CONCURRENCIES[1]]


def server_torch_threads(app: Path = APP) -> tuple[int, str]:
    """What the replica's torch uses: Ray sets OMP_NUM_THREADS to floor(num_cpus) unless the environment has it."""
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS in the environment"
    num_cpus = yaml.safe_load(app.read_text())["models"][0]["resources"]["num_cpus"]
    return max(math.floor(num_cpus), 1), f"Ray's rule: floor(num_cpus={num_cpus})"


def report(raw: list[RawRun], http: list[HttpRun], bento: list[HttpRun], app: Path = APP) -> dict:
    best_raw = max(raw, key=lambda r: r.sentences_per_s)
    valid = [r for r in http if r.max_abs_error <= TOLERANCE]
    best_http = _fastest(valid)
    rows = [
        [
            "raw in-process",
            f"batch {r.batch_size}",
            f"{r.sentences_per_s:.1f}",
            f"{r.sentences_per_s / best_raw.sentences_per_s:.2f}x",
            "",
            f"{r.cpu_cores:.2f}",
            str(r.batch_size),
            "",
        ]
        for r in raw
    ]
    for label, r in [("modelfleet HTTP", r) for r in http] + [(f"BentoML {BENTOML_VERSION}", r) for r in bento]:
        # modelfleet: its replicas (Ray's own processes apart); BentoML: all of its processes.
        replica = sum(
            c for role, c in r.server_cpu_cores.items() if "ServeReplica" in role or label != "modelfleet HTTP"
        )
        rows.append(
            [
                label,
                f"{r.request_size}/request x {r.concurrency}",
                f"{r.sentences_per_s:.1f}",
                f"{r.sentences_per_s / best_raw.sentences_per_s:.2f}x",
                f"{r.max_abs_error:.1e}",
                f"{replica:.2f} (+client {r.client_cpu_cores:.2f})",
                f"{r.mean_batch_rows}",
                f"{r.p50_ms} / {r.p95_ms}",
            ]
        )
    print_table(
        "all-MiniLM-L6-v2 sentences/s",
        ["run", "setting", "sentences/s", "vs best raw", "max |error|", "CPU (cores)", "batch rows", "p50 / p95 ms"],
        rows,
    )
    threads, why = server_torch_threads(app)
    console.print(
        f"raw: best at batch {best_raw.batch_size}, torch threads {best_raw.torch_threads}; server replica torch "
        f"threads: {threads} ({why})"
    )
    summary: dict[str, object] = {
        "best_raw": best_raw,
        "best_http": best_http,
        "server_torch_threads": threads,
        "server_torch_threads_source": why,
    }
    if best_http is None:
        console.print(f"[red]no HTTP run returned vectors within {TOLERANCE:g} of in-process ones[/red]")
        return summary
    single = _fastest([r for r in valid if r.request_size == 1])
    if single is not None:
        summary["single_item_vs_raw"] = _verdict(
            f"one sentence per request: {single.sentences_per_s:.1f} sentences/s with {single.concurrency} callers "
            f"(mean batch {single.mean_batch_rows} rows)",
            single.sentences_per_s / best_raw.sentences_per_s,
            "raw",
            SINGLE_TARGET_RATIO,
        )
        best_bento = _fastest([r for r in bento if r.max_abs_error <= TOLERANCE])
        if best_bento is not None:
            summary["single_item_vs_bentoml"] = _verdict(
                f"BentoML {BENTOML_VERSION}, one sentence per request: {best_bento.sentences_per_s:.1f} sentences/s "
                f"with {best_bento.concurrency} callers; modelfleet",
                single.sentences_per_s / best_bento.sentences_per_s,
                "BentoML",
                BENTO_TARGET_RATIO,
            )
    summary["http_vs_raw"] = _verdict(
        f"HTTP best: {best_http.sentences_per_s:.1f} sentences/s ({best_http.request_size}/request x "
        f"{best_http.concurrency})",
        best_http.sentences_per_s / best_raw.sentences_per_s,
        "raw",
        TARGET_RATIO,
    )
    return summary


def _fastest(runs: list[HttpRun]) -> HttpRun | None:
    return max(runs, key=lambda r: r.sentences_per_s, default=None)


def _verdict(what: str, ratio: float, against: str, target: float) -> float:
    """Print `what` = ratio x `against`, and whether it meets `target`; returns the ratio."""
    console.print(f"{what} = {ratio:.2f}x {against}; target ≥{target}x: {'met' if ratio >= target else 'missed'}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sentences",
        type=int,
        default=2048,
        help="How many synthetic sentences: each raw run encodes them all; each HTTP setting checks them all, then "
        f"is loaded for as long as the best raw run took (at least {MIN_HTTP_RUN_S:g} s).",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(REQUEST_SIZES),
        choices=REQUEST_SIZES,
        help="Sentences per request to measure (BentoML runs with 1).",
    )
    parser.add_argument(
        "--no-bentoml", action="store_true", help="Skip the BentoML baseline (its virtualenv is made on first use)."
    )
    parser.add_argument(
        "--spec",
        type=Path,
        default=APP,
        help="The app modelfleet serves (e.g. bench/embeddings_uncoalesced.yaml, one handle call per request).",
    )
    args = parser.parse_args()
    interrupt_on_signals()
    sentences = make_sentences(args.sentences)
    console.print(f"[bold]raw in-process[/bold]: {len(sentences)} sentences, batch sizes {list(BATCH_SIZES)}")
    raw, reference = raw_runs(sentences)
    run_s = max(MIN_HTTP_RUN_S, max(raw, key=lambda r: r.sentences_per_s).seconds)
    port = free_port()
    target = Target(
        "modelfleet-embeddings",
        [sys.executable, "-m", "modelfleet", "run", str(args.spec), "--host", "127.0.0.1", "--port", str(port)],
        port,
    )
    console.print(
        f"[bold]modelfleet[/bold]: starting {args.spec} …; each HTTP setting checked, then loaded {run_s:.1f}s"
    )
    with exit_on_failure("modelfleet"), Server(target) as server:
        http = http_runs(server, sentences, reference, run_s, tuple(args.sizes))
    bento: list[HttpRun] = []
    if not args.no_bentoml and 1 in args.sizes:
        model = yaml.safe_load(args.spec.read_text())["models"][0]
        cpus, max_batch = model["resources"]["num_cpus"], model["batching"]["max_batch_size"]
        console.print(f"[bold]BentoML {BENTOML_VERSION}[/bold]: the same model on {cpus} cores, batches ≤ {max_batch}")
        try:
            with Server(bentoml_embeddings(free_port(), cpus, max_batch)) as server:
                bento = bento_runs(server, sentences, reference, run_s)
        except TargetFailed as exc:
            console.print(f"[red]BentoML failed:[/red] {exc}")
        except KeyboardInterrupt:
            console.print("interrupted; the server was stopped")
            sys.exit(130)
    summary = report(raw, http, bento, args.spec)
    path = write_results(
        "embeddings",
        {
            "command": " ".join(["python -m bench.embeddings", *sys.argv[1:]]),
            "raw": raw,
            "http": http,
            "bentoml": bento,
            **summary,
        },
    )
    console.print(f"wrote {path.relative_to(path.parents[2])}")
    sys.exit(0 if summary.get("best_http") else 1)


if __name__ == "__main__":
    main()
