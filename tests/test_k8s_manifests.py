"""deploy/k8s: every object valid for Kubernetes (strict: an unknown field fails) and
for KEDA's schema, and consistent with the app: the Procfile's commands, the
settings' variables, the soft-shutdown timeout, the queues.

Each check returns the problems it finds, so that the tests at the end can show it
catches the breakage it is there for, on a broken copy of the manifests.
"""

from __future__ import annotations

import copy
import math
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kombu.transport.redis import Channel

import kikipounamu.settings as production
from bench.autoscale_sim import effective_setting
from bench.autoscale_sim import read_manifests
from bench.autoscale_sim import settings_defaults

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "k8s"
KEDA_SCHEMAS = Path(__file__).resolve().parent / "k8s_schemas" / "keda-v2.20.2.yaml"
# The oldest Kubernetes that KEDA 2.20 supports, and the newest kubernetes-validate
# knows.
KUBERNETES_VERSIONS = ("1.32", kubernetes_validate.latest_version())

# Variables the manifests may set that kikipounamu/settings.py does not read, and who
# reads them instead.
OTHER_READERS = {
    "REMAP_SIGTERM": "billiard, Celery's pool: SIGTERM as the cold shutdown",
}
# Procfile variables that a pod sets otherwise, and how: a pod listens on all its
# addresses, on the port its container declares.
LISTEN_ADDRESSES = {"WEB_HOST", "FLOWER_ADDRESS"}
PORTS = {"WEB_PORT", "FLOWER_PORT"}
SECRET_NAMES = re.compile(r"SECRET|PASSWORD|TOKEN|KEY_ID|BASIC_AUTH|DATABASE_URL")
REFERENCE = re.compile(r"\$\((\w+)\)")


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return read_manifests(MANIFESTS)


# --- Reading -------------------------------------------------------------------------


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    found = [d for d in objects(docs, kind) if d["metadata"]["name"] == name]
    return found[0] if len(found) == 1 else None


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "Job")]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]


def config_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    config = named(docs, "ConfigMap", name)
    return {} if config is None else dict(config.get("data", {}))


def secret_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    secret = named(docs, "Secret", name)
    if secret is None:
        return {}
    return {**secret.get("data", {}), **secret.get("stringData", {})}


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> list[str]:
    """The names a container's environment has, in the order Kubernetes defines
    them: envFrom first, then env."""
    names: list[str] = []
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names += config_data(docs, source["configMapRef"]["name"])
        if "secretRef" in source:
            names += secret_data(docs, source["secretRef"]["name"])
    return names + [e["name"] for e in container.get("env", [])]


def env_value(docs: list[dict[str, Any]], container: dict[str, Any], name: str) -> Any:
    for entry in container.get("env", []):
        if entry["name"] == name:
            return entry.get("value")
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = config_data(docs, source["configMapRef"]["name"])
            if name in data:
                return data[name]
    return None


def is_celery_worker(container: dict[str, Any]) -> bool:
    return container.get("command", [])[:4] == ["celery", "-A", "kikipounamu", "worker"]


