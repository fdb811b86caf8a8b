"""The local stack: a Ray head (and worker nodes) and an MLflow server on 127.0.0.1, state in one directory.

    cfg = StackConfig.load(Path("infra/stack.yaml"))
    up(cfg)          # start what is not running; wait until both answer over HTTP
    status(cfg)      # per-service health and the addresses to export
    down(cfg)        # stop this stack's processes (and only those)

State under `cfg.state_dir` (default `./.onegen/`):

    ray.pid  ray.log          `ray start --head --block` (the pid file names its session)
    ray-worker-<i>.pid/.log   `ray start --address=<head> --block`: worker node i (`workers`), its own raylet
    mlflow.pid  mlflow.log    `mlflow server`
    mlflow.db  mlartifacts/   MLflow's SQLite backend and the artifacts it serves
    storage/                  the default storage root (`storage.root` of the presets)
    ray/                      Ray's session files: its own logs, sockets (see `ray_temp_dir`)

No `import ray` here: Ray is driven through its CLI, so this module is cheap to import and the
test fixtures can use it without Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from components.config import FrozenConfig
from pipelines.local import processes
from pipelines.local.processes import ProcessError

HOST = "127.0.0.1"
Port = Annotated[int, Field(ge=1, le=65535)]


class StackError(RuntimeError):
    """The stack could not be brought up; the message says which service and why."""


PORT_FIELDS = ("ray_port", "dashboard_port", "ray_client_port", "dashboard_agent_port", "metrics_port", "mlflow_port")


class StackConfig(FrozenConfig):
    state_dir: Path = Field(
        Path(".onegen"), description="pid files, logs, MLflow db and artifacts, storage; relative to the working directory"
    )
    ray_port: Port = Field(6379, description="Ray's GCS")
    dashboard_port: Port = Field(8265, description="Ray's dashboard and jobs API: RAY_ADDRESS")
    # Ray binds these two at fixed defaults: a second Ray on the machine (a test's, another
    # stack's) needs others, or its job submissions fail.
    ray_client_port: Port = Field(10001, description="Ray client server")
    dashboard_agent_port: Port = Field(52365, description="Ray dashboard agent")
    metrics_port: Port = Field(8080, description="Prometheus metrics of the node (Ray's and the Serve app's)")
    mlflow_port: Port = Field(5000, description="MLflow server: MLFLOW_TRACKING_URI")
    # Logical CPUs, not cores: with exactly 2, two 1-CPU Train workers leave nothing for Ray Data
    # and the job waits forever (STACK_NOTES). 4 leaves room on a 2-core machine.
    num_cpus: PositiveInt = Field(4, description="logical CPUs Ray schedules")
    # A second node on the same machine is how to see that nothing depends on the driver's node:
    # work placed there runs in another raylet, as on a cluster.
    workers: NonNegativeInt = Field(0, description="Ray worker nodes beside the head on this machine, each with its own raylet; "
                                    "worker i exports metrics on metrics_port + i and runs its agent on dashboard_agent_port + i; "
                                    "with any, Ray listens on the machine's address too, unauthenticated")
    worker_cpus: PositiveInt = Field(2, description="logical CPUs of each worker node")
    ray_timeout_s: PositiveFloat = Field(120, description="seconds to a healthy dashboard (7-19 s idle, more when busy)")
    mlflow_timeout_s: PositiveFloat = Field(90, description="seconds to a healthy MLflow (8-13 s idle: it migrates its db first)")
    stop_timeout_s: PositiveFloat = Field(30, description="seconds from SIGTERM to SIGKILL")

    @model_validator(mode="after")
    def _ports_differ(self) -> StackConfig:
        ports = [getattr(self, name) for name in PORT_FIELDS] + [p for i in range(1, self.workers + 1) for p in self.worker_ports(i)]
        if len(set(ports)) != len(ports):
            raise ValueError(f"the stack's ports must differ, got {ports} (worker nodes' included)")
        return self

    def worker_ports(self, i: int) -> tuple[int, int]:
        """(metrics port, dashboard agent port) of worker node i (1-based): Ray's fixed defaults
        would clash with the head's on the same machine."""
        return self.metrics_port + i, self.dashboard_agent_port + i

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> StackConfig:
        """Defaults < the YAML file at `path` < `overrides` that are not None (command-line flags)."""
        values = (yaml.safe_load(path.read_text()) or {}) if path is not None else {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
        return cls.model_validate(values | {k: v for k, v in overrides.items() if v is not None})

    @property
    def root(self) -> Path:
        return self.state_dir.resolve()

    @property
    def storage(self) -> Path:
        return self.root / "storage"


# --- the two services -------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """A long-running process of the stack and how to tell that it works."""

    name: str
    command: list[str]
    env: dict[str, str]
    ports: list[int]  # what it binds: checked free before it starts
    health_urls: list[str]  # all must answer 2xx
    address: str  # what a user connects to
    timeout_s: float


def ray_service(cfg: StackConfig) -> Service:
    # --block keeps `ray start` alive as the parent of the node's processes: the pid file names a
    # live process, and SIGTERM to it stops the node in Ray's own order (raylet before the GCS).
    # `ray stop` is not used: it stops every Ray process on the machine, not just this stack's.
    command = [_executable("ray"), "start", "--head", "--block", "--disable-usage-stats",
               f"--node-ip-address={HOST}", f"--port={cfg.ray_port}",
               "--include-dashboard=true", f"--dashboard-host={HOST}", f"--dashboard-port={cfg.dashboard_port}",
               f"--dashboard-agent-listen-port={cfg.dashboard_agent_port}", f"--ray-client-server-port={cfg.ray_client_port}",
               f"--metrics-export-port={cfg.metrics_port}", f"--num-cpus={cfg.num_cpus}", f"--temp-dir={ray_temp_dir(cfg.root)}"]  # fmt: skip
    dashboard = f"http://{HOST}:{cfg.dashboard_port}"
    return Service(
        name="ray",
        command=command,
        env=_ray_env(cfg),
        ports=[cfg.ray_port, cfg.dashboard_port, cfg.ray_client_port, cfg.dashboard_agent_port, cfg.metrics_port],
        # /api/version answers once the dashboard is up, /api/jobs/ once it reads jobs; submitting one
        # needs the node's dashboard agent as well, which starts later (seen: 500 "No available agent
        # to submit job" from a head whose dashboard answered, on a machine slow to import).
        health_urls=[f"{dashboard}/api/version", f"{dashboard}/api/jobs/",
                     f"http://{HOST}:{cfg.dashboard_agent_port}/api/local_raylet_healthz"],
        address=dashboard,
        timeout_s=cfg.ray_timeout_s,
    )


def worker_service(cfg: StackConfig, i: int) -> Service:
    """Worker node i: a raylet (and its agents) joining the head's GCS, with its own CPUs."""
    metrics_port, agent_port = cfg.worker_ports(i)
    command = [_executable("ray"), "start", f"--address={HOST}:{cfg.ray_port}", "--block", "--disable-usage-stats",
               f"--node-ip-address={HOST}", f"--num-cpus={cfg.worker_cpus}", f"--dashboard-agent-listen-port={agent_port}",
               f"--metrics-export-port={metrics_port}"]  # fmt: skip
    return Service(
        name=f"ray-worker-{i}",
        command=command,
        env=_ray_env(cfg),
        ports=[metrics_port, agent_port],
        health_urls=[f"http://{HOST}:{agent_port}/api/local_raylet_healthz"],
        address=f"{HOST}:{cfg.ray_port}",  # the cluster it joined
        timeout_s=cfg.ray_timeout_s,
    )


def _ray_env(cfg: StackConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # an exported client address is not for the head itself
    env.update(
        # 0: Ray binds loopback only. A node joining a head refuses to start with 0, and resolves the
        # head's 127.0.0.1 to the machine's address: with worker nodes the head listens there too,
        # unauthenticated (README, "More than one node"), whatever --node-ip-address says.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1" if cfg.workers else "0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="disabled",  # a local cluster on loopback
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # `down` means now; draining is for rolling upgrades
        # `ray job submit -- python ...` runs `python` from the head's PATH: make it this venv's.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        # Jobs inherit the head's environment: they find MLflow and the storage root unasked.
        MLFLOW_TRACKING_URI=f"http://{HOST}:{cfg.mlflow_port}",
    )
    return env


def mlflow_service(cfg: StackConfig) -> Service:
    root = cfg.root
    command = [_executable("mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "mlartifacts"),  # served by the server: clients need no disk
               "--host", HOST, "--port", str(cfg.mlflow_port), "--workers", "1"]  # fmt: skip
    address = f"http://{HOST}:{cfg.mlflow_port}"
    return Service(
        name="mlflow",
        command=command,
        # Job execution doubles start-up time and leaves huey workers behind after SIGTERM.
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        ports=[cfg.mlflow_port],
        health_urls=[f"{address}/health"],
        address=address,
        timeout_s=cfg.mlflow_timeout_s,
    )


def services(cfg: StackConfig, started: bool = False) -> list[Service]:
    """Every service, the head before the workers that join it (with `started`, also the workers an
    earlier `up --workers N` left pid files for)."""
    return [ray_service(cfg), *workers(cfg, started), mlflow_service(cfg)]


def workers(cfg: StackConfig, started: bool = False) -> list[Service]:
    """The worker nodes `cfg` asks for; with `started`, also those with a pid file in the state
    directory, so that `onegen down` and `status` without `--workers` still find them."""
    found = [int(m.group(1)) for p in cfg.root.glob("ray-worker-*.pid") if (m := re.fullmatch(r"ray-worker-(\d+)\.pid", p.name))]
    return [worker_service(cfg, i) for i in range(1, max([cfg.workers, *(found if started else [])]) + 1)]


# Ray's Unix sockets live at <temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/<name>, and a
# socket path may not exceed 107 bytes. The longest suffix (a 7-digit pid, the longest name):
RAY_SOCKET_SUFFIX = len("/session_2026-11-21_13-25-13_554132_4194304/sockets/dash_MetricsHead")
MAX_SOCKET_PATH = 107


def ray_temp_dir(root: Path) -> Path:
    """Where Ray keeps its session files: `<state>/ray` if its socket paths fit, else a short
    directory named after the state dir. Never Ray's default /tmp/ray: the `ray_current_cluster`
    file there would make every bare `ray.init()` on the machine join this stack."""
    inside = root / "ray"
    if len(str(inside)) + RAY_SOCKET_SUFFIX <= MAX_SOCKET_PATH:
        return inside
    return Path("/tmp") / f"onegen-ray-{hashlib.sha1(str(root).encode()).hexdigest()[:10]}"


def _executable(name: str) -> str:
    """`name` from this interpreter's environment (the venv), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` is not installed in this environment (run infra/setup.sh)")
    return found


# --- status -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    pid: int | None  # the live process the pid file names; None if not running
    healthy: bool  # running and answering every health URL
    log: Path

    def describe(self) -> str:
        state = "healthy" if self.healthy else "NOT ANSWERING" if self.pid else "not running"
        pid = f"pid {self.pid}" if self.pid else "-"
        return f"{self.name:<14}{state:<15}{pid:<11}{self.address}  (log {self.log})"


@dataclass(frozen=True)
class StackStatus:
    ray: ServiceStatus
    mlflow: ServiceStatus
    storage: Path
    started: tuple[str, ...] = ()  # the services the `up` that returned this started
    workers: tuple[ServiceStatus, ...] = ()  # the worker nodes'

    @property
    def healthy(self) -> bool:
        return self.ray.healthy and self.mlflow.healthy and all(w.healthy for w in self.workers)

    def env(self) -> dict[str, str]:
        """The variables a user exports to use the stack."""
        return {"RAY_ADDRESS": self.ray.address, "MLFLOW_TRACKING_URI": self.mlflow.address}

    def env_lines(self, export: bool = False) -> list[str]:
        """`NAME=value` lines, or `export NAME=value` lines (shell-quoted) for `eval`."""
        if export:
            return [f"export {k}={shlex.quote(v)}" for k, v in self.env().items()]
        return [f"{k}={v}" for k, v in self.env().items()]

    def report(self) -> str:
        return "\n".join([self.ray.describe(), *(w.describe() for w in self.workers), self.mlflow.describe(), *self.env_lines()])


def service_status(service: Service, root: Path) -> ServiceStatus:
    pid = processes.running_pid(_pid_file(root, service))
    healthy = pid is not None and all(processes.http_ok(url) for url in service.health_urls)
    return ServiceStatus(service.name, service.address, pid, healthy, _log_file(root, service))


def ray_state(dashboard: str, resource: str, **params: str) -> list[dict]:
    """Every entry of one of Ray's state resources ("nodes", "actors", ...: what `ray list <resource>`
    prints), from the dashboard's REST API; finished actors are kept there a while too."""
    import httpx

    answer = httpx.get(f"{dashboard}/api/v0/{resource}", params={"limit": 1000, **params}, timeout=30, trust_env=False)
    return answer.json()["data"]["result"]["result"]


def status(cfg: StackConfig) -> StackStatus:
    root = cfg.root
    nodes = tuple(service_status(w, root) for w in workers(cfg, started=True))
    return StackStatus(service_status(ray_service(cfg), root), service_status(mlflow_service(cfg), root), cfg.storage, workers=nodes)


def _pid_file(root: Path, service: Service) -> Path:
    return root / f"{service.name}.pid"


def _log_file(root: Path, service: Service) -> Path:
    return root / f"{service.name}.log"


# --- up ---------------------------------------------------------------------------------------


def up(cfg: StackConfig) -> StackStatus:
    """Start the services that are not running and wait until each answers. Idempotent: a
    service that is running and healthy is left alone. On failure, stop what this call started
    and raise StackError with the reason and the log tail."""
    root = cfg.root
    for path in (root, cfg.storage):
        path.mkdir(parents=True, exist_ok=True)
    pending = [s for s in services(cfg) if not _already_running(s, root, cfg.stop_timeout_s)]
    _check_ports_free(pending)
    started: list[Service] = []
    nodes = {w.name for w in workers(cfg)}
    try:
        for service in pending:  # launch all, then wait: they start in parallel ...
            if service.name in nodes:  # ... but a worker node needs the head's GCS
                wait_ready(ray_service(cfg), root)
            start_service(service, root)
            started.append(service)
        for service in started:
            wait_ready(service, root)
    except StackError:
        for service in started:
            stop_service(service, root, cfg.stop_timeout_s)
        raise
    return dataclasses.replace(status(cfg), started=tuple(s.name for s in started))


def _already_running(service: Service, root: Path, stop_timeout_s: float) -> bool:
    """True if the service runs and answers. A live process that does not answer gets its start-up
    timeout (it may be starting, or busy); it is not restarted: that would kill running jobs."""
    if processes.running_pid(_pid_file(root, service)) is None:
        stop_service(service, root, stop_timeout_s)  # a stale pid file: clear it and what a dead leader left
        return False
    try:
        wait_ready(service, root)
    except StackError as err:
        raise StackError(f"{err}\nIt is still running; `onegen down` stops it.") from None
    return True


def _check_ports_free(pending: list[Service]) -> None:
    """Fail before starting anything if a port is taken: the message names it, nothing is left running."""
    for service in pending:
        for port in service.ports:
            if processes.port_in_use(port, HOST):
                raise StackError(f"{service.name}: port {port} on {HOST} is already in use by another process; "
                                 f"stop it or choose another port (see `onegen up --help`)")  # fmt: skip


def start_service(service: Service, root: Path) -> int:
    return processes.start_process(service.command, service.env, _pid_file(root, service), _log_file(root, service))


def wait_ready(service: Service, root: Path) -> None:
    """Wait until `service` answers every health URL, or raise StackError with its log tail."""
    pid_file, log = _pid_file(root, service), _log_file(root, service)
    start = time.monotonic()
    try:
        processes.wait_for_http(service.health_urls, service.timeout_s, lambda: processes.running_pid(pid_file) is not None)
    except ProcessError as err:
        raise StackError(
            f"{service.name} did not come up: {err} (after {time.monotonic() - start:.0f}s).\n"
            f"Last lines of {log}:\n{processes.log_tail(log)}"
        ) from None


# --- down -------------------------------------------------------------------------------------


def stop_service(service: Service, root: Path, timeout_s: float) -> int | None:
    """Stop the service's process and its session. Returns its pid, or None if it was not running."""
    return processes.stop_process(_pid_file(root, service), timeout_s)


def down(cfg: StackConfig) -> dict[str, int]:
    """Stop this stack's services (and nothing else on the machine). Returns {name: pid} of those
    that were running; stale pid files are removed. Safe to call when nothing runs."""
    stopped = {s.name: stop_service(s, cfg.root, cfg.stop_timeout_s) for s in reversed(services(cfg, started=True))}  # workers before their head
    return {name: pid for name, pid in stopped.items() if pid is not None}
