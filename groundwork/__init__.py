"""What every room needs and none owns: spec files, Ray's environment, processes and ports, addresses.

The neutral core below `serve_apps`, `cluster`, `loadtests` and `providers`:
it imports none of them (import-linter checks it), so any room can use it
without reaching into another.
"""

from .net import is_loopback_host
from .processes import alive, free_port, session_pids, session_processes, stop_process_tree, stop_session
from .ray_env import LOOPBACK_ONLY_ENV, WHOLE_CLUSTER_STOPS_AT_ONCE, secure_ray_token, set_env_defaults
from .specs import SpecError, Strict, load_spec_file
from .version import VERSION

__all__ = [
    "LOOPBACK_ONLY_ENV",
    "SpecError",
    "VERSION",
    "WHOLE_CLUSTER_STOPS_AT_ONCE",
    "Strict",
    "alive",
    "free_port",
    "is_loopback_host",
    "load_spec_file",
    "secure_ray_token",
    "session_pids",
    "session_processes",
    "set_env_defaults",
    "stop_process_tree",
    "stop_session",
]
