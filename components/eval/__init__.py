"""Every metric and evaluation: retrieval rankings, teacher-forced vectors, free-running answers, answer scores."""
