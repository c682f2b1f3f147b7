"""Load tests, the tuner and their reports.

scenario.py     what to send: endpoints and request bodies, from an app spec or a URL and bodies
shapes.py       load shapes as data (constant, ramp, step, spike) and the tuner's sweeps
generator.py    Locust as a library; importing it patches the process with gevent,
                so it runs only where Ray is never imported (the app runs in a subprocess)
measure.py      raw samples -> records (records.py); nothing there sends a request
app_process.py  the app under test as a `modelfleet run` subprocess; process CPU and memory
server_counts.py what the server saw: its /metrics counters, and replicas from Serve
measured_run.py one measured run: the generator's numbers joined with the server's
search.py       the tuner's pure parts: search space, search (optuna), tuned specs, verdict
tuner.py        the tuning loop: deploy each proposal, sweep it, feed the result back
report.py       records -> summary.json, trials.csv, one self-contained index.html
"""

from groundwork.lazy import lazy_exports

# Exported lazily: the CLI imports `loadtests.shapes` for its option types without paying for numpy or Locust.
__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "records": [
            "ModelKnobs",
            "Protocol",
            "RunConfig",
            "RunRecord",
            "StageResult",
            "TimePoint",
            "Trial",
            "TuneRecord",
        ],
        "scenario": ["Endpoint", "Scenario", "ScenarioError", "from_app", "from_bodies", "from_url"],
        "shapes": ["Shape", "Stage", "stages"],
    },
)