def scaled_object(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = objects(docs, "ScaledObject")
    return found


def redis_trigger(docs: list[dict[str, Any]], list_name: str) -> dict[str, Any] | None:
    for trigger in scaled_object(docs)["spec"]["triggers"]:
        if trigger["type"] == "redis" and trigger["metadata"]["listName"] == list_name:
            return trigger
    return None


def asr_queue() -> str:
    (queue,) = {
        production.CELERY_TASK_ROUTES[name]["queue"]
        for name in ("asr.transcribe", "asr.transcribe_chunk")
    }
    return queue


def names_the_app_reads() -> set[str]:
    names = set(settings_defaults())
    for line in (ROOT / ".env.example").read_text().splitlines():
        if re.match(r"^[A-Z][A-Z0-9_]*=", line):
            names.add(line.partition("=")[0])
    return names


def procfile() -> dict[str, list[str]]:
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = shlex.split(command)
    return processes


# --- Checks ----------------------------------------------------------------------------


def builtin_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except (
                kubernetes_validate.ValidationError,
                kubernetes_validate.SchemaNotFoundError,
            ) as error:
                first = str(error).splitlines()[0]
                problems.append(
                    f"{doc['kind']}/{doc['metadata']['name']} ({version}): {first}"
                )
    return problems


def _strict(schema: Any) -> Any:
    # As kubernetes-validate's strict mode: an object schema with properties allows no
    # others (the API server would drop them and say so only as a warning).
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        out.get("type") == "object"
        and isinstance(out.get("properties"), dict)
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def keda_schemas() -> dict[str, Any]:
    return _strict(yaml.safe_load(KEDA_SCHEMAS.read_text()))


def keda_problems(docs: list[dict[str, Any]]) -> list[str]:
    schemas = keda_schemas()
    problems = []
    keda = [d for d in docs if d["apiVersion"].startswith("keda.sh/")]
    if not keda:
        problems.append("no KEDA objects")
    for doc in keda:
        where = f"{doc['kind']}/{doc.get('metadata', {}).get('name')}"
        if doc["apiVersion"] != "keda.sh/v1alpha1" or doc["kind"] not in schemas:
            problems.append(f"{where}: not a keda.sh/v1alpha1 kind the schemas know")
            continue
        validator = jsonschema.Draft4Validator(schemas[doc["kind"]])
        problems += [
            f"{where}: {e.json_path}: {e.message}" for e in validator.iter_errors(doc)
        ]
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]):
            problems.append(f"{where}: not a DNS-1123 name")
        spec = doc.get("spec", {})
        if doc["kind"] == "ScaledObject":
            # The CRD's x-kubernetes-validations rule, which is CEL, not JSON Schema.
            if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
                problems.append(f"{where}: minReplicaCount above maxReplicaCount")
            metadata = jsonschema.Draft4Validator(schemas["redisTrigger"]["metadata"])
            for i, trigger in enumerate(spec.get("triggers", [])):
                if trigger.get("type") != "redis":
                    problems.append(f"{where}: trigger {i} is not a redis trigger")
                    continue
                problems += [
                    f"{where}: trigger {i} metadata: {e.message}"
                    for e in metadata.iter_errors(trigger.get("metadata", {}))
                ]
        if doc["kind"] == "TriggerAuthentication":
            for ref in spec.get("secretTargetRef", []) + spec.get("env", []):
                if ref["parameter"] not in schemas["redisTrigger"]["authParams"]:
                    problems.append(
                        f"{where}: {ref['parameter']} is no redis scaler auth parameter"
                    )
    return problems


def kustomization_problems(folder: Path = MANIFESTS) -> list[str]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    listed = set(kustomization.get("resources", []))
    present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    problems = [f"{name} is not in kustomization.yaml" for name in present - listed]
    problems += [
        f"kustomization.yaml lists {name}, missing" for name in listed - present
    ]
    return problems


def target_problems(docs: list[dict[str, Any]]) -> list[str]:
    spec = scaled_object(docs)["spec"]
    ref = spec["scaleTargetRef"]
    problems = []
    if (
        ref.get("kind", "Deployment") != "Deployment"
        or ref.get("apiVersion", "apps/v1") != "apps/v1"
    ):
        problems.append("the ScaledObject targets something other than a Deployment")
    worker = named(docs, "Deployment", ref["name"])
    if worker is None:
        return [
            *problems,
            f"the ScaledObject targets {ref['name']}: no such Deployment",
        ]
    if "replicas" in worker["spec"]:
        problems.append(
            f"{ref['name']} sets replicas, which every apply would reset under the HPA"
        )
    (container,) = containers(worker)
    command = container.get("command", [])
    queues = command[command.index("-Q") + 1].split(",") if "-Q" in command else []
    trigger = redis_trigger(docs, asr_queue())
    if queues != [asr_queue()]:
        problems.append(f"{ref['name']} consumes {queues}, not the {asr_queue()} queue")
    if trigger is None:
        problems.append(f"no redis trigger on the {asr_queue()} list")
    # kombu's Redis transport keeps messages delivered and not yet acknowledged in
    # one hash; with a key prefix (only the tests set one) both names would change.
    options = production.CELERY_BROKER_TRANSPORT_OPTIONS
    if "global_keyprefix" in options or "unacked_key" in options:
        problems.append(
            "the broker's keys are renamed; the triggers' listNames are not"
        )
    for trigger in spec["triggers"]:
        name = trigger["metadata"]["listName"]
        if name not in (asr_queue(), Channel.unacked_key):
            problems.append(f"a trigger on {name}: neither the asr list nor unacked")
    return problems


