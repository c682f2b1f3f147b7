"""Cluster spec -> Ray cluster YAML / KubeRay manifest, and launch. (Filled by the cluster issue.)"""
