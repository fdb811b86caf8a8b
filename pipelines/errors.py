"""What a stage raises for a reason the user can act on. The job's entry runner (ray_jobs/runner.py)
prints the message alone, not a traceback: it already says what to do."""


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on; the message says what to do."""
