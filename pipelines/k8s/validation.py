"""Check the Kubernetes manifests in k8s/ before any cluster sees them, with no API server.

Every YAML file and every kustomization rendered (`kubectl kustomize`, or a `kustomize` binary)
is checked:

- KubeRay resources (RayCluster, RayJob, RayService) against the `openAPIV3Schema` of their v1
  CRDs, read from a schema directory (`../shared/kuberay-crds`, or one exported from a cluster),
  made strict: the API server silently prunes fields it does not know, so a misspelt field would
  vanish without an error. `strict()` adds `additionalProperties: false` to every object schema
  that lists `properties` and is not `x-kubernetes-preserve-unknown-fields`.
- the core kinds the stack uses (Namespace, ConfigMap, Secret, Service, PersistentVolumeClaim,
  Deployment) and kustomize's Kustomization, with small schemas written here; the pod template,
  Service and claim parts are borrowed from the KubeRay CRDs, which embed the core/v1 ones.
- what the schemas cannot say: a RayJob's submissionMode, requests <= limits in every container,
  the RayJob entrypoint's `ray_jobs.<stage>` module exists, the Serve config's `import_path`
  resolves in this repository (by parsing the module, never importing it), a committed Secret
  holds only <placeholders>, and a kustomization's files exist, with its patches under patches/.

A file under a `patches/` folder is a JSON6902 patch (a list of operations); any other YAML
document must be a complete resource, so a fragment is an error, not a silent partial apply.

    python -m pipelines.k8s.validation [--schemas DIR] [K8S_DIR]
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml
from kubernetes.utils import parse_quantity

from pipelines.checkout import REPO

DEFAULT_SCHEMAS = REPO.parent / "shared" / "kuberay-crds"
KUBERAY_KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
JSON6902_OPS = {"add", "remove", "replace", "move", "copy", "test"}


@dataclass(frozen=True)
class Problem:
    where: str  # file (or rendered overlay), document and field
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


# ---------------------------------------------------------------------------------------------
# Schemas


def strict(schema: dict) -> dict:
    """A copy of `schema` in which no object accepts a field it does not list."""
    schema = copy.deepcopy(schema)
    for node in _subschemas(schema):
        closed = "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields")
        if closed and "additionalProperties" not in node:
            node["additionalProperties"] = False
    return schema


def _subschemas(node: dict) -> Iterator[dict]:
    """`node` and every schema inside it: through properties, items, additionalProperties and the
    combinators (a field that happens to be called "properties" is not mistaken for a keyword)."""
    yield node
    children = list(node.get("properties", {}).values()) + node.get("anyOf", []) + node.get("allOf", []) + node.get("oneOf", [])
    children += [node[key] for key in ("items", "additionalProperties", "not") if isinstance(node.get(key), dict)]
    for child in children:
        yield from _subschemas(child)


STRING, BOOLEAN, INTEGER = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}
STRING_MAP = {"type": "object", "additionalProperties": STRING}
DNS_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
METADATA = {  # of a top-level resource; the CRD schemas leave it a bare object
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": DNS_NAME, "maxLength": 253},
        "namespace": {"type": "string", "pattern": DNS_NAME, "maxLength": 63},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
}


def _resource(api_version: str, kind: str, fields: dict, required: tuple[str, ...] = ()) -> dict:
    """The schema of a complete resource: apiVersion, kind, metadata with a name, and `fields`."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", *required],
        "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": METADATA, **fields},
    }


def load_schemas(schema_dir: Path = DEFAULT_SCHEMAS) -> dict[str, dict]:
    """kind → strict schema, for the KubeRay kinds (from `schema_dir`) and the core kinds."""
    kuberay = {}
    for kind, plural in KUBERAY_KINDS.items():
        path = Path(schema_dir) / f"{plural}.v1.schema.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no {kind} schema (export the CRD's v1 openAPIV3Schema there)")
        crd = json.loads(path.read_text())
        fields = {k: v for k, v in crd["properties"].items() if k not in ("apiVersion", "kind", "metadata")}
        kuberay[kind] = _resource("ray.io/v1", kind, fields, required=("spec",))  # spec: no fragments
    return {kind: strict(schema) for kind, schema in {**kuberay, **_core_schemas(kuberay)}.items()}


