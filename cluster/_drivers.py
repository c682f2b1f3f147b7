"""Short Ray drivers that `launch` runs in a subprocess of their own: `python -m cluster._drivers COMMAND ADDRESS ...`.

A driver joins the cluster for one call and leaves: the CLI process that
started the cluster never becomes a Ray driver itself (it would keep Ray's
threads and its connection to the head until it exits).
"""

from __future__ import annotations

import json
import logging
import sys

# A driver's stdout also carries Ray's autoscaler events: the answer is the line after this marker.
ANSWER = "MODELFLEET_ANSWER="


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


if __name__ == "__main__":
    command, address, *rest = sys.argv[1:]
    if command == "start-serve":
        start_serve(address, int(rest[0]))
    elif command == "nodes":
        print(ANSWER + json.dumps(alive_nodes(address)), flush=True)
    else:
        sys.exit(f"unknown driver command {command!r}")
