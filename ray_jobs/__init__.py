"""Thin entrypoints for `ray job submit -- python -m ray_jobs.<stage> --config FILE`."""
