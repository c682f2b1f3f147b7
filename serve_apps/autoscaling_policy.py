"""Ray Serve's own autoscaling rule, counting requests instead of handle calls.

Serve scales a deployment on its ongoing requests, which it counts as handle calls. The ingress sends many
requests in one call when they wait together (coalescing.py), so Serve's count would fall as the load rises.
Every replica reports the requests it holds, however they came (`coalescing.ManyRequests.record_autoscaling_stats`), and
this policy applies Serve's default rule to them: desired replicas = requests / target_ongoing_requests, where
requests = those in the replicas plus calls still queued at handles (at least one request each), and never fewer
than Serve's own count. Ray wraps it with everything else its default policy does: the cold-start fast path,
upscale and downscale delays, scaling factors, min and max replicas.

Ray pickles this module by value into its controller (`AutoscalingPolicy.serialize_policy`): it imports nothing
but the standard library, so the controller needs none of modelfleet's code.
"""

from __future__ import annotations

from typing import Any

__all__ = ["POLICY", "REQUESTS_METRIC", "requests_policy"]

REQUESTS_METRIC = "modelfleet_requests"
POLICY = f"{__name__}:requests_policy"


def requests_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """`ctx`: Ray's AutoscalingContext. Returns (desired replicas, policy state), as Ray's default policy does."""
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, {}
    reported = (ctx.aggregated_metrics or {}).get(REQUESTS_METRIC, {})
    in_replicas = sum(reported.get(replica, 0.0) for replica in ctx.running_replicas)
    requests = max(ctx.total_num_requests, in_replicas + (ctx.total_queued_requests or 0.0))
    target = ctx.config.get_target_ongoing_requests() * ctx.current_num_replicas
    return ctx.current_num_replicas * requests / target, {}
