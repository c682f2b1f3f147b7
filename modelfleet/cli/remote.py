"""`deploy` and `status` on a cluster this machine launched with `cluster up` (onprem, aws, gcp, azure): on its head.

A Ray driver must run on a node of its cluster, so the command runs on the head, over SSH through Ray's
launcher (cluster.remote). What it needs travels first, to the same folder on every node:
- the app's spec, with every file artifact copied beside it (their paths are this machine's) and its API keys
  as a keys file of hashes (never a plaintext key);
- this project's packages and the models' own, as source: the head's command imports them, and the deploy
  hands them to Ray (`py_modules`), which ships them to every replica, on nodes added later too.
Artifacts at s3://, gs://, az:// or https:// URIs travel no further: each replica fetches them.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
from pathlib import Path

import yaml

from serve_apps.auth import KeyRing
from serve_apps.spec import AppSpec
from serve_apps.traffic import candidate_deployment

from .console import bad_input, failed

APPS = "~/.modelfleet/apps"  # on every node: one folder per app


def _copy_artifact(uri: str, into: Path, name: str) -> str:
    """Copy a file artifact (a file, a folder, or the folder of a {model_id} template) to `into/artifacts/<name>`;
    returns its URI there, relative to the spec."""
    from providers.storage import parse_uri

    path = parse_uri(uri).key
    target = into / "artifacts" / name
    if "{" in path:  # a multiplexed family: the folder that holds the first templated part holds every member
        prefix = path[: path.index("{")]
        source = Path(prefix) if prefix.endswith("/") else Path(prefix).parent
        shutil.copytree(source, target)
        return f"artifacts/{name}/{path[len(str(source)) + 1 :]}"
    source = Path(path.rstrip("/"))
    if source.is_dir():
        shutil.copytree(source, target / source.name)
        return f"artifacts/{name}/{source.name}/"
    target.mkdir(parents=True)
    shutil.copy2(source, target / source.name)
    return f"artifacts/{name}/{source.name}"


def _bundle_spec(spec: AppSpec, keys: KeyRing, into: Path, fixed_nodes: bool) -> None:
    """The spec as the head reads it: file artifacts and TLS files beside it, keys as hashes. `fixed_nodes`: the
    cluster's machines are listed (on-prem), so files sent to each now are there for every replica."""
    from providers.storage import scheme_of

    resolved = spec.resolved()
    for where, model, artifact, candidate in resolved.artifacts():
        if scheme_of(artifact.uri) == "file":
            if not fixed_nodes:
                bad_input(
                    f"{spec.name}: {where}.uri is a file of this machine, and this cluster's "
                    "nodes come and go; give it an s3://, gs://, az:// or https:// URI, which each node fetches"
                )
            name = model.name if candidate is None else candidate_deployment(model.name, str(candidate.version))
            artifact.uri = _copy_artifact(artifact.uri, into, name)
    tls = resolved.ingress.tls
    if tls is not None:
        for field in ("cert_file", "key_file", "client_ca_file"):
            if getattr(tls, field):
                shutil.copy2(getattr(tls, field), into / f"tls-{field}.pem")
                setattr(tls, field, f"tls-{field}.pem")
    resolved.ingress.keys_file = None
    if keys.enabled:
        (into / "keys.yaml").write_text(yaml.safe_dump({"keys": keys.hashes()}, sort_keys=False))
        resolved.ingress.keys_file = "keys.yaml"
    (into / "app.yaml").write_text(yaml.safe_dump(resolved.model_dump(mode="json", exclude_none=True), sort_keys=False))


def deploy_on_head(cluster, spec: AppSpec, keys: KeyRing, host: str, port: int, timeout: str) -> None:
    """Send the app and its code to every node, then run `modelfleet deploy` on the head; its output shows here."""
    from cluster import remote
    from cluster.launch import LaunchError
    from groundwork.packages import PROJECT_PACKAGES, PackageError, stage_packages
    from serve_apps.build import code_packages

    folder = f"{APPS}/{spec.name}"
    with tempfile.TemporaryDirectory(prefix="modelfleet-bundle-") as staging:
        bundle = Path(staging)
        (bundle / "app").mkdir()
        _bundle_spec(spec, keys, bundle / "app", fixed_nodes=bool(cluster.workers))
        try:
            stage_packages([*PROJECT_PACKAGES, *code_packages(spec)], bundle / "code")
        except PackageError as exc:
            bad_input(f"{spec.name}: {exc}")
        try:
            remote.on_head(cluster, f"mkdir -p {folder}", quiet=True)
            remote.send(cluster, bundle, folder, all_nodes=True)
            command = shlex.join(
                ["python", "-m", "modelfleet", "deploy", "app.yaml", "--address", cluster.address]
                + ["--host", host, "--port", str(port), "--timeout", timeout]
            )
            remote.on_head(cluster, command, cwd=f"{folder}/app", code=f"{folder}/code")
        except LaunchError as exc:
            failed(str(exc))


def status_on_head(cluster, as_json: bool) -> None:
    """`modelfleet status` run on the head; its output shows here."""
    from cluster import remote
    from cluster.launch import LaunchError

    command = f"python -m modelfleet status --address {cluster.address}" + (" --json" if as_json else "")
    try:
        shown = remote.on_head(cluster, command)
    except LaunchError as exc:
        failed(str(exc))
    if not shown.strip():  # the launcher lost the command's output (the head's output never came back)
        failed(f"`modelfleet status` on the head ({cluster.head}) printed nothing; try again")
