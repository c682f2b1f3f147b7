"""The cluster spec: one YAML file describing a Ray cluster as a head node and typed node pools.

It is checked to the same standard as the app spec: any problem exits 2 with
one line naming the file, the field and the fix, and a pool the provider
cannot give (an unknown instance type, a GPU type it lacks, spot where it has
none) fails with the provider's reason and the closest matches.
SSH keys and the Ray auth token are *paths*: their contents never enter a
spec or a rendered file.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from groundwork.specs import Strict, load_spec_file
from providers.compute import CatalogError, InstanceType, catalog

__all__ = [
    "ClusterSpec",
    "HeadSpec",
    "NetworkSpec",
    "NodeShape",
    "PoolSpec",
    "Provider",
    "ProviderSpec",
    "load_cluster_spec",
]

_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class Provider(str, Enum):
    aws = "aws"
    gcp = "gcp"
    azure = "azure"
    onprem = "onprem"
    local_sim = "local-sim"
    kuberay = "kuberay"

    @property
    def is_cloud(self) -> bool:
        return self in (Provider.aws, Provider.gcp, Provider.azure)


# Where each provider's nodes live: the fields it needs, as (field, example).
_LOCATION = {
    Provider.aws: [("region", "us-west-2")],
    Provider.gcp: [("project", "my-project"), ("region", "us-central1"), ("zone", "us-central1-a")],
    Provider.azure: [("location", "westus2"), ("resource_group", "modelfleet")],
}


class ProviderSpec(Strict):
    """Which provider, and where: each provider needs its own location fields."""

    type: Provider = Field(description="aws, gcp, azure, onprem, local-sim or kuberay.")
    region: str | None = Field(default=None, description="AWS or GCP region, e.g. us-west-2 / us-central1.")
    zone: str | None = Field(default=None, description="Availability zone (AWS: optional; GCP: required).")
    project: str | None = Field(default=None, description="GCP project id.")
    location: str | None = Field(default=None, description="Azure location, e.g. westus2.")
    resource_group: str | None = Field(default=None, description="Azure resource group.")
    namespace: str = Field(default="default", description="Kubernetes namespace (kuberay).")

    def check_location(self) -> None:
        missing = [(f, example) for f, example in _LOCATION.get(self.type, []) if not getattr(self, f)]
        if missing:
            fields = ", ".join(f"{f}: {example}" for f, example in missing)
            raise ValueError(f"provider: {self.type.value} needs {', '.join(f for f, _ in missing)}; add e.g. {fields}")


class NodeShape(Strict):
    """A node: a cloud instance type, or cpus/memory/gpus (on-prem, local-sim, Kubernetes, or to pick a type)."""

    instance_type: str | None = Field(default=None, description="Cloud instance type, e.g. m5.xlarge, g2-standard-8.")
    cpus: int | None = Field(default=None, ge=1, description="vCPUs per node (without instance_type).")
    memory_gb: float | None = Field(default=None, gt=0, description="Memory per node, GiB (without instance_type).")
    gpus: int = Field(default=0, ge=0, description="GPUs per node (logical GPUs on local-sim).")
    accelerator: str | None = Field(default=None, description="GPU type in Ray's names: T4, A10G, L4, A100, H100.")

    def resolve(self, provider: Provider) -> InstanceType:
        """What this node is: the catalog's type on a cloud, else the declared shape."""
        if provider.is_cloud:
            cloud = catalog(provider.value)
            if self.accelerator:
                cloud.check_accelerator(self.accelerator)
            if self.instance_type:
                found = cloud.instance(self.instance_type)
                if self.accelerator and found.accelerator != self.accelerator:
                    if found.name in cloud.attachable_gpus.get(self.accelerator, ()):  # e.g. GCP n1 + T4
                        return replace(found, gpus=self.gpus or 1, accelerator=self.accelerator)
                    raise CatalogError(
                        f"{found.name} has {found.accelerator or 'no'} GPUs, not {self.accelerator}", "accelerator"
                    )
                return found
            return cloud.smallest(self.cpus or 0, self.memory_gb or 0, self.gpus, self.accelerator)
        if self.instance_type:
            raise CatalogError(
                f"{provider.value} has no instance types; give cpus, memory_gb and gpus instead", "instance_type"
            )
        return InstanceType(
            name="custom",
            vcpus=self.cpus or 2,
            memory_gb=self.memory_gb or 4,
            gpus=self.gpus,
            accelerator=self.accelerator,
        )


class HeadSpec(NodeShape):
    """The head node (runs the GCS, the autoscaler and Serve's controller; no model replicas by default)."""

    host: str | None = Field(default=None, description="On-prem: the head machine's address.")


class PoolSpec(NodeShape):
    """A node pool: nodes of one shape that the autoscaler adds and removes between min and max."""

    name: str = Field(pattern=_NAME, description="Pool name; models ask for it with resources.pool.")
    min_workers: int = Field(default=0, ge=0, description="Nodes kept even when idle.")
    max_workers: int = Field(ge=0, description="Most nodes the autoscaler may add.")
    spot: bool = Field(default=False, description="Spot / preemptible capacity (each cloud's own setting).")
    labels: dict[str, str] = Field(default_factory=dict, description="Ray node labels for this pool's nodes.")
    hosts: list[str] = Field(default_factory=list, description="On-prem: the machines of this pool.")

    @model_validator(mode="after")
    def _bounds(self) -> PoolSpec:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"min_workers {self.min_workers} > max_workers {self.max_workers}; raise max_workers or lower "
                "min_workers"
            )
        return self


