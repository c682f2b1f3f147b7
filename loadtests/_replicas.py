"""Write an app's running replicas per deployment, as JSON lines, until terminated.

`python -m loadtests._replicas RAY_ADDRESS APP OUT_FILE INTERVAL_S`. A process
of its own because it is a Ray driver, and Ray must not share a process with
Locust's gevent.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path


def main(address: str, app_name: str, out: Path, interval_s: float) -> None:
    from serve_apps.deploy import RayTarget

    RayTarget.connect(address)  # before Ray is imported here: it sets the env a loopback cluster's driver needs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # after ray.init, which installs its own handler
    from ray import serve

    with out.open("a") as sink:
        while True:
            app = serve.status().applications.get(app_name)
            replicas = {
                name: int(
                    sum(n for state, n in d.replica_states.items() if str(getattr(state, "value", state)) == "RUNNING")
                )
                for name, d in (app.deployments.items() if app else ())
            }
            sink.write(json.dumps({"time": time.time(), "replicas": replicas}) + "\n")
            sink.flush()
            time.sleep(interval_s)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4]))
