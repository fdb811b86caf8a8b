"""Checking the KubeRay manifests in k8s/ offline, against the CRD schemas and this checkout."""
