"""The manifests in k8s/: valid against the KubeRay CRD schemas (strict) and the extra checks, and
shaped as the design says (GPU groups and autoscaling, the training RayJob, the serving RayService,
config and credentials from the environment; the dev-cpu overlay without a GPU)."""

from __future__ import annotations

import ast

import pytest
import yaml

from pipelines.k8s import validation as k8s_validation
from pipelines.k8s.validation import check_rendered, check_tree, resolve_import_path
from tests.fixtures.kube import K8S, REPO

needs_render = pytest.mark.skipif(not k8s_validation.can_render(), reason="needs kubectl or kustomize")
OVERLAYS = ["base", "overlays/gpu", "overlays/dev-cpu"]
# Stage modules other engineers are writing; the check runs as soon as they land.
PENDING = [p for p in ["ray_jobs/train.py", "pipelines/serving/app.py"] if not (REPO / p).exists()]


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, dict]]:
    """overlay → kind → the one resource of that kind (Secrets aside, each overlay has one per kind)."""
    if not k8s_validation.can_render():
        pytest.skip("needs kubectl or kustomize")
    return {o: {d["kind"]: d for d in k8s_validation.render(K8S / o)} for o in OVERLAYS}


def test_every_file_is_valid_apart_from_what_it_names_in_the_repo(schemas):
    assert [str(p) for p in check_tree(K8S, schemas, repo=None, rendered=False)] == []


@needs_render
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_to_valid_resources(schemas, overlay):
    assert [str(p) for p in check_rendered(K8S / overlay, schemas, K8S, repo=None)] == []


@pytest.mark.skipif(bool(PENDING), reason=f"waiting for {', '.join(PENDING)} (being written)")
def test_the_stage_module_and_serve_import_path_exist(schemas):
    assert [str(p) for p in check_tree(K8S, schemas, rendered=k8s_validation.can_render())] == []


@pytest.mark.skipif(not (REPO / "pipelines/serving/app.py").exists(), reason="pipelines/serving/app.py not written yet")
def test_the_serve_import_path_resolves_today():
    assert resolve_import_path("pipelines.serving.app:build_app") is None


def test_every_patch_is_a_json6902_list_under_patches():
    for kustomization in K8S.rglob("kustomization.yaml"):
        for patch in yaml.safe_load(kustomization.read_text()).get("patches", []):
            assert patch["path"].startswith("patches/")
            assert isinstance(yaml.safe_load((kustomization.parent / patch["path"]).read_text()), list)


