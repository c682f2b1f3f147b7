"""Cluster specs -> Ray cluster YAML (aws, gcp, azure, onprem, local-sim) or a KubeRay manifest, and launching them.

spec.py       the cluster spec: node pools, provider, network ranges (pydantic, one-line errors)
render.py     spec -> YAML from the provider's Jinja template, then Ray's own validator
network.py    who may reach the cluster, rendered into each provider's own controls
launch.py     local-sim up/down/status on this machine; the others go to Ray's `ray up`
templates/    one Jinja template per provider
"""

from groundwork.lazy import lazy_exports

# Exported lazily: the CLI reads `Provider` for its options without loading Jinja or Ray's validator.
__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "spec": ["ClusterSpec", "PoolSpec", "Provider", "load_cluster_spec"],
        "render": [
            "RenderError"
        ],  # the function `render` is reached as cluster.render.render (the module shares its name)
        "launch": ["ClusterState", "LaunchError", "down", "load_state", "status", "up"],
    },
)
