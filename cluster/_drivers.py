"""Short Ray drivers that `launch` runs in a subprocess of their own: `python -m cluster._drivers COMMAND ADDRESS ...`.

A driver joins the cluster for one call and leaves: the CLI process that
started the cluster never becomes a Ray driver itself (it would keep Ray's
threads and its connection to the head until it exits).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys

# A driver's stdout also carries Ray's autoscaler events: the answer is the line after this marker.
ANSWER = "MODELFLEET_ANSWER="
BOOTSTRAP_KEY = "~/ray_bootstrap_key.pem"  # where `ray up` leaves the head its key to the workers
# How the head reaches an on-prem worker: as its autoscaler does.
SSH_FROM_HEAD = (
    f"ssh -i {BOOTSTRAP_KEY} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
    "-o ConnectTimeout=10"
)


def start_serve(address: str, port: int) -> None:
    """Serve's proxy on the head's loopback, so `modelfleet deploy` finds it running and the app answers there."""
    import ray
    from ray import serve

    ray.init(address=address, logging_level=logging.ERROR)
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})


def alive_nodes(address: str) -> list[dict]:
    """Every alive node: its address and resources (custom `pool:<name>` resources included)."""
    import ray

    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    return [
        {"address": node["NodeManagerAddress"], "resources": node["Resources"]} for node in ray.nodes() if node["Alive"]
    ]


def versions(user: str, workers: list[str]) -> dict[str, dict[str, str] | str]:
    """This node's Ray and Python ("head") and each worker's, read over SSH in its login shell, where Ray's
    launcher finds `ray`; a worker that cannot say gets the reason instead."""
    from dataclasses import asdict

    from cluster.runtime import VERSIONS_PROBE, this_machine

    found: dict[str, dict[str, str] | str] = {"head": asdict(this_machine())}
    for worker in workers:
        login = f"bash --login -i -c {shlex.quote(VERSIONS_PROBE)}"
        try:
            result = subprocess.run(
                [*map(os.path.expanduser, shlex.split(SSH_FROM_HEAD)), f"{user}@{worker}", login],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            found[worker] = "ssh did not answer within 60 s"
            continue
        said = [line.split() for line in result.stdout.splitlines() if line.startswith("versions ")]
        if said and len(said[-1]) == 3:
            found[worker] = {"ray": said[-1][1], "python": said[-1][2]}
        else:
            found[worker] = ([line for line in result.stderr.splitlines() if line.strip()] or ["no answer"])[-1]
    return found


if __name__ == "__main__":
    command, address, *rest = sys.argv[1:]
    if command == "start-serve":
        start_serve(address, int(rest[0]))
    elif command == "nodes":
        print(ANSWER + json.dumps(alive_nodes(address)), flush=True)
    elif command == "versions":  # ADDRESS here is the SSH user the workers take
        print(ANSWER + json.dumps(versions(address, rest)), flush=True)
    else:
        sys.exit(f"unknown driver command {command!r}")
