"""A Locust worker process for `--workers N`: `python -m loadtests._worker MASTER_PORT SCENARIO.json`.

It runs the same user classes as the master would and sends every request's
sample along with Locust's own reports.
"""

from __future__ import annotations

import sys
from pathlib import Path

import locust  # noqa: F401  (first: gevent patches the standard library)
from locust.env import Environment

from .generator import SAMPLES_KEY, STOP_TIMEOUT_S, collect_samples, user_classes
from .scenario import Scenario


def main(port: int, scenario_path: Path) -> None:
    scenario = Scenario.model_validate_json(scenario_path.read_text())
    env = Environment(user_classes=user_classes(scenario), stop_timeout=STOP_TIMEOUT_S)
    pending: list = []
    collect_samples(env, [e.name for e in scenario.endpoints], pending)

    def hand_over(client_id: str, data: dict) -> None:
        data[SAMPLES_KEY] = pending[:]
        del pending[: len(data[SAMPLES_KEY])]

    env.events.report_to_master.add_listener(hand_over)
    runner = env.create_worker_runner("127.0.0.1", port)
    runner.greenlet.join()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