def _core_schemas(kuberay: dict[str, dict]) -> dict[str, dict]:
    """The core kinds. Their core/v1 parts come from the KubeRay CRDs, which embed them: the pod
    template (a head group's), the Service (a RayService's serveService), the claim spec (an
    ephemeral volume's)."""
    cluster = kuberay["RayCluster"]["properties"]["spec"]["properties"]
    pod_template = cluster["headGroupSpec"]["properties"]["template"]
    volume = pod_template["properties"]["spec"]["properties"]["volumes"]["items"]["properties"]
    claim_spec = volume["ephemeral"]["properties"]["volumeClaimTemplate"]["properties"]["spec"]
    service_spec = kuberay["RayService"]["properties"]["spec"]["properties"]["serveService"]["properties"]["spec"]
    return {
        "Namespace": _resource("v1", "Namespace", {"spec": {"type": "object", "properties": {"finalizers": {"type": "array"}}}}),
        "ConfigMap": _resource("v1", "ConfigMap", {"data": STRING_MAP, "binaryData": STRING_MAP, "immutable": BOOLEAN}),
        "Secret": _resource("v1", "Secret", {"type": STRING, "data": STRING_MAP, "stringData": STRING_MAP, "immutable": BOOLEAN}),
        "Service": _resource("v1", "Service", {"spec": {**service_spec, "required": ["ports"]}}, required=("spec",)),
        "PersistentVolumeClaim": _resource("v1", "PersistentVolumeClaim",
                                           {"spec": {**claim_spec, "required": ["accessModes", "resources"]}},
                                           required=("spec",)),  # fmt: skip
        "Deployment": _resource("apps/v1", "Deployment", {"spec": _deployment_spec(pod_template)}, required=("spec",)),
        "Kustomization": KUSTOMIZATION,
    }


