"""modelfleet: serve ML models as autoscaling endpoints on Ray Serve.

This package is the composition root only: `modelfleet.cli` ties
`serve_apps`, `cluster`, `providers` and `loadtests` together.
"""

from groundwork.version import VERSION as __version__

__all__ = ["__version__"]
