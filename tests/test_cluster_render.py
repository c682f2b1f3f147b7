"""Cluster specs -> Ray cluster YAML: every example renders and passes Ray's own validator; bad specs exit 2 in one
line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cluster.render import TEMPLATED, render, validate_with_ray
from cluster.spec import ClusterSpec, Provider, load_cluster_spec
from modelfleet.cli import app
from providers.compute import POOL_DEMAND, catalog, clouds, pool_resource
from tests.helpers import ROOT, run_cli

EXAMPLES = ROOT / "examples" / "clusters"
RENDERED = sorted(p for p in EXAMPLES.glob("*.yaml") if load_cluster_spec(p).provider.type in TEMPLATED)
CLOUD_EXAMPLES = [p for p in RENDERED if load_cluster_spec(p).provider.type.is_cloud]


NETWORK = {"allowed_source_ranges": ["203.0.113.0/24"]}


def _rendered(path: Path, provider: Provider | None = None) -> dict:
    return yaml.safe_load(render(load_cluster_spec(path), provider, source=str(path)))


def _manifests(path: Path) -> dict[str, dict]:
    """A KubeRay render: its documents by kind."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(render(load_cluster_spec(path), source=str(path)))}


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder`, with a file's bytes (None for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("verb", ["up", "down"])
def test_cloud_dry_run_prints_the_config_and_rays_command_and_writes_nothing(tmp_path: Path, verb: str) -> None:
    home, cwd, user_home, spec_dir = (tmp_path / d for d in ("modelfleet-home", "cwd", "home", "spec"))
    for folder in (home, cwd, user_home, spec_dir):
        folder.mkdir()
    spec_path = spec_dir / "aws.yaml"
    spec_path.write_bytes((EXAMPLES / "aws.yaml").read_bytes())
    before = _tree(tmp_path)
    env = {**os.environ, "MODELFLEET_HOME": str(home), "HOME": str(user_home)}
    result = run_cli("cluster", verb, str(spec_path), "--dry-run", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["provider"]["type"] == "aws"
    assert f"ray {verb} -y {home}/clusters/modelfleet-aws/cluster.yaml" in result.stderr
    assert _tree(tmp_path) == before  # nothing in MODELFLEET_HOME, HOME, the working folder or the spec's folder


@pytest.mark.parametrize("path", CLOUD_EXAMPLES, ids=lambda p: p.stem)
def test_every_cloud_example_renders_and_passes_rays_validator(path: Path) -> None:
    config = _rendered(path)
    prepared = validate_with_ray(config)  # raises with Ray's reason if not
    spec = load_cluster_spec(path)
    assert set(prepared["available_node_types"]) == {"head"} | {p.name for p in spec.pools}
    for pool in spec.pools:
        node = prepared["available_node_types"][pool.name]
        assert (node["min_workers"], node["max_workers"]) == (pool.min_workers, pool.max_workers)
        assert all(isinstance(v, int) for v in node["resources"].values())  # Ray's schema: integers
        # A replica asking for its pool (resources.pool) fits on this node type, and on no other.
        assert node["resources"][pool_resource(pool.name)] >= POOL_DEMAND
        assert node["labels"]["modelfleet/pool"] == pool.name
    assert prepared["max_workers"] == sum(p.max_workers for p in spec.pools)


def test_examples_cover_every_rendered_provider() -> None:
    assert {load_cluster_spec(p).provider.type for p in RENDERED} == set(TEMPLATED)


def test_onprem_renders_every_host_with_its_pool() -> None:
    config = _rendered(EXAMPLES / "onprem.yaml")
    spec = load_cluster_spec(EXAMPLES / "onprem.yaml")
    assert config["provider"] == {
        "type": "local",
        "head_ip": spec.head.host,
        "worker_ips": [h for p in spec.pools for h in p.hosts],
    }
    start = " ".join(config["worker_start_ray_commands"])
    for pool in spec.pools:  # each machine's start command finds its own pool's resource by its addresses
        assert (
            "|".join(f'*" {h} "*' for h in pool.hosts) + f""") echo '{{"{pool_resource(pool.name)}": 1000}}';;"""
            in start
        )
    prepared = validate_with_ray(config)
    assert prepared["max_workers"] == len(config["provider"]["worker_ips"])
    # As each machine's shell runs it: its pool's resource, and the CPUs and GPUs its pool declares.
    for pool in spec.pools:
        for host in pool.hosts:
            args = _worker_start_args(config, host)
            assert f"--resources={json.dumps({pool_resource(pool.name): 1000})}" in args
            assert f"--num-cpus={pool.cpus}" in args
            assert (f"--num-gpus={pool.gpus}" in args) == bool(pool.gpus)
    assert "--resources={}" in _worker_start_args(config, "192.0.2.1")  # a machine of no pool: none
    assert "--num-cpus=0" in " ".join(config["head_start_ray_commands"])  # replicas go to the pools, as on clouds


def _worker_start_args(config: dict, address: str) -> str:
    """The arguments `ray start` gets on the machine at `address` (bash runs the rendered command, echoing them)."""
    command = config["worker_start_ray_commands"][-1].replace("ray start", "printf '%s\\n'")
    command = command.replace("$(hostname -I)", address).replace("$(hostname)", "h").replace("$(hostname -f)", "h")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env={"RAY_HEAD_IP": "10.0.0.1"})
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


def test_local_sim_renders_simulated_pools_with_logical_gpus() -> None:
    spec = load_cluster_spec(EXAMPLES / "local-sim.yaml")
    config = yaml.safe_load(render(spec, gcs_address="127.0.0.1:6390"))
    validate_with_ray(config)
    assert config["provider"]["type"] == "fake_multinode" and config["provider"]["gcs_address"] == "127.0.0.1:6390"
    types = config["available_node_types"]
    assert set(types) == {"ray.head.default", "cpu", "gpu"}  # the provider's own name for the head
    assert types["gpu"]["resources"] == {"CPU": 2, "GPU": 1, pool_resource("gpu"): 1000}
    assert (types["gpu"]["min_workers"], types["gpu"]["max_workers"]) == (0, 2)
    assert config["idle_timeout_minutes"] == spec.idle_timeout_minutes


@pytest.mark.parametrize("path", [p for p in RENDERED if p.stem not in ("local-sim", "kuberay")], ids=lambda p: p.stem)
def test_rendered_files_are_secure_by_default(path: Path) -> None:
    text = render(load_cluster_spec(path), source=str(path))
    config = yaml.safe_load(text)
    head = " ".join(config["head_start_ray_commands"])
    # Nothing listens on, or admits, every address (the comments may name 0.0.0.0/0: to say how to close it).
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in json.dumps(config)
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert "export RAY_AUTH_MODE=token" in " ".join(commands)
    # The token is a file the launcher copies, never a value in the config.
    assert config["file_mounts"] == {"~/.ray/auth_token": load_cluster_spec(path).auth_token_file}


def test_gpu_pools_advertise_gpus_and_their_accelerator() -> None:
    config = _rendered(EXAMPLES / "aws.yaml")
    gpu = config["available_node_types"]["gpu"]
    assert gpu["resources"]["GPU"] == 1 and gpu["resources"]["accelerator_type:A10G"] == 1
    assert gpu["resources"]["CPU"] == catalog("aws").instance("g5.xlarge").vcpus
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}  # no replicas on the head


@pytest.mark.parametrize(
    "provider, spot_setting",
    [
        ("aws", lambda node: node["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}),
        ("gcp", lambda node: node["node_config"]["scheduling"]["provisioningModel"] == "SPOT"),
        ("azure", lambda node: node["node_config"]["azure_arm_parameters"]["priority"] == "Spot"),
    ],
)
def test_spot_is_each_clouds_own_setting(provider: str, spot_setting) -> None:
    config = _rendered(EXAMPLES / f"{provider}.yaml")
    assert spot_setting(config["available_node_types"]["gpu"])
    cpu = config["available_node_types"]["cpu"]["node_config"]
    assert "InstanceMarketOptions" not in cpu and "scheduling" not in cpu
    assert "priority" not in cpu.get("azure_arm_parameters", {})


def test_gcp_attaches_t4s_to_n1_machines(tmp_path: Path) -> None:
    spec = yaml.safe_load((EXAMPLES / "gcp.yaml").read_text())
    spec["pools"].append(
        {"name": "t4", "instance_type": "n1-standard-8", "accelerator": "T4", "gpus": 2, "max_workers": 1}
    )
    path = tmp_path / "gcp.yaml"
    path.write_text(yaml.safe_dump(spec))
    node = _rendered(path)["available_node_types"]["t4"]
    assert node["node_config"]["guestAccelerators"] == [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 2}]
    assert node["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert node["resources"]["GPU"] == 2 and node["resources"]["accelerator_type:T4"] == 1


def test_a_pool_may_ask_for_a_shape_and_get_the_smallest_type_that_fits() -> None:
    spec = ClusterSpec.model_validate(
        {
            "name": "c",
            "provider": {"type": "aws", "region": "us-east-1"},
            "network": NETWORK,
            "pools": [{"name": "g", "gpus": 1, "accelerator": "L4", "max_workers": 1}],
        }
    )
    _, pools = spec.nodes(Provider.aws)
    assert pools["g"].accelerator == "L4" and pools["g"].name.startswith("g6.")


def test_every_catalog_is_consistent() -> None:
    assert set(clouds()) == {"aws", "gcp", "azure"}
    for cloud in clouds():
        entries = catalog(cloud)
        assert len(entries.instance_types) >= 15
        for t in entries.instance_types.values():
            assert t.vcpus > 0 and t.memory_gb > 0
            assert (t.gpus > 0) == (t.accelerator is not None), t
            assert t.accelerator is None or t.accelerator in entries.accelerators, t


def test_cli_renders_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "ray.yaml"
    result = CliRunner().invoke(app, ["cluster", "render", str(EXAMPLES / "aws.yaml"), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert validate_with_ray(yaml.safe_load(out.read_text()))
    assert "ray dashboard" in result.stderr  # the next steps say how to reach the dashboard


def test_one_spec_renders_for_another_cloud_when_it_says_where(tmp_path: Path) -> None:
    spec = {
        "name": "portable",
        "provider": {
            "type": "aws",
            "region": "us-central1",
            "zone": "us-central1-a",
            "project": "p",
            "location": "westus2",
            "resource_group": "rg",
        },
        "pools": [{"name": "cpu", "cpus": 8, "memory_gb": 32, "max_workers": 2}],
        "network": NETWORK,
    }
    path = tmp_path / "portable.yaml"
    path.write_text(yaml.safe_dump(spec))
    for provider in ("aws", "gcp", "azure"):
        result = CliRunner().invoke(app, ["cluster", "render", str(path), "--provider", provider])
        assert result.exit_code == 0, (provider, result.stderr)
        assert validate_with_ray(yaml.safe_load(result.stdout))


def _bad(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["cluster", "render", str(path)])
    assert result.exit_code == 2, result.stdout + result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and str(path) in line, line
    return line


AWS = "name: c\nprovider: {type: aws, region: us-west-2}\nnetwork: {allowed_source_ranges: [203.0.113.0/24]}\n"
ONPREM = "name: c\nprovider: {type: onprem}\nhead: {host: 10.0.0.1}\nnetwork: {allowed_source_ranges: [10.0.0.0/8]}\n"


@pytest.mark.parametrize(
    "text, says",
    [
        (
            AWS + "pools: [{name: cpu, max_workers: 2, instance_typ: m5.large}]\n",
            "pools[0:cpu].instance_typ: unknown key; did you mean 'instance_type'",
        ),
        (
            AWS + "pools: [{name: cpu, instance_type: m5.xlage, max_workers: 2}]\n",
            "pools[0:cpu].instance_type: aws has no instance type 'm5.xlage'; did you mean m5.xlarge",
        ),
        (
            AWS + "pools: [{name: cpu, instance_type: m5.large, min_workers: 3, max_workers: 2}]\n",
            "min_workers 3 > max_workers 2",
        ),
        (
            AWS + "pools: [{name: g, instance_type: g5.xlarge, accelerator: TPU, max_workers: 1}]\n",
            "pools[0:g].accelerator: aws offers no 'TPU' GPUs",
        ),
        (
            AWS + "pools: [{name: g, instance_type: g5.xlarge, accelerator: T4, max_workers: 1}]\n",
            "g5.xlarge has A10G GPUs, not T4",
        ),
        (
            "name: c\nprovider: {type: gcp, region: us-central1}\nnetwork: {allowed_source_ranges: [203.0.113.0/24]}\n"
            "pools: [{name: cpu, instance_type: n2-standard-8, max_workers: 1}]\n",
            "provider: gcp needs project, zone",
        ),
        (AWS + "pools: [{name: cpu, instance_type: m5.large, max_workers: 1}\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping with name:, provider: and pools:"),
        (
            AWS + "pools: [{name: cpu, instance_type: m5.large, max_workers: 1}, {name: cpu, instance_type: m5.large, "
            "max_workers: 1}]\n",
            "names must be unique",
        ),
        (
            ONPREM + "pools: [{name: cpu, hosts: [10.0.0.2], cpus: 8, max_workers: 1, spot: true}]\n",
            "pools[0:cpu].spot: onprem has no spot capacity",
        ),
        (
            ONPREM + "pools: [{name: cpu, hosts: [10.0.0.2], instance_type: m5.large, max_workers: 1}]\n",
            "pools[0:cpu].instance_type: onprem has no instance types",
        ),
        (
            "name: c\nprovider: {type: onprem}\nnetwork: {allowed_source_ranges: [10.0.0.0/8]}\n"
            "pools: [{name: cpu, hosts: [10.0.0.2], cpus: 8, max_workers: 1}]\n",
            "head.host: on-prem needs",
        ),
        (
            AWS + "pools: [{name: cpu, instance_type: m5.large, max_workers: 1, region: us-west-2}]\n",
            "pools[0:cpu].region: unknown key at this level (it is a key of provider); move it there or remove it",
        ),
        ("", "the file is empty; a cluster spec needs at least name, provider and pools (see examples/clusters/"),
        (AWS + "pools: []\n", "pools: the list is empty; list at least one pool"),
        (
            AWS + "pools: [{name: cpu, instance_type: m5.large, max_workers: two}]\n",
            "pools[0:cpu].max_workers: expected a whole number, got 'two'",
        ),
        (
            AWS + "pools: [{name: cpu, instance_type: m5.large, max_workers: 1}]\nimage: 2\n",
            'image: expected a string, got 2; quote it: image: "2"',
        ),
    ],
    ids=[
        "unknown-key",
        "unknown-instance-type",
        "min-above-max",
        "unknown-accelerator",
        "wrong-accelerator",
        "missing-location",
        "not-yaml",
        "not-a-mapping",
        "duplicate-pool",
        "onprem-spot",
        "onprem-instance-type",
        "onprem-no-head",
        "key-of-another-level",
        "empty-file",
        "no-pools",
        "text-for-number",
        "number-for-string",
    ],
)
def test_bad_cluster_specs_exit_2_in_one_line(tmp_path: Path, text: str, says: str) -> None:
    assert says in _bad(tmp_path, text)


def test_spot_where_a_type_has_none_names_the_field(tmp_path: Path) -> None:
    not_spot = next((t.name for t in catalog("aws").instance_types.values() if not t.spot), None)
    if not_spot is None:
        pytest.skip("the aws catalog lists every type as available on spot")
    line = _bad(tmp_path, AWS + f"pools: [{{name: g, instance_type: {not_spot}, max_workers: 1, spot: true}}]\n")
    assert "pools[0:g].spot:" in line and "does not sell" in line


def test_kuberay_renders_a_raycluster_with_a_group_per_pool() -> None:
    spec = load_cluster_spec(EXAMPLES / "kuberay.yaml")
    manifest = _manifests(EXAMPLES / "kuberay.yaml")["RayCluster"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    cluster = manifest["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == spec.idle_timeout_minutes * 60
    assert (
        cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        and cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    )
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {p.name for p in spec.pools}
    gpu = groups["gpu"]
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 2)
    pod = gpu["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and container["image"].endswith("-gpu")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nodeSelector" not in groups["cpu"]["template"]["spec"]
    # The pool's resource reaches `ray start` as KubeRay expects it: a quoted JSON string.
    assert json.loads(json.loads(gpu["rayStartParams"]["resources"])) == {pool_resource("gpu"): 1000}
    # The token comes from a Secret; no value of it is in the manifest.
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token" and "value" not in env["RAY_AUTH_TOKEN"]
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == f"{spec.name}-ray-token"


def test_kuberay_with_an_app_renders_a_rayservice_serve_accepts(tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    result = CliRunner().invoke(
        app,
        ["cluster", "render", str(EXAMPLES / "kuberay.yaml"), "--app", str(ROOT / "examples/fraud/app.yaml")],
        env={
            "MODELFLEET_API_KEYS": "mf_render_test_key_0123456789abcdefghij=admin"
        },  # a RayService's proxies listen on the pods' network
    )
    assert result.exit_code == 0, result.stderr
    manifest = next(doc for doc in yaml.safe_load_all(result.stdout) if doc["kind"] == "RayService")
    assert manifest["kind"] == "RayService" and manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    serve = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    assert [a.name for a in serve.applications] == ["fraud"]
    assert serve.http_options.host == "0.0.0.0" and serve.applications[0].args["keys"]
    assert "kubectl apply" in result.stderr


def test_kuberay_serves_an_https_app_with_its_certificate_from_a_secret(tmp_path: Path, certificates: Path) -> None:
    """The certificate files are on the operator's machine: every pod mounts them from a kubernetes.io/tls Secret."""
    from cluster.render import KUBERAY_TLS_DIR

    spec = yaml.safe_load((ROOT / "examples/echo/app.yaml").read_text())
    spec["ingress"] = {
        "tls": {"cert_file": str(certificates / "server.pem"), "key_file": str(certificates / "server.pem")}
    }
    path = tmp_path / "https.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(
        app,
        ["cluster", "render", str(EXAMPLES / "kuberay.yaml"), "--app", str(path)],
        env={"MODELFLEET_API_KEYS": "mf_render_test_key_0123456789abcdefghij=admin"},
    )
    assert result.exit_code == 0, result.stderr
    manifest = next(doc for doc in yaml.safe_load_all(result.stdout) if doc["kind"] == "RayService")
    http = yaml.safe_load(manifest["spec"]["serveConfigV2"])["http_options"]
    assert (http["ssl_certfile"], http["ssl_keyfile"]) == (f"{KUBERAY_TLS_DIR}/tls.crt", f"{KUBERAY_TLS_DIR}/tls.key")
    cluster = manifest["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:  # every pod runs a Serve proxy
        assert pod["volumes"] == [
            {"name": "serve-tls", "secret": {"secretName": "modelfleet-k8s-serve-tls", "defaultMode": 0o440}}
        ]
        assert pod["containers"][0]["volumeMounts"] == [
            {"name": "serve-tls", "mountPath": KUBERAY_TLS_DIR, "readOnly": True}
        ]
    assert str(certificates) not in result.stdout, "the operator's file paths are not the pods'"
    assert f"create secret tls modelfleet-k8s-serve-tls --cert={certificates / 'server.pem'}" in result.stderr


def test_app_is_only_for_kuberay(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["cluster", "render", str(EXAMPLES / "aws.yaml"), "--app", str(ROOT / "examples/echo/app.yaml")]
    )
    assert result.exit_code == 2 and "--app" in result.stderr


# Who may reach a cluster: an explicit, required list of address ranges, rendered into each provider's own controls.

NEEDS_NETWORK = [p for p in RENDERED if load_cluster_spec(p).provider.type is not Provider.local_sim]


@pytest.mark.parametrize("path", NEEDS_NETWORK, ids=lambda p: p.stem)
def test_cloud_onprem_and_kuberay_specs_must_say_who_may_reach_them(tmp_path: Path, path: Path) -> None:
    spec = yaml.safe_load(path.read_text())
    assert spec.pop("network")["allowed_source_ranges"], "every example says who may reach it"
    line = _bad(tmp_path, yaml.safe_dump(spec))
    assert "network.allowed_source_ranges" in line and "203.0.113.0/24" in line and "0.0.0.0/0" in line


def test_local_sim_needs_no_network() -> None:
    assert "network" not in yaml.safe_load((EXAMPLES / "local-sim.yaml").read_text())
    assert load_cluster_spec(EXAMPLES / "local-sim.yaml").network is None


@pytest.mark.parametrize(
    "ranges, says",
    [
        (
            "[203.0.113.5/24]",
            "network.allowed_source_ranges[0]: '203.0.113.5/24' has host bits set; did you mean 203.0.113.0/24",
        ),
        ("[203.0.113.0/24, office]", "network.allowed_source_ranges[1]: 'office' is not an address range"),
        (
            "[203.0.113.7]",
            "network.allowed_source_ranges[0]: '203.0.113.7' is not an address range; write it with its prefix length, "
            "e.g. 203.0.113.7/32",
        ),
        ("[]", "network.allowed_source_ranges"),
    ],
    ids=["host-bits", "not-an-address", "no-prefix", "empty"],
)
def test_allowed_source_ranges_are_cidrs(tmp_path: Path, ranges: str, says: str) -> None:
    text = AWS.replace("[203.0.113.0/24]", ranges) + "pools: [{name: cpu, instance_type: m5.large, max_workers: 1}]\n"
    assert says in _bad(tmp_path, text)


def _with_ranges(tmp_path: Path, example: str, ranges: list[str], **changes) -> Path:
    spec = yaml.safe_load((EXAMPLES / example).read_text())
    spec["network"] = {"allowed_source_ranges": ranges}
    spec.update(changes)
    path = tmp_path / example
    path.write_text(yaml.safe_dump(spec))
    return path


def test_aws_allows_ssh_only_from_the_allowed_ranges(tmp_path: Path) -> None:
    config = _rendered(_with_ranges(tmp_path, "aws.yaml", ["203.0.113.0/24", "2001:db8::/32"]))
    validate_with_ray(config)
    (ssh,) = config["provider"]["security_group"]["IpPermissions"]
    assert (ssh["IpProtocol"], ssh["FromPort"], ssh["ToPort"]) == ("tcp", 22, 22)
    assert [r["CidrIp"] for r in ssh["IpRanges"]] == ["203.0.113.0/24"]
    assert [r["CidrIpv6"] for r in ssh["Ipv6Ranges"]] == ["2001:db8::/32"]
    assert "0.0.0.0/0" not in json.dumps(config["provider"])


def test_the_whole_internet_only_when_written_out(tmp_path: Path) -> None:
    path = _with_ranges(tmp_path, "aws.yaml", ["0.0.0.0/0", "203.0.113.0/24", "203.0.113.0/24"])
    text = render(load_cluster_spec(path), source=str(path))
    # Ray's own rule already admits 0.0.0.0/0 on SSH; AWS refuses a duplicate rule (and a range listed twice).
    (ssh,) = validate_with_ray(yaml.safe_load(text))["provider"]["security_group"]["IpPermissions"]
    assert ssh["IpRanges"] == [{"CidrIp": "203.0.113.0/24", "Description": "modelfleet network.allowed_source_ranges"}]
    assert "SSH is open to 0.0.0.0/0, as network.allowed_source_ranges says" in text and "revoke" not in text


def test_gcp_tags_every_node_and_says_which_firewall_rule_admits_the_ranges() -> None:
    spec = load_cluster_spec(EXAMPLES / "gcp.yaml")
    text = render(spec, source="gcp.yaml")
    config = yaml.safe_load(text)
    validate_with_ray(config)
    for node in config["available_node_types"].values():
        assert node["node_config"]["tags"] == {"items": [f"ray-{spec.name}"]}
    ranges = ",".join(spec.network.allowed_source_ranges)
    assert (
        f"gcloud compute firewall-rules create ray-{spec.name}-ssh --project {spec.provider.project} --network default "
        f"--direction INGRESS --allow tcp:22 --source-ranges {ranges} --target-tags ray-{spec.name}"
    ) in text
    assert "default-allow-ssh" in text  # the default network admits SSH from anywhere until that rule goes


def test_azure_says_how_to_narrow_rays_ssh_rule() -> None:
    spec = load_cluster_spec(EXAMPLES / "azure.yaml")
    text = render(spec, source="azure.yaml")
    validate_with_ray(yaml.safe_load(text))
    import hashlib

    # Ray's name for it: ray-<cluster>-<sha256(resource group)[:UNIQUE_ID_LEN = 4]>-nsg (_azure/config.py).
    nsg = f"ray-{spec.name}-{hashlib.sha256(spec.provider.resource_group.encode()).hexdigest()[:4]}-nsg"
    assert (
        f"az network nsg rule update --resource-group {spec.provider.resource_group} --nsg-name {nsg} --name SSH "
        f"--source-address-prefixes {' '.join(spec.network.allowed_source_ranges)}"
    ) in text


def test_kuberay_renders_a_network_policy_for_its_pods() -> None:
    spec = load_cluster_spec(EXAMPLES / "kuberay.yaml")
    docs = _manifests(EXAMPLES / "kuberay.yaml")
    policy = docs["NetworkPolicy"]
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["metadata"]["namespace"] == spec.provider.namespace
    selector = policy["spec"]["podSelector"]["matchLabels"]
    cluster = docs["RayCluster"]["spec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    assert all(t["metadata"]["labels"].items() >= selector.items() for t in templates)  # it covers every Ray pod
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    # Ray's pods reach each other on any port; the world reaches Serve's port, and only from the allowed ranges.
    assert {"from": [{"podSelector": {"matchLabels": selector}}]} in rules
    serve = next(r for r in rules if r.get("ports") == [{"protocol": "TCP", "port": 8000}])
    assert serve["from"] == [{"ipBlock": {"cidr": r}} for r in spec.network.allowed_source_ranges]
    # The KubeRay operator reaches the head's dashboard port (it deploys a RayService's app through it).
    operator = next(r for r in rules if r.get("ports") == [{"protocol": "TCP", "port": 8265}])
    assert operator["from"][0]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}
    assert not any("0.0.0.0/0" in json.dumps(r) for r in rules)


@pytest.mark.parametrize("path", [p for p in NEEDS_NETWORK if p.stem != "kuberay"], ids=lambda p: p.stem)
def test_the_token_file_is_private_on_every_node(path: Path) -> None:
    config = _rendered(path)
    assert config["initialization_commands"][0] == "chmod 600 ~/.ray/auth_token && chmod 700 ~/.ray"
    validate_with_ray(config)


def test_the_token_file_is_private_on_a_docker_hosts_mount_and_in_the_container(tmp_path: Path) -> None:
    path = _with_ranges(tmp_path, "aws.yaml", ["203.0.113.0/24"], image="rayproject/ray:2.60.0-py311")
    config = _rendered(path)
    # Ray's launcher copies file mounts to /tmp/ray_tmp_mount/<cluster>/ on the host, then bind-mounts them.
    mount = "/tmp/ray_tmp_mount/modelfleet-aws"
    assert (
        config["initialization_commands"][0]
        == f"chmod 600 {mount}/~/.ray/auth_token && chmod 700 {mount}/~/.ray {mount}"
    )
    assert (
        config["setup_commands"][0]
        == "chmod 600 ~/.ray/auth_token && { chmod 700 ~/.ray || sudo -n chmod 700 ~/.ray; }"
    )
    validate_with_ray(config)


BREAKAGES = {
    "no-policy": lambda docs: docs[:1],
    "not-a-policy": lambda docs: [docs[0], {**docs[1], "kind": "Service"}],
    "not-ray": lambda docs: [{**docs[0], "kind": "Deployment"}, docs[1]],
}


def test_a_malformed_kuberay_manifest_is_refused_even_under_python_O() -> None:
    """The checks are not `assert`s, which `python -O` drops: here, and in a `python -O` subprocess."""
    import subprocess
    import sys

    from cluster.render import RenderError, validate_kuberay

    docs = list(yaml.safe_load_all(render(load_cluster_spec(EXAMPLES / "kuberay.yaml"))))
    broken = {name: breakage(docs) for name, breakage in BREAKAGES.items()}
    for manifests in broken.values():
        with pytest.raises(RenderError, match="the rendered KubeRay manifest is malformed"):
            validate_kuberay(manifests)
    code = (
        "import json, sys; from cluster.render import RenderError, validate_kuberay\n"
        "for name, manifests in json.load(sys.stdin).items():\n"
        "    try:\n        validate_kuberay(manifests)\n    except RenderError:\n        print(name, 'refused')\n"
    )
    done = subprocess.run(
        [sys.executable, "-O", "-c", code], input=json.dumps(broken), capture_output=True, text=True, cwd=ROOT
    )
    assert done.stdout.split() == [word for name in BREAKAGES for word in (name, "refused")], done.stdout + done.stderr
