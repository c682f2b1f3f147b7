"""modelfleet: serve ML models as autoscaling endpoints on Ray Serve.

This package is the composition root only: `modelfleet.cli` ties
`serve_apps`, `cluster`, `providers` and `loadtests` together.
"""

__version__ = "0.1.0"
