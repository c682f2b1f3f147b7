"""Who may reach a cluster: the spec's `network.allowed_source_ranges`, in each provider's own terms.

Ray's launchers open SSH to the internet by default: AWS adds a rule for
0.0.0.0/0 to the security group it creates, Azure's NSG template allows any
source, and GCP's default network has a project-wide default-allow-ssh rule.
What Ray's config lets us say, we render (AWS IpPermissions, GCP network tags,
a KubeRay NetworkPolicy); what it does not, we print as the command that does
it (`steps`), in the rendered file and after `cluster render`.
"""

from __future__ import annotations

import hashlib

from .spec import ClusterSpec, Provider

__all__ = [
    "AZURE_UNIQUE_ID_LEN",
    "SSH_PORT",
    "aws_security_group",
    "azure_nsg_name",
    "gcp_network_tag",
    "kuberay_ingress",
    "steps",
]

SSH_PORT = 22
EVERYWHERE = "0.0.0.0/0"
RULE_DESCRIPTION = "modelfleet network.allowed_source_ranges"
# Ray's Azure provider names the cluster's NSG ray-<cluster>-<sha256(resource group)[:4]>-nsg
# (ray/autoscaler/_private/_azure/config.py, UNIQUE_ID_LEN; that module needs Azure's SDK to import).
AZURE_UNIQUE_ID_LEN = 4
# Ray's AWS provider names the group it creates ray-autoscaler-<cluster> (aws/config.py, SECURITY_GROUP_TEMPLATE).
AWS_GROUP = "ray-autoscaler-{}"


def _ranges(spec: ClusterSpec) -> list[str]:
    return list(dict.fromkeys(spec.network.allowed_source_ranges)) if spec.network else []


def aws_security_group(spec: ClusterSpec) -> dict:
    """`provider.security_group`: SSH from the allowed ranges, on the group Ray creates for the cluster.

    Ray merges these IpPermissions with its defaults (the cluster's own nodes, and SSH from 0.0.0.0/0),
    so `steps` also says how to remove the latter, and 0.0.0.0/0 is not repeated here (AWS refuses a
    duplicate rule, and `ray up` with it).
    """
    v4 = [r for r in _ranges(spec) if ":" not in r and r != EVERYWHERE]
    v6 = [r for r in _ranges(spec) if ":" in r]
    if not v4 and not v6:
        return {"IpPermissions": []}
    ssh: dict = {"IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT}
    if v4:
        ssh["IpRanges"] = [{"CidrIp": r, "Description": RULE_DESCRIPTION} for r in v4]
    if v6:
        ssh["Ipv6Ranges"] = [{"CidrIpv6": r, "Description": RULE_DESCRIPTION} for r in v6]
    return {"IpPermissions": [ssh]}


def gcp_network_tag(spec: ClusterSpec) -> str:
    """The network tag on every node, for a firewall rule to target (Ray's GCP provider creates none).

    GCP tags and rule names start with a letter and have at most 63 characters (room kept for "-ssh").
    """
    return f"ray-{spec.name}"[:59].rstrip("-")


def azure_nsg_name(spec: ClusterSpec) -> str:
    unique_id = hashlib.sha256((spec.provider.resource_group or "").encode()).hexdigest()[:AZURE_UNIQUE_ID_LEN]
    return f"ray-{spec.name}-{unique_id}-nsg"


# The KubeRay operator's pods, as its Helm chart labels them (in whatever namespace it runs).
KUBERAY_OPERATOR = {"app.kubernetes.io/name": "kuberay-operator"}


def kuberay_ingress(spec: ClusterSpec, pod_labels: dict[str, str], serve_port: int, dashboard_port: int) -> list[dict]:
    """A NetworkPolicy's ingress for the Ray pods: each other on any port, the allowed ranges on Serve's port,
    the KubeRay operator on the dashboard's. Everything else is dropped, Ray's gRPC ports included."""
    return [
        {"from": [{"podSelector": {"matchLabels": pod_labels}}]},
        {"from": [{"ipBlock": {"cidr": r}} for r in _ranges(spec)], "ports": [{"protocol": "TCP", "port": serve_port}]},
        {
            "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": KUBERAY_OPERATOR}}],
            "ports": [{"protocol": "TCP", "port": dashboard_port}],
        },
    ]


def _aws_steps(spec: ClusterSpec, serve_port: int) -> list[str]:
    if EVERYWHERE in _ranges(spec):
        return [f"SSH is open to {EVERYWHERE}, as network.allowed_source_ranges says."]
    group, region = AWS_GROUP.format(spec.name), spec.provider.region
    return [
        f"Ray also adds SSH from {EVERYWHERE} to the security group it creates ({group}); after the first `ray up`, "
        "remove it:",
        f"  aws ec2 revoke-security-group-ingress --region {region} --protocol tcp --port {SSH_PORT} --cidr "
        f"{EVERYWHERE} "
        f"--group-id $(aws ec2 describe-security-groups --region {region} --filters Name=group-name,Values={group} "
        "--query 'SecurityGroups[0].GroupId' --output text)",
    ]


def _gcp_steps(spec: ClusterSpec, serve_port: int) -> list[str]:
    tag = gcp_network_tag(spec)
    return [
        f"Ray's GCP provider creates no firewall rules; every node carries the network tag {tag}. Admit SSH from the "
        "allowed ranges:",
        f"  gcloud compute firewall-rules create {tag}-ssh --project {spec.provider.project} --network default "
        "--direction INGRESS "
        f"--allow tcp:{SSH_PORT} --source-ranges {','.join(_ranges(spec))} --target-tags {tag}",
        f"and delete or narrow the default network's default-allow-ssh rule, which admits SSH from {EVERYWHERE} to "
        "every instance.",
    ]


def _azure_steps(spec: ClusterSpec, serve_port: int) -> list[str]:
    return [
        "Ray's Azure template gives the cluster's NSG an SSH rule from any source, and every `ray up` re-applies it; "
        "after each, run:",
        f"  az network nsg rule update --resource-group {spec.provider.resource_group} --nsg-name "
        f"{azure_nsg_name(spec)} --name SSH "
        f"--source-address-prefixes {' '.join(_ranges(spec))}",
    ]


def _onprem_steps(spec: ClusterSpec, serve_port: int) -> list[str]:
    return [
        f"Ray's on-prem provider opens and closes nothing: let only {', '.join(_ranges(spec))} reach the machines' SSH "
        f"({SSH_PORT}) "
        f"and Serve's port ({serve_port}), and Ray's ports only the cluster's own machines."
    ]


def _kuberay_steps(spec: ClusterSpec, serve_port: int) -> list[str]:
    return [
        "The NetworkPolicy takes effect only with a CNI that enforces it (Calico, Cilium, ...); a load balancer in "
        "front of "
        "Serve must keep client addresses (externalTrafficPolicy: Local) for the ranges to match."
    ]


_STEPS = {
    Provider.aws: _aws_steps,
    Provider.gcp: _gcp_steps,
    Provider.azure: _azure_steps,
    Provider.onprem: _onprem_steps,
    Provider.kuberay: _kuberay_steps,
}


def steps(spec: ClusterSpec, provider: Provider, serve_port: int) -> list[str]:
    """What the provider's own firewall needs beyond the rendered file: lines of prose and commands (local-sim:
    none)."""
    return _STEPS[provider](spec, serve_port) if provider in _STEPS else []
