"""The local stack: config, pid files, env lines, process helpers, a taken port, and one
end-to-end `up` → job → MLflow → `down` on free ports in a tmp state dir."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from pydantic import ValidationError

from pipelines.checkout import REPO
from pipelines.cli.main import main
from pipelines.local import processes, stack
from pipelines.local.stack import (
    MAX_SOCKET_PATH,
    RAY_SOCKET_SUFFIX,
    Service,
    ServiceStatus,
    StackConfig,
    StackError,
    StackStatus,
    down,
    ray_temp_dir,
    status,
    up,
    wait_ready,
)
from tests.fixtures.servers import stack_on_free_ports


@pytest.fixture(autouse=True)
def keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main rewrites sys.argv


def _free_config(tmp_path: Path) -> tuple[StackConfig, Path]:
    """A stack on free ports in a tmp state dir, and the YAML file that says so (for the CLI)."""
    cfg = stack_on_free_ports(tmp_path / "state")
    config_file = tmp_path / "stack.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert StackConfig.load(config_file) == cfg
    return cfg, config_file


# --- config -----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_config_yaml_then_overrides(tmp_path):
    path = tmp_path / "stack.yaml"
    path.write_text("mlflow_port: 5555\nnum_cpus: 3\n")
    cfg = StackConfig.load(path, mlflow_port=6000, num_cpus=None)  # None: the flag was not given
    assert (cfg.mlflow_port, cfg.num_cpus, cfg.ray_port) == (6000, 3, 6379)

    path.write_text("mlflow_prot: 5555\n")  # a typo is an error, not a silent default
    with pytest.raises(ValidationError, match="mlflow_prot"):
        StackConfig.load(path)
    with pytest.raises(ValidationError, match="ports must differ"):
        StackConfig(mlflow_port=8265)
    with pytest.raises(ValidationError, match="worker nodes' included"):  # worker 1's metrics port: 8080 + 1
        StackConfig(workers=1, mlflow_port=8081)


@pytest.mark.timeout(30)
def test_infra_stack_yaml_documents_the_defaults():
    assert StackConfig.load(REPO / "infra" / "stack.yaml") == StackConfig()


@pytest.mark.timeout(60)
def test_cli_flags_override_the_config_file(tmp_path, capsys):
    path = tmp_path / "stack.yaml"
    path.write_text("mlflow_port: 5555\ndashboard_port: 8266\n")
    code = main(["status", "--config", str(path), "--state_dir", str(tmp_path / "s"), "--mlflow_port", "6001"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1  # nothing runs there
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:6001" in out
    assert "RAY_ADDRESS=http://127.0.0.1:8266" in out


# --- env lines --------------------------------------------------------------------------------


def _stack_status(storage: Path) -> StackStatus:
    ray = ServiceStatus("ray", "http://127.0.0.1:8265", 11, True, Path("ray.log"))
    mlflow = ServiceStatus("mlflow", "http://127.0.0.1:5000", 12, True, Path("mlflow.log"))
    return StackStatus(ray, mlflow, storage)


@pytest.mark.timeout(30)
def test_env_lines_and_exports_survive_eval(tmp_path):
    storage = tmp_path / "with space" / "storage"
    st = _stack_status(storage)
    assert st.env_lines() == [
        "RAY_ADDRESS=http://127.0.0.1:8265",
        "MLFLOW_TRACKING_URI=http://127.0.0.1:5000",
    ]
    exports = "\n".join(st.env_lines(export=True))
    assert all(line.startswith("export ") for line in exports.splitlines())
    shell = 'eval "$1"; printf "%s\\n" "$RAY_ADDRESS" "$MLFLOW_TRACKING_URI"'
    out = subprocess.run(["bash", "-c", shell, "bash", exports], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["http://127.0.0.1:8265", "http://127.0.0.1:5000"]


# --- pid files --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_stale_pid_file_of_a_dead_process_is_cleaned_up(tmp_path):
    cfg = StackConfig(state_dir=tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "mlflow.pid").write_text(f"{dead.pid}\n")
    assert status(cfg).mlflow.pid is None
    assert down(cfg) == {}  # nothing was running
    assert not (tmp_path / "mlflow.pid").exists()


@pytest.mark.timeout(30)
def test_pid_file_older_than_its_process_names_a_reused_pid(tmp_path):
    """A pid file written before its pid's process was created names an earlier process: this
    test's own process stands in for the stranger that reused the pid. `down` must not touch it."""
    pid_file = tmp_path / "ray.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    assert processes.running_pid(pid_file) == os.getpid()  # written after we started: ours
    os.utime(pid_file, (0, 0))  # written in 1970: before this process existed
    assert processes.running_pid(pid_file) is None
    assert down(StackConfig(state_dir=tmp_path)) == {}
    assert not pid_file.exists()