def shutdown_problems(docs: list[dict[str, Any]]) -> list[str]:
    soft = effective_setting(docs, "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT")
    problems = []
    seen = 0
    for workload in objects(docs, "Deployment"):
        for container in containers(workload):
            if not is_celery_worker(container):
                continue
            seen += 1
            name = workload["metadata"]["name"]
            # Kubernetes' default grace period is 30 s.
            grace = workload["spec"]["template"]["spec"].get(
                "terminationGracePeriodSeconds", 30
            )
            # Room after the soft shutdown for the cold one (about 2 s measured),
            # which hands the running job back, before the kubelet's SIGKILL.
            if not grace >= soft + 10:
                problems.append(
                    f"{name}: grace period {grace} s, not 10 s above the soft-shutdown "
                    f"timeout {soft} s"
                )
            if env_value(docs, container, "REMAP_SIGTERM") != "SIGQUIT":
                problems.append(
                    f"{name}: without REMAP_SIGTERM=SIGQUIT, SIGTERM waits for the "
                    "running job however long it takes"
                )
    if not seen:
        problems.append("no Celery worker Deployment")
    return problems


def gpu_problems(docs: list[dict[str, Any]]) -> list[str]:
    name = scaled_object(docs)["spec"]["scaleTargetRef"]["name"]
    worker = named(docs, "Deployment", name)
    if worker is None:
        return [f"no Deployment {name}"]
    (container,) = containers(worker)
    resources = container.get("resources", {})
    requested = resources.get("requests", {}).get("nvidia.com/gpu")
    limit = resources.get("limits", {}).get("nvidia.com/gpu")
    problems = []
    if limit is None or int(limit) < 1:
        problems.append(f"{name}: no nvidia.com/gpu limit")
    elif requested is not None and int(requested) != int(limit):
        problems.append(f"{name}: nvidia.com/gpu request {requested} is not its limit")
    concurrency = env_value(docs, container, "ASR_WORKER_CONCURRENCY")
    if limit is not None and str(concurrency) != str(limit):
        problems.append(
            f"{name}: {concurrency} pool processes for {limit} GPUs (one per GPU)"
        )
    return problems


def env_problems(docs: list[dict[str, Any]]) -> list[str]:
    read = names_the_app_reads() | set(OTHER_READERS)
    # Parts that a container builds a variable the app reads from ($(NAME) in an env
    # value), or that KEDA reads (addressFromEnv and the like, secretTargetRef).
    parts = set()
    for workload in workloads(docs):
        for container in containers(workload):
            for entry in container.get("env", []):
                parts |= set(REFERENCE.findall(entry.get("value", "")))
    for trigger in scaled_object(docs)["spec"]["triggers"]:
        parts |= {v for k, v in trigger["metadata"].items() if k.endswith("FromEnv")}
    for auth in objects(docs, "TriggerAuthentication"):
        parts |= {ref["key"] for ref in auth["spec"].get("secretTargetRef", [])}
    problems = []
    set_names: dict[str, str] = {}
    for config in objects(docs, "ConfigMap"):
        set_names |= dict.fromkeys(config.get("data", {}), config["metadata"]["name"])
    for secret in objects(docs, "Secret"):
        set_names |= dict.fromkeys(
            secret_data(docs, secret["metadata"]["name"]), "Secret"
        )
    for workload in workloads(docs):
        for container in containers(workload):
            for entry in container.get("env", []):
                set_names[entry["name"]] = workload["metadata"]["name"]
    for name, where in sorted(set_names.items()):
        if name not in read and name not in parts:
            problems.append(f"{where} sets {name}, which nothing reads")
    return problems