def _cidr(text: str) -> str:
    """An address range in CIDR notation, normalized ('2001:DB8::/32' -> '2001:db8::/32')."""
    if "/" not in text:
        hint = (
            f"write it with its prefix length, e.g. {text}/{32 if ':' not in text else 128}"
            if _is_address(text)
            else "e.g. 203.0.113.0/24"
        )
        raise ValueError(f"{text!r} is not an address range; {hint}")
    try:
        return str(ipaddress.ip_network(text))
    except ValueError:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an address range; e.g. 203.0.113.0/24") from None
        raise ValueError(f"{text!r} has host bits set; did you mean {network}?") from None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


Cidr = Annotated[str, AfterValidator(_cidr)]
NETWORK_EXAMPLE = "network: {allowed_source_ranges: [203.0.113.0/24]}"


class NetworkSpec(Strict):
    """Who may reach the cluster from outside: nothing is open to the internet unless written here."""

    allowed_source_ranges: list[Cidr] = Field(
        min_length=1,
        description=(
            "Address ranges (CIDR) allowed to reach the nodes' SSH (clouds, on-prem) and Serve's port (KubeRay); "
            "0.0.0.0/0 means the whole internet and is only used if written here."
        ),
    )


class SshSpec(Strict):
    user: str = Field(default="ubuntu", description="SSH user on the nodes.")
    private_key: str | None = Field(default=None, description="Path to the private key (never the key itself).")
    public_key: str | None = Field(default=None, description="Path to the public key (Azure needs one).")


class ClusterSpec(Strict):
    """A Ray cluster: a head node and node pools, on one provider."""

    name: str = Field(pattern=_NAME, description="Cluster name.")
    provider: ProviderSpec
    head: HeadSpec = Field(default_factory=HeadSpec, description="The head node.")
    pools: list[PoolSpec] = Field(min_length=1, description="Worker node pools.")
    idle_timeout_minutes: float = Field(default=5, gt=0, description="An idle worker is removed after this long.")
    image: str | None = Field(
        default=None, description="Container image to run Ray in, e.g. rayproject/ray:2.60.0-py311."
    )
    setup_commands: list[str] = Field(
        default_factory=list, description="Shell commands run on every node before Ray starts."
    )
    install_runtime: bool = Field(
        default=True,
        description=(
            "Without an image: install Ray and what the replicas import, at the versions of the machine running "
            "`cluster up`, in a virtualenv on every node before Ray starts (the hosts need only SSH and Python 3 "
            "with venv). False when setup_commands or the hosts already provide them."
        ),
    )
    ssh: SshSpec = Field(default_factory=SshSpec, description="How the launcher reaches the nodes.")
    network: NetworkSpec | None = Field(
        default=None, description=f"Required except for local-sim: who may reach the cluster, e.g. {NETWORK_EXAMPLE}."
    )
    auth_token_file: str = Field(
        default="~/.ray/auth_token",
        description=(
            "Path to the Ray auth token (RAY_AUTH_MODE=token); copied to the nodes, never written into the config."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSpec:
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pools: names must be unique, {dupes} repeat")
        self.check_for(self.provider.type)
        return self

    def check_for(self, provider: Provider) -> None:
        """Everything `provider` needs from this spec; ValueError naming the field otherwise."""
        ProviderSpec.model_validate({**self.provider.model_dump(), "type": provider}).check_location()
        if provider is Provider.onprem:
            if not self.head.host:
                raise ValueError("head.host: on-prem needs the head machine's address; add head: {host: 10.0.0.1}")
            for i, pool in enumerate(self.pools):
                if not pool.hosts:
                    raise ValueError(
                        f"pools[{i}:{pool.name}].hosts: on-prem needs this pool's machines; add hosts: [10.0.0.2, ...]"
                    )
        if provider is not Provider.local_sim and self.network is None:
            raise ValueError(
                f"network.allowed_source_ranges: {provider.value} needs the address ranges allowed to reach the "
                "cluster "
                f"(SSH, Serve); add e.g. {NETWORK_EXAMPLE} (0.0.0.0/0 opens it to the internet and must be written out)"
            )
        _check_node("head", self.head, provider)
        for i, pool in enumerate(self.pools):
            node = _check_node(f"pools[{i}:{pool.name}]", pool, provider)
            if pool.spot:
                try:
                    if not provider.is_cloud:
                        raise CatalogError(f"{provider.value} has no spot capacity; set spot: false", "spot")
                    catalog(provider.value).check_spot(node)
                except CatalogError as exc:
                    raise ValueError(f"pools[{i}:{pool.name}].spot: {exc}") from None

    def nodes(self, provider: Provider) -> tuple[InstanceType, dict[str, InstanceType]]:
        """The head's and each pool's resolved shape on `provider` (check_for first)."""
        return self.head.resolve(provider), {p.name: p.resolve(provider) for p in self.pools}


def _check_node(where: str, node: NodeShape, provider: Provider) -> InstanceType:
    try:
        return node.resolve(provider)
    except CatalogError as exc:
        raise ValueError(f"{where}.{exc.field}: {exc}") from None


def load_cluster_spec(path: str | Path) -> ClusterSpec:
    """Read and validate a cluster spec; SpecError with one clear line on any problem."""
    return load_spec_file(
        path, ClusterSpec, "a cluster spec", "examples/clusters/local-sim.yaml", "modelfleet cluster schema"
    )
