"""pipelines.k8s.validation catches each kind of mistake: planted, one at a time, in a copy of k8s/
that is clean to begin with (against a stand-in repository that has exactly what it names)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pipelines.k8s import validation as k8s_validation
from pipelines.k8s.validation import check_rendered, check_tree, strict
from tests.fixtures.kube import K8S


@pytest.fixture
def tree(tmp_path) -> Path:
    shutil.copytree(K8S, tmp_path / "k8s")
    return tmp_path / "k8s"


def problems(tree: Path, schemas, repo: Path) -> list[str]:
    return [str(p) for p in check_tree(tree, schemas, repo=repo, rendered=False)]


def edit(path: Path, change) -> None:
    """Load every document of a YAML file, let `change(docs)` modify them, write them back."""
    docs = list(yaml.safe_load_all(path.read_text()))
    change(docs)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def only(found: list[str], *fragments: str) -> str:
    """The single problem found, after checking it says each fragment."""
    assert len(found) == 1, found
    for fragment in fragments:
        assert fragment in found[0], found[0]
    return found[0]


def first_container(group: dict) -> dict:
    """The Ray container of a head or worker group spec."""
    return group["template"]["spec"]["containers"][0]


def test_the_copy_is_clean_so_each_planted_mistake_is_the_only_problem(tree, schemas, fake_repo):
    assert problems(tree, schemas, fake_repo) == []


def test_an_unknown_field_deep_in_a_pod_template(tree, schemas, fake_repo):
    edit(tree / "base/raycluster.yaml", lambda d: first_container(d[0]["spec"]["headGroupSpec"]).update(envFrm=[]))
    only(problems(tree, schemas, fake_repo), "RayCluster/onegen at /spec/headGroupSpec/template/spec/containers/0",
         "'envFrm' was unexpected")  # fmt: skip


def test_a_misspelt_rayjob_field(tree, schemas, fake_repo):
    edit(tree / "base/rayjob-train.yaml", lambda d: d[0]["spec"].update(shutdownAfterJobFinish=True))
    only(problems(tree, schemas, fake_repo), "RayJob/onegen-train at /spec", "'shutdownAfterJobFinish' was unexpected")


def test_a_submission_mode_kuberay_does_not_have(tree, schemas, fake_repo):
    edit(tree / "base/rayjob-train.yaml", lambda d: d[0]["spec"].update(submissionMode="K8sMode"))
    only(problems(tree, schemas, fake_repo), "spec.submissionMode 'K8sMode' is not one of", "K8sJobMode")


def test_requests_above_limits(tree, schemas, fake_repo):
    def more_memory(docs):
        worker = first_container(docs[0]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0])
        worker["resources"]["requests"]["memory"] = "64Gi"

    edit(tree / "base/rayservice.yaml", more_memory)
    only(problems(tree, schemas, fake_repo), "RayService/onegen-serve", "workerGroupSpecs[0]",
         "requests.memory 64Gi > limits.memory 48Gi")


def test_a_gpu_request_below_its_limit(tree, schemas, fake_repo):
    def half_a_gpu(docs):
        first_container(docs[0]["spec"]["workerGroupSpecs"][1])["resources"]["requests"]["nvidia.com/gpu"] = 0

    edit(tree / "base/raycluster.yaml", half_a_gpu)
    only(problems(tree, schemas, fake_repo), "requests.nvidia.com/gpu must equal limits.nvidia.com/gpu")


def test_an_entrypoint_module_that_does_not_exist(tree, schemas, fake_repo):
    edit(tree / "base/rayjob-train.yaml", lambda d: d[0]["spec"].update(entrypoint="python -m ray_jobs.trian --config tiny"))
    only(problems(tree, schemas, fake_repo), "runs ray_jobs.trian, but ray_jobs/trian.py does not exist")


def test_an_entrypoint_that_is_not_a_stage(tree, schemas, fake_repo):
    edit(tree / "base/rayjob-train.yaml", lambda d: d[0]["spec"].update(entrypoint="python train.py"))
    only(problems(tree, schemas, fake_repo), "does not run `python -m ray_jobs.<stage>`")


@pytest.mark.parametrize("import_path, says", [
    ("pipelines.serving.ap:build_app", "module pipelines.serving.ap is not in"),
    ("pipelines.serving.app:build", "pipelines/serving/app.py defines no build"),
    ("pipelines.serving.app.build_app", None),  # the dotted form Serve also accepts
])  # fmt: skip
def test_an_import_path_that_does_not_resolve(tree, schemas, fake_repo, import_path, says):
    def point_at(docs):
        docs[0]["spec"]["serveConfigV2"] = docs[0]["spec"]["serveConfigV2"].replace("pipelines.serving.app:build_app", import_path)

    edit(tree / "base/rayservice.yaml", point_at)
    found = problems(tree, schemas, fake_repo)
    if says is None:
        assert found == []
    else:
        only(found, "RayService/onegen-serve", says)


@pytest.mark.parametrize("kind, remove, says", [
    ("Deployment", ("spec", "selector"), "'selector' is a required property"),
    ("Service", ("spec", "ports"), "'ports' is a required property"),
    ("PersistentVolumeClaim", ("spec", "accessModes"), "'accessModes' is a required property"),
    ("Deployment", ("metadata", "name"), "'name' is a required property"),
])  # fmt: skip
def test_a_missing_required_core_field(tree, schemas, fake_repo, kind, remove, says):
    def drop(docs):
        (doc,) = [d for d in docs if d["kind"] == kind]
        del doc[remove[0]][remove[1]]

    edit(tree / "base/mlflow.yaml", drop)
    only(problems(tree, schemas, fake_repo), says)


def test_a_configmap_value_of_the_wrong_type(tree, schemas, fake_repo):
    edit(tree / "base/config.yaml", lambda d: d[0]["data"].update(RETRIES=3))
    only(problems(tree, schemas, fake_repo), "ConfigMap/onegen-config at /data/RETRIES", "3 is not of type 'string'")


@pytest.mark.parametrize("fragment, says", [
    ({"apiVersion": "ray.io/v1", "kind": "RayJob", "spec": {"entrypoint": "python -m ray_jobs.train"}},
     "'metadata' is a required property"),
    ({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"}}, "'spec' is a required property"),
    ({"spec": {"workerGroupSpecs": []}}, "not a Kubernetes resource (no kind)"),
    ({"apiVersion": "ray.io/v1", "kind": "RayServe", "metadata": {"name": "x"}, "spec": {}}, "unknown kind 'RayServe'"),
])  # fmt: skip
def test_a_fragment_file(tree, schemas, fake_repo, fragment, says):
    (tree / "base/fragment.yaml").write_text(yaml.safe_dump(fragment))
    only(problems(tree, schemas, fake_repo), "fragment.yaml", says)


def test_a_strategic_merge_fragment_as_a_patch(tree, schemas, fake_repo):
    patch = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "onegen-train"}, "spec": {"entrypoint": "x"}}
    (tree / "overlays/gpu/patches/rayjob-train-models.yaml").write_text(yaml.safe_dump(patch))
    only(problems(tree, schemas, fake_repo), "rayjob-train-models.yaml", "a patch is one JSON6902 list")


def test_a_json6902_operation_that_does_not_exist(tree, schemas, fake_repo):
    edit(tree / "overlays/dev-cpu/patches/rayjob-train.yaml", lambda d: d[0][0].update(op="set"))
    only(problems(tree, schemas, fake_repo), "patches/rayjob-train.yaml at /0/op", "'set' is not one of")


def test_a_misspelt_key_in_a_json6902_operation(tree, schemas, fake_repo):
    edit(tree / "overlays/dev-cpu/patches/rayjob-train.yaml", lambda d: d[0][0].update(vaule=d[0][0].pop("value")))
    only(problems(tree, schemas, fake_repo), "patches/rayjob-train.yaml at /0", "'vaule' was unexpected")


def test_a_secret_with_a_real_value(tree, schemas, fake_repo):
    edit(tree / "base/secret.template.yaml", lambda d: d[0]["stringData"].update(AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI"))
    only(problems(tree, schemas, fake_repo), "Secret/onegen-s3",
         "AWS_SECRET_ACCESS_KEY: a committed Secret holds only <placeholders>")


def test_a_kustomization_patch_outside_patches(tree, schemas, fake_repo):
    shutil.move(tree / "overlays/gpu/patches/rayjob-train-models.yaml", tree / "overlays/gpu/models.yaml")
    edit(tree / "overlays/gpu/kustomization.yaml", lambda d: d[0]["patches"][0].update(path="models.yaml"))
    found = problems(tree, schemas, fake_repo)
    assert "patch 'models.yaml' is not under patches/" in found[0]
    # and, outside patches/, the moved operations are no resource either
    assert len(found) == 2 and "models.yaml#0: not a Kubernetes resource" in found[1]


def test_a_kustomization_naming_a_missing_file_or_an_unknown_field(tree, schemas, fake_repo):
    edit(tree / "base/kustomization.yaml", lambda d: d[0]["resources"].append("rayservice-canary.yaml"))
    only(problems(tree, schemas, fake_repo), "resource 'rayservice-canary.yaml' does not exist")
    edit(tree / "base/kustomization.yaml", lambda d: (d[0]["resources"].pop(), d[0].update(resource=["x.yaml"])))
    only(problems(tree, schemas, fake_repo), "base/kustomization.yaml at /", "'resource' was unexpected")


@pytest.mark.skipif(not k8s_validation.can_render(), reason="needs kubectl or kustomize")
def test_a_mistake_that_only_the_rendered_overlay_shows(tree, schemas, fake_repo):
    """Each file is valid alone; the patch's value makes the rendered RayJob ask more than its limit."""
    def more_cpu(docs):
        first_container(docs[0][2]["value"][0])["resources"]["requests"]["cpu"] = "8"

    edit(tree / "overlays/dev-cpu/patches/rayjob-train.yaml", more_cpu)
    assert problems(tree, schemas, fake_repo) == []
    found = [str(p) for p in check_rendered(tree / "overlays/dev-cpu", schemas, tree, repo=fake_repo)]
    only(found, "overlays/dev-cpu (rendered)", "RayJob/onegen-train", "requests.cpu 8 > limits.cpu 4")


