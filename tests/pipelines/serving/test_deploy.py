"""`onegen serve` sends infra/serve.yaml, with its flags applied, to the dashboard's Serve REST API,
which validates it as a `ServeDeploySchema`: the config it builds must pass that validation."""

import subprocess
from pathlib import Path

import yaml
from ray.serve import schema

from pipelines.checkout import REPO
from pipelines.cli.serve import CONFIG
from pipelines.serving.deploy import serve_config


def default() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_the_default_config_is_a_valid_serve_deploy_config_that_runs_this_checkout():
    config = serve_config(default())
    schema.ServeDeploySchema.model_validate(config)  # a local path here is refused ("Expected URI")
    (app,) = config["applications"]
    assert app["runtime_env"]["working_dir"] == f"local://{REPO}" and Path(REPO, "pipelines").is_dir()
    assert app["args"]["model_uri"] == "models:/onegen@champion" and app["import_path"] == "pipelines.serving.app:build_app"
    assert CONFIG.is_file()


def test_flags_replace_the_model_source_and_port(tmp_path):
    config = serve_config(default(), model_dir=str(tmp_path / "m"), index_dir=str(tmp_path / "i"), port=8123)
    schema.ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert "model_uri" not in app["args"] and app["args"]["model_dir"] == str(tmp_path / "m")
    assert app["args"]["index_dir"] == str(tmp_path / "i") and config["http_options"]["port"] == 8123


def test_the_code_package_is_this_checkout_under_one_top_level_directory_and_uploaded_once(tmp_path):
    import zipfile

    from pipelines.serving.deploy import package_code

    uri = package_code(str(tmp_path))
    names = zipfile.ZipFile(uri).namelist()
    assert {n.split("/")[0] for n in names} == {"onegen"}  # Ray runs the one top-level directory's contents
    assert {"onegen/pipelines/serving/app.py", "onegen/pyproject.toml", "onegen/components/data/corpus.py"} <= set(names)
    assert not any(n.split("/")[1] in (".git", ".venv", ".onegen", "data") or "__pycache__" in n for n in names)
    assert not any(n.startswith("onegen/bench/results/") for n in names)
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    code = {f"onegen/{f}" for f in tracked if f.split("/")[0] not in ("data", ".onegen") and not f.startswith("bench/results/")}
    assert code <= set(names)  # everything the checkout's code is, nothing left behind (on this machine the
    # editable install would hide a missing module from a replica: the package must be whole on its own)
    written = Path(uri).stat().st_mtime_ns
    assert package_code(str(tmp_path)) == uri and Path(uri).stat().st_mtime_ns == written  # same content: same name, not rewritten
    config = serve_config(default(), code_uri="s3://bucket/code/onegen-0123.zip")
    schema.ServeDeploySchema.model_validate(config)
    assert config["applications"][0]["runtime_env"]["working_dir"] == "s3://bucket/code/onegen-0123.zip"
