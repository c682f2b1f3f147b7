"""Ray's environment, as every room that starts or reaches a Ray needs it: loopback-only mode and a private token."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["LOOPBACK_ONLY_ENV", "WHOLE_CLUSTER_STOPS_AT_ONCE", "secure_ray_token", "set_env_defaults"]

# Ray's single-machine mode (named for laptops): the node's address is 127.0.0.1, so the GCS, raylet,
# workers and agents listen on loopback only. Otherwise Ray swaps 127.0.0.1 for the machine's
# reachable address and its gRPC servers listen on every interface.
LOOPBACK_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

# For a `ray start --block` head that is the whole cluster (local-sim, a test's head). On SIGTERM it drains
# its node for up to 30 s, so that Serve can move replicas to other nodes; when every node stops together
# there is nowhere to move them, and draining only made each stop wait out the 30 s while an app was deployed.
WHOLE_CLUSTER_STOPS_AT_ONCE = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def set_env_defaults(env: dict[str, str]) -> None:
    """Before Ray (and Serve) are imported, which read these once; a value already set wins."""
    for name, value in env.items():
        os.environ.setdefault(name, value)


def secure_ray_token(*also: Path) -> None:
    """Ray's auth token readable by its owner only: the file 0600, its folder 0700.

    Ray 2.60 writes ~/.ray/auth_token 0644 in a 0755 ~/.ray, yet whoever reads it may call every Ray
    gRPC server, Serve replicas' included, which unpickle request metadata. Ray reads the token from
    RAY_AUTH_TOKEN_PATH if set, else ~/.ray/auth_token, and writes one it generates (in ray.init or
    `ray start --head`) to the latter. Call this before Ray starts, so that a token Ray writes lands in
    a private folder, and after. A folder others share (sticky, like /tmp), or not ours, keeps its mode.
    `also`: other token files (a cluster spec's auth_token_file, which the launcher copies to nodes as is).
    """
    default = Path.home() / ".ray" / "auth_token"
    for token in {default, *(Path(p).expanduser() for p in (os.environ.get("RAY_AUTH_TOKEN_PATH"), *also) if p)}:
        try:
            if token == default:
                default.parent.mkdir(mode=0o700, exist_ok=True)
            elif not token.parent.is_dir():
                continue  # nothing there to protect
            if token.exists():
                os.chmod(token, 0o600)
            folder = token.parent.stat()
            if folder.st_uid == os.geteuid() and not folder.st_mode & stat.S_ISVTX and token.parent != Path.home():
                os.chmod(token.parent, 0o700)
        except OSError as exc:
            logging.getLogger("modelfleet").warning(
                f"cannot make Ray's token file {token} private ({exc.strerror or exc}); chmod 600 it"
            )