def command_problems(docs: list[dict[str, Any]]) -> list[str]:
    processes = procfile()
    problems = []
    covered = []
    for workload in workloads(docs):
        annotations = workload["metadata"].get("annotations", {})
        (container,) = containers(workload)
        command = container.get("command", [])
        name = workload["metadata"]["name"]
        if "kikipounamu/compose-service" in annotations:
            service = annotations["kikipounamu/compose-service"]
            compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
            wanted = shlex.split(compose["services"][service]["command"])
            if command != wanted:
                problems.append(f"{name}: {command} is not docker-compose's {wanted}")
            continue
        process = annotations.get("kikipounamu/procfile")
        if process not in processes:
            problems.append(f"{name}: runs no Procfile process ({process})")
            continue
        covered.append(process)
        wanted = processes[process]
        if len(command) != len(wanted):
            problems.append(f"{name}: {command} is not the Procfile's {wanted}")
            continue
        env = container_env(docs, container)
        ports = {str(p["containerPort"]) for p in container.get("ports", [])}
        for got, want in zip(command, wanted, strict=True):
            variable = re.fullmatch(r"\$\{(\w+):-[^}]*\}", want)
            if variable is None:
                if got != want:
                    problems.append(f"{name}: {got!r} where the Procfile has {want!r}")
                continue
            var = variable[1]
            elsewise = (var in LISTEN_ADDRESSES and got == "0.0.0.0") or (
                var in PORTS and got in ports
            )
            if got == f"$({var})":
                if var not in env:
                    problems.append(f"{name}: $({var}) in the command, not in its env")
            elif not elsewise:
                problems.append(f"{name}: {got!r} where the Procfile has {want!r}")
    for process in processes:
        if covered.count(process) != 1:
            problems.append(
                f"Procfile's {process} runs in {covered.count(process)} workloads"
            )
    return problems


def beat_problems(docs: list[dict[str, Any]]) -> list[str]:
    beats = [
        w
        for w in objects(docs, "Deployment")
        if any(
            c.get("command", [])[:4] == ["celery", "-A", "kikipounamu", "beat"]
            for c in containers(w)
        )
    ]
    if len(beats) != 1:
        return [f"{len(beats)} beat Deployments"]
    (beat,) = beats
    problems = []
    if beat["spec"].get("replicas", 1) != 1:
        problems.append("beat: not exactly one replica")
    if beat["spec"].get("strategy", {}).get("type") != "Recreate":
        problems.append("beat: a rollout would run two for a while (not Recreate)")
    if (
        scaled_object(docs)["spec"]["scaleTargetRef"]["name"]
        == beat["metadata"]["name"]
    ):
        problems.append("beat is autoscaled")
    return problems


def probe_problems(docs: list[dict[str, Any]]) -> list[str]:
    web = named(docs, "Deployment", "web")
    if web is None:
        return ["no web Deployment"]
    (container,) = containers(web)
    allowed = set(
        filter(
            None,
            config_data(docs, "kikipounamu-config")
            .get("DJANGO_ALLOWED_HOSTS", "")
            .split(","),
        )
    ) or {"localhost", "127.0.0.1", "[::1]"}
    ports = {p.get("name") for p in container.get("ports", [])} | {
        p["containerPort"] for p in container.get("ports", [])
    }
    problems = []
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet")
        if get is None or get.get("path") != path:
            problems.append(f"web: {probe} is not GET {path}")
            continue
        if get.get("port") not in ports:
            problems.append(f"web: {probe} asks port {get.get('port')}, not served")
        hosts = {h["value"] for h in get.get("httpHeaders", []) if h["name"] == "Host"}
        # Without a Host header the kubelet sends the pod's IP, which Django refuses.
        if not hosts or not hosts <= allowed:
            problems.append(f"web: {probe} Host {hosts or 'the pod IP'} not allowed")
    return problems


