"""Generation: the in-stream decoder, its retrieval policy, the request batcher, the baselines."""