# --- process helpers --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stop_process_ends_the_leader_and_its_session(tmp_path):
    (port,) = processes.free_ports(1)
    # The leader leaves a child behind that ignores its parent's death: the session sweep must end it.
    command = ["bash", "-c", f"sleep 300 & exec {sys.executable} -m http.server {port} --bind 127.0.0.1"]
    pid_file, log = tmp_path / "web.pid", tmp_path / "web.log"
    pid = processes.start_process(command, dict(os.environ), pid_file, log)
    processes.wait_for_http([f"http://127.0.0.1:{port}/"], 30, lambda: processes.running_pid(pid_file) is not None)
    sleeper = next(p for p in psutil.process_iter(["name"]) if p.info["name"] == "sleep" and os.getsid(p.pid) == pid)

    assert processes.stop_process(pid_file, timeout_s=10) == pid
    assert processes.running_pid(pid_file) is None and not pid_file.exists()
    assert not processes.port_in_use(port)
    assert not sleeper.is_running() or sleeper.status() == psutil.STATUS_ZOMBIE
    assert processes.stop_process(pid_file, timeout_s=10) is None  # stopping twice is fine


def _web_service(name: str, port: int) -> Service:
    """A stand-in for a stack service: Python's HTTP server, healthy at `/`."""
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    url = f"http://127.0.0.1:{port}"
    return Service(name, command, dict(os.environ), [port], [f"{url}/"], url, timeout_s=30)


def _doomed_service(port: int) -> Service:
    """A service that prints why and exits before it ever answers."""
    command = [sys.executable, "-c", "print('config file is broken'); raise SystemExit(3)"]
    url = f"http://127.0.0.1:{port}"
    return Service("doomed", command, dict(os.environ), [port], [f"{url}/health"], url, timeout_s=30)


