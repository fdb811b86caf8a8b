"""The local stack (Ray head, MLflow) and its processes, submitting stages as Ray jobs, the main job."""
