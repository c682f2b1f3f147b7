"""ClusterSpec -> Ray cluster YAML, one Jinja template per provider, checked by Ray's own validator.

The templates only lay out each provider's document; everything they print
is decided here, in typed variables: which node types exist, what resources
each advertises (CPU, GPU, the pool's own resource, the accelerator type,
integers as Ray's schema requires), and how spot is spelled.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml

from providers.compute import POOL_CAPACITY, InstanceType, catalog, pool_resource

from . import network
from .runtime import install_commands
from .spec import ClusterSpec, PoolSpec, Provider

__all__ = [
    "KUBERAY_SERVE_HOST",
    "KUBERAY_TLS_DIR",
    "RenderError",
    "SERVE_PORT",
    "TEMPLATED",
    "kuberay_tls_secret",
    "network_steps",
    "render",
    "validate_with_ray",
]

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATED = (Provider.aws, Provider.gcp, Provider.azure, Provider.onprem, Provider.local_sim, Provider.kuberay)
HEAD_TYPE = "head"
FAKE_HEAD_TYPE = "ray.head.default"  # the fake_multinode provider names its head node type so
SERVE_PORT = 8000  # Serve's HTTP port on a cluster's nodes (KubeRay's `serve` container port)
DASHBOARD_PORT = 8265  # the head's dashboard, where the KubeRay operator deploys a RayService's app
KUBERAY_SERVE_HOST = "0.0.0.0"  # a RayService's proxies answer on their pod's address
# An app served over HTTPS: its certificate and key reach every pod (each runs a Serve proxy) from a
# Secret of type kubernetes.io/tls mounted here, never inlined in the manifest.
KUBERAY_TLS_DIR = "/etc/modelfleet/tls"
TOKEN_FOLDER = "~/.ray"  # where file_mounts puts the token on every node
TOKEN_ON_NODES = f"{TOKEN_FOLDER}/auth_token"


class RenderError(Exception):
    """The rendered file did not pass Ray's checks (a bug here, not in the spec): the message has Ray's reason."""


@dataclass(frozen=True)
class NodeType:
    name: str
    instance: InstanceType
    min_workers: int
    max_workers: int
    resources: dict[str, int]
    spot: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    attached_gpu: str | None = None  # GCP: the accelerator type to attach (n1 + T4)


@dataclass(frozen=True)
class Context:
    spec: ClusterSpec
    provider: str
    source: str
    node_types: list[NodeType] | list[KubeNode]
    gcs_address: str = "127.0.0.1:6379"  # local-sim: where the simulated nodes find the head
    serve_config: str | None = None  # kuberay: `modelfleet build` output, for a RayService
    tls_secret: str | None = None  # kuberay: the Secret holding the app's certificate and key (an HTTPS app)

    @property
    def ray_version(self) -> str:
        return _ray_version()

    @property
    def tls_dir(self) -> str:
        return KUBERAY_TLS_DIR

    @property
    def token_secret(self) -> str:
        return f"{self.spec.name}-ray-token"

    @property
    def token_on_nodes(self) -> str:
        return TOKEN_ON_NODES

    @property
    def token_initialization_commands(self) -> list[str]:
        """On each node's host, right after the launcher copied the token there: private, whatever mode it came with.

        With docker, Ray's launcher copies file mounts under /tmp/ray_tmp_mount/<cluster>/ on the host
        (then bind-mounts them): that folder, in the world-readable /tmp, is closed too.
        """
        if not self.spec.image:
            return [f"chmod 600 {TOKEN_ON_NODES} && chmod 700 {TOKEN_FOLDER}"]
        from ray.autoscaler.sdk import get_docker_host_mount_location

        mount = get_docker_host_mount_location(self.spec.name)  # Ray keeps the "~" as a folder name under it
        return [f"chmod 600 {mount}/{TOKEN_ON_NODES} && chmod 700 {mount}/{TOKEN_FOLDER} {mount}"]

    @property
    def token_setup_commands(self) -> list[str]:
        """In the container (docker only), whose ~/.ray docker created for the bind mount, perhaps as root."""
        if not self.spec.image:
            return []
        return [f"chmod 600 {TOKEN_ON_NODES} && {{ chmod 700 {TOKEN_FOLDER} || sudo -n chmod 700 {TOKEN_FOLDER}; }}"]

    @property
    def runtime_setup_commands(self) -> list[str]:
        """Ray and what the replicas import, at this machine's versions, on a host that has only Python
        (cluster/runtime.py); an image brings its own."""
        if self.spec.image or not self.spec.install_runtime:
            return []
        return install_commands()

    @property
    def serve_port(self) -> int:
        return SERVE_PORT

    @property
    def allowed_source_ranges(self) -> list[str]:
        return self.spec.network.allowed_source_ranges if self.spec.network else []

    @property
    def aws_security_group(self) -> dict:
        return network.aws_security_group(self.spec)

    @property
    def gcp_network_tag(self) -> str:
        return network.gcp_network_tag(self.spec)

    @property
    def pod_labels(self) -> dict[str, str]:
        """On every Ray pod: what the NetworkPolicy selects (KubeRay's own labels name a RayService's cluster
        differently)."""
        return {"modelfleet/cluster": self.spec.name}

    @property
    def dashboard_port(self) -> int:
        return DASHBOARD_PORT

    @property
    def network_policy_ingress(self) -> list[dict]:
        return network.kuberay_ingress(self.spec, self.pod_labels, SERVE_PORT, DASHBOARD_PORT)

    @property
    def network_steps(self) -> list[str]:
        return network_steps(self.spec, Provider(self.provider))

    @property
    def head_type(self) -> str:
        return FAKE_HEAD_TYPE if self.provider == Provider.local_sim.value else HEAD_TYPE

    @property
    def max_workers(self) -> int:
        if self.provider == Provider.onprem.value:
            return len(self.worker_hosts)
        return sum(n.max_workers for n in self.node_types)

    @property
    def worker_hosts(self) -> list[str]:
        return [host for pool in self.spec.pools for host in pool.hosts]

    @property
    def onprem_worker_resources(self) -> str:
        """`ray start` flag giving each on-prem worker its pool's resource, chosen by the machine's own addresses.

        Ray's on-prem provider has a single worker type, so the pool is found at start time.
        """
        arms = " ".join(
            "|".join(f'*" {host} "*' for host in pool.hosts)
            + f") echo '{json.dumps({pool_resource(pool.name): POOL_CAPACITY})}';;"
            for pool in self.spec.pools
        )
        me = '" $(hostname -I) $(hostname) $(hostname -f) "'
        # The CPUs and GPUs a pool declares, as flags (GPUs a machine lacks are logical: the test bed's GPU pool).
        shapes = " ".join(
            "|".join(f'*" {host} "*' for host in pool.hosts) + f') echo "{flags}";;'
            for pool in self.spec.pools
            if (flags := _declared_shape(pool))
        )
        declared = f" $(case {me} in {shapes} *) ;; esac)" if shapes else ""
        return f' --resources="$(case {me} in {arms} *) echo "{{}}";; esac)"{declared}'

    @property
    def any_gpu(self) -> bool:
        return any(n.instance.gpus for n in self.node_types)


def _declared_shape(pool: PoolSpec) -> str:
    """`ray start` flags for the CPUs and GPUs an on-prem pool declares (none: Ray counts the machine's own)."""
    flags = [f"--num-cpus={pool.cpus}"] if pool.cpus else []
    return " ".join([*flags, *([f"--num-gpus={pool.gpus}"] if pool.gpus else [])])


def network_steps(spec: ClusterSpec, provider: Provider) -> list[str]:
    """What `provider`'s own firewall needs beyond the rendered file (also in it, as comments)."""
    return network.steps(spec, provider, SERVE_PORT)


def _ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


def _resources(node: InstanceType, pool: str | None) -> dict[str, int]:
    """What a node advertises to the autoscaler: how it matches a replica's demand to a node type."""
    resources = {"CPU": node.vcpus}
    if node.gpus:
        resources["GPU"] = node.gpus
        if node.accelerator:
            resources[f"accelerator_type:{node.accelerator}"] = 1
    if pool:
        resources[pool_resource(pool)] = POOL_CAPACITY
    return resources


def _attached_gpu(provider: Provider, spec: ClusterSpec, node: InstanceType) -> str | None:
    """GCP attaches T4s to n1 machines; the other GPU machine types come with theirs."""
    if provider is not Provider.gcp or not node.gpus:
        return None
    cloud = catalog("gcp")
    if node.name not in cloud.attachable_gpus.get(node.accelerator or "", ()):
        return None
    return cloud.gpu_type_names[node.accelerator or ""]


def node_types(spec: ClusterSpec, provider: Provider) -> list[NodeType]:
    head, pools = spec.nodes(provider)
    # The head runs Ray's control plane and Serve's controller; replicas go to the pools (CPU 0 on the head).
    # On local-sim the head is this machine, whose CPUs run everything: it keeps them.
    head_type = FAKE_HEAD_TYPE if provider is Provider.local_sim else HEAD_TYPE
    head_resources = {"CPU": head.vcpus} if provider is Provider.local_sim else {"CPU": 0}
    types = [NodeType(head_type, head, 0, 0, head_resources)]
    for pool in spec.pools:
        node = pools[pool.name]
        types.append(
            NodeType(
                pool.name,
                node,
                pool.min_workers,
                pool.max_workers,
                _resources(node, pool.name),
                pool.spot,
                {**pool.labels, "modelfleet/pool": pool.name},
                _attached_gpu(provider, spec, node),
            )
        )
    return types


# NVIDIA GPU feature discovery's `nvidia.com/gpu.product` label per accelerator (GPU Operator, any cloud).
GPU_PRODUCT_LABELS = {
    "T4": "Tesla-T4",
    "L4": "NVIDIA-L4",
    "A10G": "NVIDIA-A10G",
    "A100": "NVIDIA-A100-SXM4-80GB",
    "H100": "NVIDIA-H100-80GB-HBM3",
}
DEFAULT_IMAGE = "rayproject/ray:{version}-py311"


@dataclass(frozen=True)
class KubeNode:
    """A KubeRay group: the pod a node type becomes."""

    name: str
    instance: InstanceType
    min_workers: int
    max_workers: int
    image: str
    k8s_resources: dict[str, str | int]
    node_selector: dict[str, str]
    ray_start_params: dict[str, str]


def kube_nodes(spec: ClusterSpec, ray_version: str) -> list[KubeNode]:
    def image(node: InstanceType) -> str:
        return spec.image or DEFAULT_IMAGE.format(version=ray_version) + ("-gpu" if node.gpus else "")

    def resources(node: InstanceType) -> dict[str, str | int]:
        found: dict[str, str | int] = {"cpu": str(node.vcpus), "memory": f"{node.memory_gb:g}Gi"}
        if node.gpus:
            found["nvidia.com/gpu"] = node.gpus
        return found

    head, pools = spec.nodes(Provider.kuberay)
    nodes = [KubeNode(HEAD_TYPE, head, 0, 0, image(head), resources(head), {}, {})]
    for pool in spec.pools:
        node = pools[pool.name]
        selector = (
            {"nvidia.com/gpu.product": GPU_PRODUCT_LABELS[node.accelerator]}
            if node.accelerator in GPU_PRODUCT_LABELS
            else {}
        )
        # KubeRay passes rayStartParams to `ray start`; custom resources go as a quoted JSON string.
        params = {"resources": json.dumps(json.dumps({pool_resource(pool.name): POOL_CAPACITY}))}
        nodes.append(
            KubeNode(
                pool.name, node, pool.min_workers, pool.max_workers, image(node), resources(node), selector, params
            )
        )
    return nodes


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(
    spec: ClusterSpec,
    provider: Provider | None = None,
    source: str = "a cluster spec",
    gcs_address: str = "127.0.0.1:6379",
    serve_config: dict | None = None,
) -> str:
    """The Ray cluster YAML for `spec` on `provider` (default: the spec's own), validated by Ray.

    `gcs_address`: local-sim only, where its simulated nodes reach the head.
    `serve_config`: kuberay only, `modelfleet build` output: a RayService rather than a RayCluster.
    """
    provider = provider or spec.provider.type
    spec.check_for(provider)
    if provider is Provider.kuberay:
        context = Context(
            spec,
            provider.value,
            source,
            kube_nodes(spec, _ray_version()),
            gcs_address,
            _serve_config_text(serve_config),
            _tls_secret(spec, serve_config),
        )
        text = _environment().get_template("kuberay.yaml.j2").render(ctx=context)
        validate_kuberay(list(yaml.safe_load_all(text)))
        return text
    context = Context(spec, provider.value, source, node_types(spec, provider), gcs_address)
    text = _environment().get_template(f"{provider.value}.yaml.j2").render(ctx=context)
    validate_with_ray(yaml.safe_load(text))
    return text


def kuberay_tls_secret(spec: ClusterSpec) -> str:
    """The Secret (kubernetes.io/tls) a RayService of `spec` reads an HTTPS app's certificate and key from."""
    return f"{spec.name}-serve-tls"


def _tls_secret(spec: ClusterSpec, serve_config: dict | None) -> str | None:
    """For an HTTPS app, the Secret its pods mount at KUBERAY_TLS_DIR: its certificate and key are files on
    the operator's machine, and the serve config must point where the pods see them (`build`'s tls_files_in)."""
    http = (serve_config or {}).get("http_options", {})
    if "ssl_certfile" not in http:
        return None
    for name in ("ssl_certfile", "ssl_keyfile"):
        if not http[name].startswith(f"{KUBERAY_TLS_DIR}/"):
            raise ValueError(
                f"serve config http_options.{name} {http[name]!r} is not in {KUBERAY_TLS_DIR}, where the pods mount it"
            )
    return kuberay_tls_secret(spec)


def _serve_config_text(serve_config: dict | None) -> str | None:
    return None if serve_config is None else yaml.safe_dump(serve_config, sort_keys=False).rstrip("\n")


def validate_kuberay(manifests: list[dict]) -> None:
    """What KubeRay will read: the kind's shape, and a RayService's serveConfigV2 through Serve's own schema;
    then the NetworkPolicy that guards its pods.

    (KubeRay's CRDs are not installable here; their required fields are checked by hand.)
    """
    from ray.serve.schema import ServeDeploySchema

    def require(holds: object, what: str) -> None:  # not `assert`: checks must hold under `python -O` too
        if not holds:
            raise RenderError(f"the rendered KubeRay manifest is malformed: {what}")

    try:
        require(len(manifests) == 2, f"expected the manifest and its NetworkPolicy, got {len(manifests)} documents")
        manifest, policy = manifests
        require(
            (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy"),
            "the second document is not a NetworkPolicy",
        )
        require(
            policy["spec"]["podSelector"]["matchLabels"] and policy["spec"]["ingress"],
            "the policy selects or admits nothing",
        )
        kind = manifest["kind"]
        require(manifest["apiVersion"] == "ray.io/v1" and kind in ("RayCluster", "RayService"), f"kind {kind!r}")
        cluster = manifest["spec"]["rayClusterConfig"] if kind == "RayService" else manifest["spec"]
        require(cluster["headGroupSpec"]["template"]["spec"]["containers"], "the head has no container")
        for group in cluster.get("workerGroupSpecs", []):
            require(group["groupName"] and group["minReplicas"] <= group["maxReplicas"], f"worker group {group}")
            require(group["template"]["spec"]["containers"], f"worker group {group['groupName']} has no container")
        if kind == "RayService":
            ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise RenderError(f"the rendered KubeRay manifest is malformed: {exc!r}") from None


def validate_with_ray(config: dict) -> dict:
    """Ray's own checks, as `ray up` runs them: defaults merged in, then the schema and its rules.

    fake_multinode's defaults file is missing from the Ray wheel, so a local-sim config is
    complete by itself and goes to the checks without a merge.
    """
    # Ray's private module, knowingly: these are the very functions `ray up` runs, and Ray offers no public
    # validator. pyproject pins ray to one minor version, and tests/test_cluster_render.py breaks if they move.
    from ray.autoscaler._private.util import fill_node_type_min_max_workers, prepare_config, validate_config

    try:
        if config.get("provider", {}).get("type") == "fake_multinode":
            prepared = copy.deepcopy(config)
            fill_node_type_min_max_workers(prepared)
        else:
            prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except Exception as exc:  # jsonschema.ValidationError, ValueError: Ray's wording is the useful part
        message = getattr(exc, "message", None) or str(exc).splitlines()[0]
        raise RenderError(f"Ray rejects the rendered cluster config: {message}") from None
    return prepared