def reference_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        for container in containers(workload):
            for source in container.get("envFrom", []):
                for kind, key in (
                    ("ConfigMap", "configMapRef"),
                    ("Secret", "secretRef"),
                ):
                    if key in source and named(docs, kind, source[key]["name"]) is None:
                        problems.append(f"{name}: no {kind} {source[key]['name']}")
            # Kubernetes expands $(NAME) only from variables defined before it; left
            # alone, the text would reach the app as is.
            defined = container_env(docs, container)
            for i, entry in enumerate(container.get("env", [])):
                earlier = defined[: len(defined) - len(container["env"]) + i]
                for var in REFERENCE.findall(entry.get("value", "")):
                    if var not in earlier:
                        problems.append(
                            f"{name}: {entry['name']} uses undefined $({var})"
                        )
            for token in container.get("command", []):
                for var in REFERENCE.findall(token):
                    if var not in defined:
                        problems.append(f"{name}: the command uses undefined $({var})")
    for auth in objects(docs, "TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            if ref["key"] not in secret_data(docs, ref["name"]):
                problems.append(
                    f"TriggerAuthentication: no key {ref['key']} in {ref['name']}"
                )
    spec = scaled_object(docs)["spec"]
    worker = named(docs, "Deployment", spec["scaleTargetRef"]["name"])
    for trigger in spec["triggers"]:
        auth = trigger.get("authenticationRef", {}).get("name")
        if auth and named(docs, "TriggerAuthentication", auth) is None:
            problems.append(f"a trigger uses TriggerAuthentication {auth}: none")
        for key, var in trigger["metadata"].items():
            # KEDA resolves NAMEFromEnv from the target's container.
            if key.endswith("FromEnv") and (
                worker is None or var not in container_env(docs, containers(worker)[0])
            ):
                problems.append(f"{key}: {var} is not in the worker's environment")
    for service in objects(docs, "Service"):
        selector = service["spec"].get("selector", {})
        matches = [
            w
            for w in objects(docs, "Deployment")
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        if len(matches) != 1:
            problems.append(
                f"Service {service['metadata']['name']} selects {len(matches)}"
            )
            continue
        port_names = {
            p.get("name") for c in containers(matches[0]) for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            if (
                isinstance(port["targetPort"], str)
                and port["targetPort"] not in port_names
            ):
                problems.append(
                    f"Service {service['metadata']['name']}: no port {port['targetPort']}"
                )
    for deployment in objects(docs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if not deployment["spec"]["selector"]["matchLabels"].items() <= labels.items():
            problems.append(
                f"{deployment['metadata']['name']}: selector misses its pods"
            )
    return problems


def redis_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Pods and KEDA reach the same Redis: one address, one password, one database."""
    urls = {
        env_value(docs, c, "REDIS_URL") for w in workloads(docs) for c in containers(w)
    }
    if len(urls) != 1 or None in urls:
        return [f"the workloads build REDIS_URL in {len(urls)} ways: {urls}"]
    (url,) = urls
    match = re.fullmatch(r"(rediss?)://:\$\((\w+)\)@\$\((\w+)\)/(\d+)", url)
    if match is None:
        return [f"REDIS_URL {url} is not scheme://:$(PASSWORD)@$(ADDRESS)/db"]
    scheme, password, address, database = match.groups()
    problems = []
    (auth,) = objects(docs, "TriggerAuthentication")
    keys = {ref["parameter"]: ref["key"] for ref in auth["spec"]["secretTargetRef"]}
    if keys.get("password") != password:
        problems.append(
            f"KEDA's password is {keys.get('password')}, the pods' {password}"
        )
    for trigger in scaled_object(docs)["spec"]["triggers"]:
        meta = trigger["metadata"]
        if meta.get("addressFromEnv") != address:
            problems.append(
                f"KEDA's address is {meta.get('addressFromEnv')}, the pods' {address}"
            )
        if meta.get("databaseIndex", "0") != database:
            problems.append(
                f"KEDA reads database {meta.get('databaseIndex', '0')}, the pods {database}"
            )
        if (meta.get("enableTLS", "false") == "true") != (scheme == "rediss"):
            problems.append(f"KEDA's enableTLS does not go with {scheme}://")
    return problems


def queue_depth_problems(docs: list[dict[str, Any]]) -> list[str]:
    spec = scaled_object(docs)["spec"]
    trigger = redis_trigger(docs, asr_queue())
    if trigger is None:
        return [f"no trigger on {asr_queue()}"]
    length = int(trigger["metadata"].get("listLength", 5))
    depth = effective_setting(docs, "ASR_MAX_QUEUE_DEPTH")
    # The doors keep the list under ASR_MAX_QUEUE_DEPTH; maxReplicaCount workers are
    # asked for from (max - 1) x listLength + 1 messages on.
    if math.ceil(depth / length) < spec.get("maxReplicaCount", 100):
        return [
            f"{spec['maxReplicaCount']} workers need more than {depth} waiting messages"
        ]
    return []


def storage_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems = []
    if config_data(docs, "kikipounamu-config").get("STORAGE_BACKEND") != "s3":
        problems.append("STORAGE_BACKEND is not s3: the pods share no disk")
    for workload in workloads(docs):
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if set(volume) - {"name", "emptyDir", "configMap", "secret"}:
                problems.append(
                    f"{workload['metadata']['name']}: a shared volume {volume['name']}"
                )
    for config in objects(docs, "ConfigMap"):
        for name in config.get("data", {}):
            if SECRET_NAMES.search(name):
                problems.append(f"{name} is in a ConfigMap; it belongs in the Secret")
    return problems


CHECKS: dict[str, Callable[[list[dict[str, Any]]], list[str]]] = {
    "builtin": builtin_problems,
    "keda": keda_problems,
    "target": target_problems,
    "shutdown": shutdown_problems,
    "gpu": gpu_problems,
    "env": env_problems,
    "commands": command_problems,
    "beat": beat_problems,
    "probes": probe_problems,
    "references": reference_problems,
    "redis": redis_problems,
    "queue_depth": queue_depth_problems,
    "storage": storage_problems,
}


# --- The manifests as committed --------------------------------------------------------


@pytest.mark.parametrize("check", CHECKS)
def test_the_manifests_pass(check: str, docs: list[dict[str, Any]]) -> None:
    assert CHECKS[check](docs) == []


def test_the_kustomization_lists_every_manifest() -> None:
    assert kustomization_problems() == []


def test_the_settings_default_is_what_the_grace_period_comment_says(
    docs: list[dict[str, Any]],
) -> None:
    # worker-asr.yaml's comment names the settings default and says config.yaml keeps
    # it; were either to change, the comment would be wrong.
    text = (MANIFESTS / "worker-asr.yaml").read_text()
    soft = settings_defaults()["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"]
    assert f"(settings default {soft:g} s, not" in text
    assert "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT" not in config_data(
        docs, "kikipounamu-config"
    )


def test_the_vendored_keda_schema_rejects_an_unknown_field() -> None:
    schemas = keda_schemas()
    good: dict[str, Any] = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {},
    }
    good["spec"] = {
        "scaleTargetRef": {"name": "w"},
        "triggers": [{"type": "redis", "metadata": {}}],
    }
    jsonschema.validate(good, schemas["ScaledObject"], cls=jsonschema.Draft4Validator)
    bad = copy.deepcopy(good)
    bad["spec"]["scaleTargetRef"]["nmae"] = "w"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            bad, schemas["ScaledObject"], cls=jsonschema.Draft4Validator
        )


# --- Each check catches what it is for ------------------------------------------------


def _get(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = named(docs, kind, name)
    assert found is not None, (kind, name)
    return found


def _container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    workload = named(docs, "Deployment", name) or named(docs, "Job", name)
    assert workload is not None
    return containers(workload)[0]


def _set_env(
    docs: list[dict[str, Any]], name: str, var: str, value: str | None
) -> None:
    container = _container(docs, name)
    container["env"] = [e for e in container["env"] if e["name"] != var]
    if value is not None:
        container["env"].append({"name": var, "value": value})


def _tls_for_the_pods(docs: list[dict[str, Any]]) -> None:
    for workload in workloads(docs):
        _set_env(
            docs,
            workload["metadata"]["name"],
            "REDIS_URL",
            "rediss://:$(REDIS_PASSWORD)@$(REDIS_ADDRESS)/0",
        )


def _asr_trigger(docs: list[dict[str, Any]]) -> dict[str, Any]:
    trigger = redis_trigger(docs, "asr")
    assert trigger is not None
    return trigger


BREAKAGES: dict[str, tuple[str, Callable[[list[dict[str, Any]]], Any]]] = {
    "a misspelt pod field": (
        "builtin",
        lambda d: _get(d, "Deployment", "worker-asr")["spec"]["template"][
            "spec"
        ].update(terminationGracePeriodSecond=90),
    ),
    "a port that is not a number": (
        "builtin",
        lambda d: _container(d, "web")["ports"][0].update(containerPort="eighty"),
    ),
    "a misspelt ScaledObject field": (
        "keda",
        lambda d: scaled_object(d)["spec"].update(maxReplicas=8),
    ),
    "a misspelt redis trigger key": (
        "keda",
        lambda d: _asr_trigger(d)["metadata"].update(listLenght="5"),
    ),
    "a listLength of zero": (
        "keda",
        lambda d: _asr_trigger(d)["metadata"].update(listLength="0"),
    ),
    "min above max replicas": (
        "keda",
        lambda d: scaled_object(d)["spec"].update(minReplicaCount=9),
    ),
    "the wrong scale target": (
        "target",
        lambda d: scaled_object(d)["spec"]["scaleTargetRef"].update(name="worker-gpu"),
    ),
    "replicas on the autoscaled Deployment": (
        "target",
        lambda d: _get(d, "Deployment", "worker-asr")["spec"].update(replicas=1),
    ),
    "a trigger on another list": (
        "target",
        lambda d: _asr_trigger(d)["metadata"].update(listName="celery"),
    ),
    "a grace period inside the soft shutdown": (
        "shutdown",
        lambda d: _get(d, "Deployment", "worker-asr")["spec"]["template"][
            "spec"
        ].update(terminationGracePeriodSeconds=60),
    ),
    "SIGTERM left as the warm shutdown": (
        "shutdown",
        lambda d: _set_env(d, "worker-default", "REMAP_SIGTERM", None),
    ),
    "a GPU request that is not the limit": (
        "gpu",
        lambda d: _container(d, "worker-asr")["resources"]["limits"].update(
            {"nvidia.com/gpu": 2}
        ),
    ),
    "a misspelt variable": (
        "env",
        lambda d: _set_env(d, "worker-asr", "ASR_ENGNE", "whisper"),
    ),
    "a command unlike the Procfile's": (
        "commands",
        lambda d: _container(d, "worker-default")["command"].__setitem__(
            5, "default,bots"
        ),
    ),
    "the bots worker on the prefork pool": (
        "commands",
        lambda d: _container(d, "worker-bots")["command"].__setitem__(10, "prefork"),
    ),
    "a literal where the Procfile has a variable": (
        "commands",
        lambda d: _container(d, "web")["command"].__setitem__(7, "4"),
    ),
    "two beats during a rollout": (
        "beat",
        lambda d: _get(d, "Deployment", "beat")["spec"].update(
            strategy={"type": "RollingUpdate"}
        ),
    ),
    "readiness on /healthz": (
        "probes",
        lambda d: _container(d, "web")["readinessProbe"]["httpGet"].update(
            path="/healthz"
        ),
    ),
    "a probe without a Host header": (
        "probes",
        lambda d: _container(d, "web")["livenessProbe"]["httpGet"].pop("httpHeaders"),
    ),
    "a renamed secret key": (
        "references",
        lambda d: _get(d, "Secret", "kikipounamu-secrets")["stringData"].update(
            REDIS_PASS=_get(d, "Secret", "kikipounamu-secrets")["stringData"].pop(
                "REDIS_PASSWORD"
            )
        ),
    ),
    "a command variable the container lacks": (
        "references",
        lambda d: _get(d, "ConfigMap", "kikipounamu-config")["data"].pop(
            "DEFAULT_WORKER_CONCURRENCY"
        ),
    ),
    "one pod on another Redis database": (
        "redis",
        lambda d: _set_env(
            d, "beat", "REDIS_URL", "redis://:$(REDIS_PASSWORD)@$(REDIS_ADDRESS)/1"
        ),
    ),
    "TLS for the pods, not for KEDA": (
        "redis",
        lambda d: _tls_for_the_pods(d),
    ),
    "a listLength the queue limit never reaches": (
        "queue_depth",
        lambda d: _asr_trigger(d)["metadata"].update(listLength="50"),
    ),
    "a shared media volume": (
        "storage",
        lambda d: _get(d, "Deployment", "worker-asr")["spec"]["template"][
            "spec"
        ].update(
            volumes=[{"name": "media", "persistentVolumeClaim": {"claimName": "media"}}]
        ),
    ),
    "a credential in the ConfigMap": (
        "storage",
        lambda d: _get(d, "ConfigMap", "kikipounamu-config")["data"].update(
            S3_SECRET_ACCESS_KEY="x"
        ),
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_manifest_fails_its_check(
    breakage: str, docs: list[dict[str, Any]]
) -> None:
    check, breaking = BREAKAGES[breakage]
    broken = copy.deepcopy(docs)
    breaking(broken)
    assert CHECKS[check](broken), f"{check} let {breakage!r} through"


def test_a_manifest_left_out_of_the_kustomization_fails(tmp_path: Path) -> None:
    for path in MANIFESTS.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "extra.yaml").write_text("apiVersion: v1\nkind: ConfigMap\n")
    assert kustomization_problems(tmp_path) == [
        "extra.yaml is not in kustomization.yaml"
    ]
