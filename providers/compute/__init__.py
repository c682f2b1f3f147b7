"""What each cloud can run, as data: instance types, accelerators, spot.

One YAML catalog per cloud (`catalogs/<provider>.yaml`). A node-pool request
is checked here, so a cluster spec asking for what a provider cannot give
fails with that provider's reason and the closest matches, before anything
is rendered or launched. Also the one place that names a pool's Ray resource,
shared by the cluster renderer (nodes advertise it) and the app builder
(replicas ask for it).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

__all__ = [
    "POOL_CAPACITY",
    "POOL_DEMAND",
    "Catalog",
    "CatalogError",
    "InstanceType",
    "catalog",
    "clouds",
    "pool_resource",
]

CATALOGS = Path(__file__).parent / "catalogs"
# Every node of a pool advertises POOL_CAPACITY units of its pool's resource and a replica asks
# for POOL_DEMAND: a pool's resource never limits how many replicas fit (CPU and GPU do), it only
# says where they may go. Integers on nodes, as Ray's cluster schema requires.
POOL_CAPACITY = 1000
POOL_DEMAND = 0.001


def pool_resource(pool: str) -> str:
    """The Ray custom resource a pool's nodes advertise (cf. Ray's own `accelerator_type:<T>`)."""
    return f"pool:{pool}"


class CatalogError(ValueError):
    """A request the provider cannot meet; the message gives the provider's reason and close matches.

    `field`: the node field the request came from (instance_type, accelerator, spot, cpus).
    """

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_gb: float
    gpus: int = 0
    accelerator: str | None = None
    spot: bool = True


@dataclass(frozen=True)
class Catalog:
    provider: str
    spot: bool
    accelerators: tuple[str, ...]
    instance_types: dict[str, InstanceType]
    # GCP: accelerators attached to general-purpose machine types (T4 on n1), and GCE's names for them.
    attachable_gpus: dict[str, tuple[str, ...]] = field(default_factory=dict)
    gpu_type_names: dict[str, str] = field(default_factory=dict)

    def instance(self, name: str) -> InstanceType:
        found = self.instance_types.get(name)
        if found is None:
            close = difflib.get_close_matches(name, list(self.instance_types), n=3, cutoff=0.5)
            hint = (
                f"did you mean {', '.join(close)}?"
                if close
                else f"known types include {', '.join(list(self.instance_types)[:6])}, ..."
            )
            raise CatalogError(f"{self.provider} has no instance type {name!r}; {hint}", "instance_type")
        return found

    def check_accelerator(self, accelerator: str) -> None:
        if accelerator not in self.accelerators:
            close = difflib.get_close_matches(accelerator, self.accelerators, n=2, cutoff=0.4)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise CatalogError(
                f"{self.provider} offers no {accelerator!r} GPUs; {hint}it has {', '.join(self.accelerators)}",
                "accelerator",
            )

    def check_spot(self, instance: InstanceType) -> None:
        if not self.spot:
            raise CatalogError(f"{self.provider} has no spot capacity; set spot: false", "spot")
        if not instance.spot:
            raise CatalogError(
                f"{self.provider} does not sell {instance.name} as spot capacity; set spot: false or pick another type",
                "spot",
            )

    def smallest(
        self, cpus: int = 0, memory_gb: float = 0, gpus: int = 0, accelerator: str | None = None
    ) -> InstanceType:
        """The cheapest-looking type (fewest GPUs, vCPUs, then memory) that meets the request."""
        if accelerator:
            self.check_accelerator(accelerator)
        fits = [
            t
            for t in self.instance_types.values()
            if t.vcpus >= cpus
            and t.memory_gb >= memory_gb
            and t.gpus >= gpus
            and (accelerator is None or t.accelerator == accelerator)
            and (gpus > 0 or t.gpus == 0)
        ]
        if not fits:
            want = ", ".join(
                f"{k}={v}"
                for k, v in (("cpus", cpus), ("memory_gb", memory_gb), ("gpus", gpus), ("accelerator", accelerator))
                if v
            )
            raise CatalogError(
                f"no {self.provider} instance type has {want}; ask for less or name an instance_type", "cpus"
            )
        return min(fits, key=lambda t: (t.gpus, t.vcpus, t.memory_gb, t.name))


def clouds() -> list[str]:
    return sorted(p.stem for p in CATALOGS.glob("*.yaml"))


@cache
def catalog(provider: str) -> Catalog:
    path = CATALOGS / f"{provider}.yaml"
    if not path.exists():
        raise CatalogError(
            f"no instance catalog for {provider!r}; catalogs exist for {', '.join(clouds())}", "instance_type"
        )
    data = yaml.safe_load(path.read_text())
    types = {name: InstanceType(name=name, **fields) for name, fields in data["instance_types"].items()}
    return Catalog(
        provider=data["provider"],
        spot=bool(data.get("spot", True)),
        accelerators=tuple(data.get("accelerators", ())),
        instance_types=types,
        attachable_gpus={k: tuple(v) for k, v in data.get("attachable_gpus", {}).items()},
        gpu_type_names=dict(data.get("gpu_type_names", {})),
    )