def _deployment_spec(pod_template: dict) -> dict:
    return {
        "type": "object",
        "required": ["selector", "template"],
        "properties": {
            "replicas": {"type": "integer", "minimum": 0},
            "selector": {"type": "object", "properties": {"matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}}},
            "template": pod_template,
            "strategy": {"type": "object", "properties": {"type": {"enum": ["Recreate", "RollingUpdate"]},
                                                          "rollingUpdate": {"type": "object"}}},  # fmt: skip
            "minReadySeconds": INTEGER,
            "revisionHistoryLimit": INTEGER,
            "progressDeadlineSeconds": INTEGER,
        },
    }


_PATHS = {"type": "array", "items": STRING}
KUSTOMIZATION = {  # the fields this project uses, and the common ones next to them
    "type": "object",
    "required": ["apiVersion", "kind"],
    "properties": {
        "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
        "kind": {"const": "Kustomization"},
        "resources": _PATHS,
        "components": _PATHS,
        "namespace": {"type": "string", "pattern": DNS_NAME},
        "namePrefix": STRING,
        "nameSuffix": STRING,
        "commonLabels": STRING_MAP,
        "commonAnnotations": STRING_MAP,
        "labels": {"type": "array", "items": {"type": "object", "properties": {
            "pairs": STRING_MAP, "includeSelectors": BOOLEAN, "includeTemplates": BOOLEAN}}},
        "images": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": STRING, "newName": STRING, "newTag": STRING, "digest": STRING}}},
        # This project's rule: a patch is a file (under patches/) with an explicit target.
        "patches": {"type": "array", "items": {"type": "object", "required": ["path", "target"], "properties": {
            "path": STRING,
            "target": {"type": "object", "properties": {k: STRING for k in (
                "group", "version", "kind", "name", "namespace", "labelSelector", "annotationSelector")}},
            "options": {"type": "object"}}}},
    },
}  # fmt: skip

JSON6902 = strict({  # a patch file: operations on paths, and nothing else in an operation
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["op", "path"],
        "properties": {"op": {"enum": sorted(JSON6902_OPS)}, "path": {"type": "string", "pattern": "^/"},
                       "value": {}, "from": {"type": "string", "pattern": "^/"}},  # fmt: skip
    },
})


# ---------------------------------------------------------------------------------------------
# One resource


def check_resource(doc, schemas: dict[str, dict], where: str, repo: Path | None = REPO) -> list[Problem]:
    """Every problem with one document that should be a complete resource; with `repo` None, not
    what it names in a repository (the stage module, the Serve import path)."""
    if not isinstance(doc, dict) or "kind" not in doc:
        return [Problem(where, "not a Kubernetes resource (no kind): a fragment outside patches/?")]
    kind = doc["kind"]
    if kind not in schemas:
        return [Problem(where, f"unknown kind {kind!r}: the validator knows {', '.join(sorted(schemas))}")]
    name = doc["metadata"].get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
    where = f"{where} {kind}/{name}"
    problems = schema_problems(doc, schemas[kind], where)
    if problems:  # the checks below rely on the shape the schema guarantees
        return problems
    messages = [m for check in (_submission_mode, _resources, _secret_values) for m in check(doc)]
    if repo is not None:
        messages += [m for check in (_entrypoint, _serve_config) for m in check(doc, repo)]
    return [Problem(where, message) for message in messages]


def schema_problems(doc, schema: dict, where: str) -> list[Problem]:
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [Problem(f"{where} at /{'/'.join(map(str, e.absolute_path))}", e.message) for e in errors]


def _submission_mode(doc: dict) -> list[str]:
    mode = doc.get("spec", {}).get("submissionMode", "K8sJobMode")  # the CRD's default
    if doc["kind"] == "RayJob" and mode not in SUBMISSION_MODES:
        return [f"spec.submissionMode {mode!r} is not one of {', '.join(sorted(SUBMISSION_MODES))}"]
    return []


def _resources(doc: dict) -> list[str]:
    """Requests above limits: the API server rejects the pod only when the operator creates it."""
    problems = []
    for path, container in containers(doc):
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        for name in sorted(set(requests) & set(limits)):
            try:
                request, limit = parse_quantity(requests[name]), parse_quantity(limits[name])
            except ValueError as err:
                problems.append(f"{path}: {err}")
                continue
            if request > limit:
                problems.append(f"{path}: requests.{name} {requests[name]} > limits.{name} {limits[name]}")
            elif "/" in name and request != limit:  # nvidia.com/gpu and the like cannot be overcommitted
                problems.append(f"{path}: requests.{name} must equal limits.{name} (an extended resource)")
    return problems


def containers(node, path: str = "") -> Iterator[tuple[str, dict]]:
    """(path, container) for every container of every pod template in a resource."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for i, c in enumerate(value):
                    if isinstance(c, dict):
                        yield f"{path}.{key}[{i}]({c.get('name', '?')})", c
            else:
                yield from containers(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from containers(value, f"{path}[{i}]")


def _secret_values(doc: dict) -> list[str]:
    """A committed Secret is a template: every value a <placeholder>, never a real credential."""
    if doc["kind"] != "Secret":
        return []
    return [f"{key}: a committed Secret holds only <placeholders>, not a value"
            for key, value in secret_values(doc).items() if not is_placeholder(value)]  # fmt: skip


def secret_values(doc: dict) -> dict:
    return {**(doc.get("data") or {}), **(doc.get("stringData") or {})}


def is_placeholder(value) -> bool:
    return re.fullmatch(r"<[^<>]+>", str(value)) is not None


def _entrypoint(doc: dict, repo: Path) -> list[str]:
    """A RayJob runs `python -m ray_jobs.<stage> …`, and ray_jobs/<stage>.py must exist."""
    if doc.get("kind") != "RayJob":
        return []
    entrypoint = doc["spec"].get("entrypoint", "")
    try:
        words = shlex.split(entrypoint)
    except ValueError as err:
        return [f"spec.entrypoint {entrypoint!r} is not a command line: {err}"]
    module = words[words.index("-m") + 1] if "-m" in words[:-1] else ""
    if not module.startswith("ray_jobs."):
        return [f"spec.entrypoint {entrypoint!r} does not run `python -m ray_jobs.<stage>`"]
    if _module_file(module, repo) is None:
        return [f"spec.entrypoint runs {module}, but {module.replace('.', '/')}.py does not exist in {repo}"]
    return []


def _serve_config(doc: dict, repo: Path) -> list[str]:
    """Every application of a RayService's serveConfigV2 has an import_path that resolves here."""
    if doc.get("kind") != "RayService":
        return []
    try:
        config = yaml.safe_load(doc["spec"].get("serveConfigV2") or "")
    except yaml.YAMLError as err:
        return [f"spec.serveConfigV2 is not YAML: {err}"]
    applications = config.get("applications") if isinstance(config, dict) else None
    if not isinstance(applications, list) or not applications:
        return ["spec.serveConfigV2 has no list of applications"]
    problems = []
    for app in applications:
        app = app if isinstance(app, dict) else {}
        message = resolve_import_path(str(app.get("import_path", "")), repo)
        if message is not None:
            problems.append(f"spec.serveConfigV2 application {app.get('name')!r}: {message}")
    return problems


def resolve_import_path(import_path: str, repo: Path = REPO) -> str | None:
    """None if `module:attribute` (or `module.attribute`) is defined in this repository, else why not.
    The module is parsed, not imported: importing the Serve app would pull in Ray, torch and the model."""
    module, _, attribute = import_path.partition(":") if ":" in import_path else import_path.rpartition(".")
    if not module or not attribute:
        return f"import_path {import_path!r} is not module:attribute"
    path = _module_file(module, repo)
    if path is None:
        return f"import_path {import_path!r}: module {module} is not in {repo}"
    if attribute not in _top_level_names(ast.parse(path.read_text(), filename=str(path))):
        return f"import_path {import_path!r}: {path.relative_to(repo)} defines no {attribute}"
    return None


def _module_file(module: str, repo: Path) -> Path | None:
    base = Path(repo, *module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


# ---------------------------------------------------------------------------------------------
# Files, kustomizations, the whole tree


def check_file(path: Path, schemas: dict[str, dict], root: Path, repo: Path | None = REPO) -> list[Problem]:
    """A kustomization, a JSON6902 patch (under patches/), or a file of complete resources."""
    where = str(path.relative_to(root))
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as err:
        return [Problem(where, f"not YAML: {err}")]
    if path.name == "kustomization.yaml":
        doc = docs[0] if docs else {}
        return schema_problems(doc, schemas["Kustomization"], where) or _kustomization_files(doc, path.parent, where)
    if path.parent.name == "patches":
        if len(docs) == 1 and isinstance(docs[0], list):
            return schema_problems(docs[0], JSON6902, where)
        return [Problem(where, "a patch is one JSON6902 list of operations (op, path, value)")]
    return [p for i, doc in enumerate(docs) for p in check_resource(doc, schemas, f"{where}#{i}", repo)]


def _kustomization_files(doc: dict, folder: Path, where: str) -> list[Problem]:
    problems = [Problem(where, f"resource {r!r} does not exist")
                for r in doc.get("resources") or [] if not (folder / r).exists()]  # fmt: skip
    for patch in doc.get("patches") or []:
        path = Path(str(patch.get("path", "")))
        if path.parts[:1] != ("patches",):
            problems.append(Problem(where, f"patch {str(path)!r} is not under patches/"))
        elif not (folder / path).is_file():
            problems.append(Problem(where, f"patch {str(path)!r} does not exist"))
    return problems


def render(folder: Path) -> list[dict]:
    """The resources a kustomization folder builds, as `kubectl apply -k` would send them."""
    if kubectl := shutil.which("kubectl"):
        command = [kubectl, "kustomize", str(folder)]
    elif kustomize := shutil.which("kustomize"):
        command = [kustomize, "build", str(folder)]
    else:
        raise RenderError("rendering a kustomization needs `kubectl` or `kustomize` on PATH")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RenderError(f"{' '.join(command)}: {result.stderr.strip()}")
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


class RenderError(RuntimeError):
    pass


def can_render() -> bool:
    return bool(shutil.which("kubectl") or shutil.which("kustomize"))


def check_rendered(folder: Path, schemas: dict[str, dict], root: Path, repo: Path | None = REPO) -> list[Problem]:
    where = f"{folder.relative_to(root)} (rendered)"
    try:
        docs = render(folder)
    except RenderError as err:
        return [Problem(where, str(err))]
    return [p for i, doc in enumerate(docs) for p in check_resource(doc, schemas, f"{where}#{i}", repo)]


def check_tree(k8s_dir: Path, schemas: dict[str, dict], repo: Path | None = REPO, rendered: bool = True) -> list[Problem]:
    """Every YAML file under `k8s_dir`, and (with `rendered`) every kustomization folder's output."""
    files = sorted(p for p in k8s_dir.rglob("*") if p.suffix in (".yaml", ".yml"))
    problems = [p for f in files for p in check_file(f, schemas, k8s_dir, repo)]
    if rendered:
        folders = [f.parent for f in files if f.name == "kustomization.yaml"]
        problems += [p for folder in folders for p in check_rendered(folder, schemas, k8s_dir, repo)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.k8s.validation", description=__doc__.split("\n\n")[0])
    parser.add_argument("k8s_dir", nargs="?", type=Path, default=REPO / "k8s")
    parser.add_argument("--schemas", type=Path, default=DEFAULT_SCHEMAS, help="the KubeRay CRD schemas (*.v1.schema.json)")
    parser.add_argument("--no-render", action="store_true", help="check the files only, not the rendered kustomizations")
    args = parser.parse_args(argv)
    problems = check_tree(args.k8s_dir.resolve(), load_schemas(args.schemas), rendered=not args.no_render)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) in {args.k8s_dir}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