def gpu_limit(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def groups(cluster_spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g["template"]["spec"]["containers"][0] for g in cluster_spec["workerGroupSpecs"]}


def test_raycluster_autoscales_a_cpu_and_a_gpu_worker_group(rendered):
    spec = rendered["overlays/gpu"]["RayCluster"]["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    workers = groups(spec)
    assert set(workers) == {"cpu", "gpu"}
    assert gpu_limit(workers["gpu"]) == 1 and gpu_limit(workers["cpu"]) == 0


def test_rayjob_trains_the_gpu_preset_on_gpu_workers_and_cleans_up(rendered):
    job = rendered["overlays/gpu"]["RayJob"]
    spec = job["spec"]
    assert spec["entrypoint"] == "python -m ray_jobs.train --config llama2-7b-gpu"
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["suspend"] is True  # applying the overlay starts no run; submit-train does
    (worker,) = groups(spec["rayClusterSpec"]).values()
    preset = yaml.safe_load((REPO / "pipelines/presets/llama2-7b-gpu.yaml").read_text())
    group = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert gpu_limit(worker) == 1 and group["replicas"] == preset["workers"]["num_workers"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in worker["volumeMounts"]
    assert preset["train"]["model"]["source"].startswith("/models/")


def serve_config(overlay: dict) -> dict:
    return yaml.safe_load(overlay["RayService"]["spec"]["serveConfigV2"])


def test_rayservice_serves_the_presets_champion_on_gpu_replicas(rendered):
    gpu, preset = rendered["overlays/gpu"], yaml.safe_load((REPO / "pipelines/presets/llama2-7b-gpu.yaml").read_text())
    (app,) = serve_config(gpu)["applications"]
    assert app["import_path"] == "pipelines.serving.app:build_app"
    assert app["args"]["model_uri"] == f"models:/{preset['mlflow']['registered_model']}@champion"
    (deployment,) = app["deployments"]
    assert deployment["ray_actor_options"]["num_gpus"] == 1 and deployment["placement_group_bundles"][0]["GPU"] == 1
    workers = groups(gpu["RayService"]["spec"]["rayClusterConfig"])
    assert [gpu_limit(c) for c in workers.values()] == [1]


def test_dev_cpu_has_no_gpu_and_runs_smollm2_cpu(rendered):
    dev = rendered["overlays/dev-cpu"]
    assert "nvidia.com/gpu" not in yaml.safe_dump(list(dev.values()))
    assert dev["RayJob"]["spec"]["entrypoint"] == "python -m ray_jobs.train --config smollm2-cpu"
    (app,) = serve_config(dev)["applications"]
    assert app["args"]["model_uri"] == "models:/onegen@champion"  # smollm2-cpu keeps the default name
    assert "deployments" not in app  # the code's own CPU bundles
    images = {c["image"] for _, c in k8s_validation.containers(dev)}
    assert images == {"registry.example.com/onegen/onegen-ray:0.1.0-cpu"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_reads_config_and_s3_credentials_from_the_environment(rendered, overlay):
    for kind in ("RayCluster", "RayJob", "RayService", "Deployment"):
        for where, container in k8s_validation.containers(rendered[overlay][kind]):
            sources = container["envFrom"]
            assert {"configMapRef": {"name": "onegen-config"}} in sources, f"{kind} {where}"
            assert {"secretRef": {"name": "onegen-s3"}} in sources, f"{kind} {where}"


def test_the_configmap_points_at_the_mlflow_service_and_s3():
    config, namespace = (yaml.safe_load((K8S / "base" / f).read_text()) for f in ("config.yaml", "namespace.yaml"))
    service = [d for d in yaml.safe_load_all((K8S / "base/mlflow.yaml").read_text()) if d["kind"] == "Service"][0]
    uri = f"http://{service['metadata']['name']}.{namespace['metadata']['name']}.svc:{service['spec']['ports'][0]['port']}"
    assert config["data"]["MLFLOW_TRACKING_URI"] == uri
    preset = yaml.safe_load((REPO / "pipelines/presets/llama2-7b-gpu.yaml").read_text())
    assert preset["mlflow"]["tracking_uri"] == uri
    assert config["data"]["AWS_ENDPOINT_URL_S3"] == config["data"]["MLFLOW_S3_ENDPOINT_URL"]


def test_the_secrets_are_a_template_of_placeholders_that_no_overlay_applies(rendered):
    template = list(yaml.safe_load_all((K8S / "base/secret.template.yaml").read_text()))
    values = {k: v for s in template for k, v in k8s_validation.secret_values(s).items()}
    assert set(values) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "ONEGEN_API_KEY"}
    assert all(k8s_validation.is_placeholder(v) for v in values.values())
    assert all("Secret" not in kinds for kinds in rendered.values())


def test_the_serve_config_is_valid_for_ray_serve(rendered):
    schema = pytest.importorskip("ray.serve.schema")
    for overlay in ("overlays/gpu", "overlays/dev-cpu"):
        schema.ServeDeploySchema.model_validate(serve_config(rendered[overlay]))


@pytest.mark.skipif(not (REPO / "pipelines/serving/app.py").exists(), reason="pipelines/serving/app.py not written yet")
def test_the_serve_args_are_fields_of_the_apps_serve_args(rendered):
    """The app's ServeArgs forbids unknown keys: an arg it does not declare would fail the deploy."""
    tree = ast.parse((REPO / "pipelines/serving/app.py").read_text())
    (serve_args,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ServeArgs"]
    fields = {n.target.id for n in serve_args.body if isinstance(n, ast.AnnAssign)}
    for overlay in ("overlays/gpu", "overlays/dev-cpu"):
        (app,) = serve_config(rendered[overlay])["applications"]
        assert set(app["args"]) <= fields


@pytest.mark.parametrize("overlay", ["overlays/gpu", "overlays/dev-cpu"])
def test_the_serve_app_autoscales_within_the_worker_pods_the_cluster_may_add(rendered, overlay):
    """One replica per worker pod (its bundles fill the pod): Serve may not ask for more replicas
    than Ray's autoscaler may add pods, and the args are what the app accepts."""
    app_module = pytest.importorskip("pipelines.serving.app")
    service = rendered[overlay]["RayService"]["spec"]
    (app,) = serve_config(rendered[overlay])["applications"]
    args = app_module.ServeArgs.model_validate(app["args"])
    assert args.autoscaling is not None and service["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    pods = sum(g["maxReplicas"] for g in service["rayClusterConfig"]["workerGroupSpecs"])
    assert args.autoscaling.min_replicas >= 1 and args.autoscaling.max_replicas <= pods


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_pod_is_scraped_by_prometheus_on_ray_s_metrics_port(rendered, overlay):
    """KubeRay starts each node with --metrics-export-port 8080: Ray's series and the Serve app's onegen_* ones."""
    for kind, cluster in (("RayCluster", rendered[overlay]["RayCluster"]["spec"]),
                          ("RayService", rendered[overlay]["RayService"]["spec"]["rayClusterConfig"])):
        for template in [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster.get("workerGroupSpecs", []))]:
            annotations = template["metadata"]["annotations"]
            assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", "8080"), kind