@pytest.mark.timeout(60)
def test_children_of_a_leader_killed_outright_are_stopped_too(tmp_path):
    """SIGKILL to `mlflow server` leaves its uvicorn holding the port: the next `down` or `up` must end it."""
    pid_file = tmp_path / "orphaning.pid"
    pid = processes.start_process(["bash", "-c", "sleep 300 & wait"], dict(os.environ), pid_file, tmp_path / "o.log")
    deadline = time.monotonic() + 20
    while not (orphans := [p for p in psutil.Process(pid).children() if p.name() == "sleep"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(10)  # reaped: the pid is free, its session lives on in the sleeper
    assert processes.running_pid(pid_file) is None and orphans[0].is_running()

    assert processes.stop_process(pid_file, timeout_s=10) == pid
    assert not orphans[0].is_running() or orphans[0].status() == psutil.STATUS_ZOMBIE
    assert not pid_file.exists()


@pytest.mark.timeout(60)
def test_a_service_that_dies_is_reported_with_its_log_tail(tmp_path):
    service = _doomed_service(processes.free_ports(1)[0])
    processes.start_process(service.command, service.env, tmp_path / "doomed.pid", tmp_path / "doomed.log")
    start = time.monotonic()
    with pytest.raises(StackError, match=r"(?s)doomed did not come up: exited.*config file is broken"):
        wait_ready(service, tmp_path)
    assert time.monotonic() - start < 20  # it noticed the death, it did not sit out the timeout


@pytest.mark.timeout(30)
def test_ray_temp_dir_stays_within_the_socket_path_limit(tmp_path):
    short = Path("/srv/p/.onegen")
    assert ray_temp_dir(short) == short / "ray"
    long = tmp_path / ("x" * 60) / ".onegen"
    fallback = ray_temp_dir(long)
    assert fallback.parent == Path("/tmp") and fallback == ray_temp_dir(long)  # one per state dir
    assert ray_temp_dir(tmp_path / ("y" * 60)) != fallback
    assert len(str(fallback)) + RAY_SOCKET_SUFFIX <= MAX_SOCKET_PATH


# --- up: a taken port -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_up_fails_on_a_taken_port_and_leaves_nothing_running(tmp_path, capsys):
    cfg, config_file = _free_config(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cfg.mlflow_port))
        squatter.listen()
        code = main(["up", "--config", str(config_file)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"port {cfg.mlflow_port}" in err and "mlflow" in err
    assert not (cfg.root / "ray.pid").exists() and not (cfg.root / "mlflow.pid").exists()
    assert not processes.port_in_use(cfg.dashboard_port) and not processes.port_in_use(cfg.ray_port)


@pytest.mark.timeout(60)
def test_up_stops_what_it_started_when_another_service_fails(tmp_path, monkeypatch):
    web_port, doomed_port = processes.free_ports(2)
    monkeypatch.setattr(stack, "services", lambda cfg: [_web_service("web", web_port), _doomed_service(doomed_port)])
    with pytest.raises(StackError, match="doomed did not come up"):
        up(StackConfig(state_dir=tmp_path))
    assert not (tmp_path / "web.pid").exists()
    assert not processes.port_in_use(web_port)  # the healthy one was stopped, not left running


# --- end to end -------------------------------------------------------------------------------


def _run_job(address: str, entrypoint: str, timeout_s: float) -> tuple[str, str]:
    """Submit a job to the dashboard at `address`; wait for it to end; its status and logs."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    job = client.submit_job(entrypoint=entrypoint)
    deadline = time.monotonic() + timeout_s
    while (state := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job {job} still {state} after {timeout_s}s"
        time.sleep(1)
    return str(state), client.get_job_logs(job)


@pytest.mark.timeout(240)
def test_up_job_mlflow_down_end_to_end(tmp_path, capsys):
    cfg, config_file = _free_config(tmp_path)
    argv = ["--config", str(config_file)]
    ray_url, mlflow_url = f"http://127.0.0.1:{cfg.dashboard_port}", f"http://127.0.0.1:{cfg.mlflow_port}"
    try:
        assert main(["up", *argv]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith("started ray, mlflow in ")
        assert out[-2:] == [f"RAY_ADDRESS={ray_url}", f"MLFLOW_TRACKING_URI={mlflow_url}"]
        first = status(cfg)
        assert first.healthy and first.ray.pid and first.mlflow.pid and cfg.storage.is_dir()

        assert main(["up", *argv]) == 0  # idempotent: health-checked, nothing started
        assert "the stack is already up" in capsys.readouterr().out
        again = status(cfg)
        assert (again.ray.pid, again.mlflow.pid) == (first.ray.pid, first.mlflow.pid)

        assert main(["status", *argv, "--env"]) == 0
        assert capsys.readouterr().out.splitlines() == [
            f"export RAY_ADDRESS={ray_url}",
            f"export MLFLOW_TRACKING_URI={mlflow_url}",
        ]

        # A job runs this venv's python and inherits the stack's addresses from the head.
        code = "import os, sys; print(42, sys.executable, os.environ['MLFLOW_TRACKING_URI'])"
        state, logs = _run_job(ray_url, f'python -c "{code}"', timeout_s=120)
        assert state == "SUCCEEDED", logs
        assert f"42 {Path(sys.executable).parent / 'python'} {mlflow_url}" in logs

        import mlflow

        assert processes.http_ok(f"{mlflow_url}/health")
        assert "Default" in [e.name for e in mlflow.MlflowClient(mlflow_url).search_experiments()]
    finally:
        assert main(["down", *argv]) == 0
        shutil.rmtree(ray_temp_dir(cfg.root), ignore_errors=True)  # Ray's session files, in /tmp for a long tmp_path
    assert "stopped ray" in capsys.readouterr().out

    after = status(cfg)
    assert after.ray.pid is None and after.mlflow.pid is None and not after.healthy
    assert main(["status", *argv]) == 1
    assert not processes.http_ok(f"{ray_url}/api/version") and not processes.http_ok(f"{mlflow_url}/health")
    for pid in (first.ray.pid, first.mlflow.pid):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert main(["down", *argv]) == 0  # twice is fine
    assert "not running" in capsys.readouterr().out
