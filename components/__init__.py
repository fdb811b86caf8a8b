"""The OneGen algorithm and its parts: PyTorch, transformers, peft, faiss, mlflow, boto3, kubernetes.
Nothing here imports Ray; pipelines/ orchestrates these pieces on a cluster."""
