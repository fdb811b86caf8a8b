"""Where things live and run: storage locations (local or s3://), MLflow tracking and registry, the KubeRay client."""
