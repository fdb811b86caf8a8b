"""The orchestrated stages (Ray Data, Ray Train + DeepSpeed, Ray Serve, MLflow) and the CLI."""
