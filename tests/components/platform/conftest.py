from tests.fixtures.kube import cluster, fake_repo, schemas  # noqa: F401  (pytest finds fixtures by name)