def test_the_command_line_entry_takes_a_schema_directory(tree, fake_repo, schemas, capsys):
    edit(tree / "base/rayjob-train.yaml", lambda d: d[0]["spec"].update(submissionMode="Batch"))
    code = k8s_validation.main([str(tree), "--schemas", str(k8s_validation.DEFAULT_SCHEMAS), "--no-render"])
    out = capsys.readouterr().out
    assert code == 1 and "spec.submissionMode 'Batch'" in out
    with pytest.raises(FileNotFoundError, match="rayclusters.v1.schema.json: no RayCluster schema"):
        k8s_validation.main([str(tree), "--schemas", str(tree)])


def test_strict_closes_every_listed_object_but_preserve_unknown_ones():
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {"a": {"type": "string"}}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"b": {}}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    }}  # fmt: skip
    closed = strict(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["spec"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["free"]
    assert closed["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in schema  # the input is left as it was


def test_quantities_compare_exactly_and_a_bad_one_is_named():
    def container(requests: dict, limits: dict) -> dict:
        return {"spec": {"containers": [{"name": "c", "resources": {"requests": requests, "limits": limits}}]}}

    assert k8s_validation._resources(container({"cpu": "500m", "memory": "1Gi"}, {"cpu": "0.5", "memory": "1024Mi"})) == []
    assert k8s_validation._resources(container({"memory": "1G"}, {"memory": "1e3"}))[0].endswith("requests.memory 1G > limits.memory 1e3")
    assert "8x" in k8s_validation._resources(container({"cpu": "8x"}, {"cpu": "1"}))[0]
