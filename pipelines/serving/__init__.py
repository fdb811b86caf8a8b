"""The Ray Serve application: OpenAI-compatible HTTP over the in-stream decoder."""
