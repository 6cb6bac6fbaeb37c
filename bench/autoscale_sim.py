"""Autoscaling of the GPU workers on queue depth, simulated against fixed fleets.

Replays a bursty arrival trace through the scaling rule of deploy/k8s/keda.yaml, as
KEDA and the Kubernetes HPA apply it, and prints queue wait p50/p99, the longest
wait and GPU worker-minutes beside fleets of a fixed size. Run from the project root:

    .venv/bin/python bench/autoscale_sim.py                  # seed 1, about 2 s
    .venv/bin/python bench/autoscale_sim.py --seed 7
    .venv/bin/python bench/autoscale_sim.py --save-trace day.csv
    .venv/bin/python bench/autoscale_sim.py --trace day.csv  # arrival_s,audio_s rows

Every threshold comes from the manifests themselves, one copy of each number:
listLength, activationListLength, pollingInterval, cooldownPeriod, min/max replicas
and the HPA behaviour from the ScaledObject; the soft-shutdown timeout, the doors'
queue limit (503 + Retry-After) and the fan-out of long audio from config.yaml where
it sets them, else from the defaults in kikipounamu/settings.py. What no manifest
holds is an option: a new worker's start-up and model-load time (--load-seconds), and
the speed of one GPU worker (--speed, --overhead).

The model, event by event:
- A door refuses a submission while ASR_MAX_QUEUE_DEPTH messages wait (503); the
  client comes back after Retry-After (the app's estimate: the excess times the
  mean job time over the workers, or ASR_BUSY_RETRY_AFTER with none). Wait counts
  from the first try.
- The asr queue is FIFO (kombu: LPUSH, BRPOP); a message handed back by a worker's
  shutdown goes to the end served next. One job per worker at a time (prefetch 1).
  Audio past the fan-out threshold is a leader message (decode and VAD) that then
  queues one chunk message per ASR_FANOUT_CHUNK_SECONDS; the job is done with its
  last chunk.
- KEDA, every pollingInterval: the list's length (waiting messages only) above
  activationListLength makes the trigger active; active with 0 replicas scales to
  max(minReplicaCount, 1); inactive for cooldownPeriod with minReplicaCount 0 scales
  to 0.
- The HPA, every 15 s (kube-controller-manager's default sync period) while replicas
  > 0: desired = ceil(length / listLength) unless within the 10 % tolerance, then
  the behaviour's stabilisation windows and rate policies, then [max(min, 1), max].
- A new pod takes --load-seconds (scheduling on a node that has the image, Python,
  Django, the model onto the GPU) before its first job. Scale-down stops the newest
  pods first (the ReplicaSet's order for pods that are all Ready: workers have no
  readiness probe). A stopped worker (REMAP_SIGTERM=SIGQUIT) takes no new job, lets
  its running one finish within the soft-shutdown timeout or hands it back to the
  queue to run again from the start, and exits only when that timeout is over
  (worker_enable_soft_shutdown_on_idle), holding its GPU until then; measured with
  Celery 5.5: timeout + about 1.7 s.
- Worker-minutes: each pod's life from creation to exit, load time included. A fixed
  fleet is up from the start (loaded) to the end.
Not modelled: adding GPU nodes (cluster-autoscaler: minutes more per new node; add it
to --load-seconds), image pulls, failures.
"""

from __future__ import annotations

import argparse
import ast
import collections
import csv
import heapq
import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "k8s"
SETTINGS = ROOT / "kikipounamu" / "settings.py"

# Cluster-wide flags of kube-controller-manager, in no manifest: its defaults.
HPA_SYNC_SECONDS = 15.0
HPA_TOLERANCE = 0.1
# Celery's cold shutdown after the soft-shutdown timeout, measured (5.5, prefork).
SHUTDOWN_EXIT_SECONDS = 1.7
# The HPA's behaviour where the ScaledObject gives none (Kubernetes' defaults).
DEFAULT_SCALE_UP = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [
        {"type": "Pods", "value": 4, "periodSeconds": 15},
        {"type": "Percent", "value": 100, "periodSeconds": 15},
    ],
}
DEFAULT_SCALE_DOWN = {
    "stabilizationWindowSeconds": 300,
    "selectPolicy": "Max",
    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
}


# --- What the manifests and the settings say --------------------------------------


def read_manifests(folder: Path = MANIFESTS) -> list[dict[str, Any]]:
    """Every Kubernetes object of the folder's YAML files (not the kustomization)."""
    docs = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def find(docs: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _constant(node: ast.expr) -> Any:
    # Defaults such as 24 * 3600: constants and arithmetic on them, nothing else.
    if all(
        isinstance(
            n, ast.Constant | ast.BinOp | ast.UnaryOp | ast.operator | ast.unaryop
        )
        for n in ast.walk(node)
    ):
        return eval(compile(ast.Expression(node), "<default>", "eval"), {})
    return None


def settings_defaults(path: Path = SETTINGS) -> dict[str, Any]:
    """Each environment variable kikipounamu/settings.py reads (``env.int("NAME",
    default=...)`` and the like), with its default where that is a constant."""
    found: dict[str, Any] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "env"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            continue
        default = next((k.value for k in node.keywords if k.arg == "default"), None)
        found[node.args[0].value] = None if default is None else _constant(default)
    return found


def effective_setting(docs: list[dict[str, Any]], name: str) -> Any:
    """A setting as the pods get it: config.yaml's value, else the settings default,
    cast like the default."""
    default = settings_defaults()[name]
    data = find(docs, "ConfigMap", "kikipounamu-config").get("data", {})
    if name not in data:
        return default
    if isinstance(default, bool):
        return data[name].strip().lower() in ("1", "true", "yes", "on")
    return type(default)(data[name])


@dataclass(frozen=True)
class Policy:
    kind: str  # Pods | Percent
    value: int
    period: float


@dataclass(frozen=True)
class Behavior:
    window: float
    select: str  # Max | Min | Disabled
    policies: tuple[Policy, ...]

    @classmethod
    def parse(cls, spec: dict[str, Any], default: dict[str, Any]) -> Behavior:
        spec = {**default, **spec}
        return cls(
            window=float(spec["stabilizationWindowSeconds"]),
            select=spec["selectPolicy"],
            policies=tuple(
                Policy(p["type"], int(p["value"]), float(p["periodSeconds"]))
                for p in spec["policies"]
            ),
        )


# What each Redis key a trigger may name counts, in the terms of the simulation:
# the asr list holds the messages waiting; kombu's `unacked` hash those delivered to
# a worker and not yet acknowledged (acks_late: the ones running).
WAITING = "asr"
IN_FLIGHT = "unacked"


@dataclass(frozen=True)
class Trigger:
    list_name: str
    list_length: float
    activation: float


@dataclass(frozen=True)
class Rule:
    """The ScaledObject's scaling rule, as KEDA and the HPA read it."""

    target: str
    triggers: tuple[Trigger, ...]
    polling: float
    cooldown: float
    min_replicas: int
    max_replicas: int
    scale_up: Behavior
    scale_down: Behavior

    @classmethod
    def from_scaled_object(cls, doc: dict[str, Any]) -> Rule:
        spec = doc["spec"]
        behavior = (
            spec.get("advanced", {})
            .get("horizontalPodAutoscalerConfig", {})
            .get("behavior", {})
        )
        triggers = []
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            if trigger["type"] != "redis" or meta["listName"] not in (
                WAITING,
                IN_FLIGHT,
            ):
                raise ValueError(f"no model of the trigger {trigger}")
            # KEDA's defaults where a field is left out.
            triggers.append(
                Trigger(
                    list_name=meta["listName"],
                    list_length=float(meta.get("listLength", 5)),
                    activation=float(meta.get("activationListLength", 0)),
                )
            )
        return cls(
            target=spec["scaleTargetRef"]["name"],
            triggers=tuple(triggers),
            polling=float(spec.get("pollingInterval", 30)),
            cooldown=float(spec.get("cooldownPeriod", 300)),
            min_replicas=int(spec.get("minReplicaCount", 0)),
            max_replicas=int(spec.get("maxReplicaCount", 100)),
            scale_up=Behavior.parse(behavior.get("scaleUp", {}), DEFAULT_SCALE_UP),
            scale_down=Behavior.parse(
                behavior.get("scaleDown", {}), DEFAULT_SCALE_DOWN
            ),
        )


@dataclass(frozen=True)
class App:
    """What the app does that the simulation needs, as the pods are configured."""

    soft_shutdown: float
    grace_period: float
    max_queue_depth: int
    busy_retry_after: float
    busy_retry_after_max: float
    fanout_seconds: float
    fanout_chunk_seconds: float
    fanout_max_chunk_seconds: float

    @classmethod
    def from_manifests(cls, docs: list[dict[str, Any]], target: str) -> App:
        worker = find(docs, "Deployment", target)["spec"]["template"]["spec"]

        def setting(name: str) -> Any:
            return effective_setting(docs, name)

        return cls(
            soft_shutdown=float(setting("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT")),
            grace_period=float(worker["terminationGracePeriodSeconds"]),
            max_queue_depth=int(setting("ASR_MAX_QUEUE_DEPTH")),
            busy_retry_after=float(setting("ASR_BUSY_RETRY_AFTER")),
            busy_retry_after_max=float(setting("ASR_BUSY_RETRY_AFTER_MAX")),
            fanout_seconds=float(setting("ASR_FANOUT_SECONDS")),
            fanout_chunk_seconds=float(setting("ASR_FANOUT_CHUNK_SECONDS")),
            fanout_max_chunk_seconds=float(setting("ASR_FANOUT_MAX_CHUNK_SECONDS")),
        )

    def fans_out(self, audio: float) -> bool:
        # asr.services.fanout.fan_out_wanted
        return self.fanout_seconds > 0 and audio > max(
            self.fanout_seconds, self.fanout_max_chunk_seconds
        )


@dataclass(frozen=True)
class Service:
    """Time one GPU worker spends on a message."""

    speed: float  # audio seconds per second of work
    overhead: float  # seconds per message: claim, decode, storage, database
    vad_speed: float  # a fan-out leader's decode and VAD, audio seconds per second

    def whole(self, audio: float) -> float:
        return self.overhead + audio / self.speed

    def leader(self, audio: float) -> float:
        return self.overhead + audio / self.vad_speed


# --- The arrival trace ------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    t: float
    audio: float


def make_trace(seed: int, hours: float = 2.0) -> list[Arrival]:
    """A working day compressed into ``hours``: a quiet night with silent spells, a
    morning ramp, a busy day with a lunch lull, an evening decline, and batch uploads
    (bursts) in working hours."""
    rng = np.random.default_rng(seed)
    span = hours * 3600
    # Arrivals per second by hour of the day (linear in between).
    clock = [0, 7, 9, 12, 12.5, 13.5, 14, 17, 20, 23, 24]
    rates = [0.004, 0.004, 0.9, 1.0, 0.35, 0.35, 1.0, 0.9, 0.2, 0.02, 0.004]
    # Two silent hours of the night (nothing arrives; an hour is 5 minutes of the
    # simulation, so longer than a cooldown), which ones drawn.
    silent = [float(h) for h in rng.choice([0, 1, 2, 3, 4, 5], size=2, replace=False)]

    def rate(t: float) -> float:
        hour = 24 * t / span
        if any(h <= hour < h + 1 for h in silent):
            return 0.0
        return float(np.interp(hour, clock, rates))

    # Non-homogeneous Poisson arrivals by thinning.
    top = max(rates)
    arrivals = []
    t = 0.0
    while True:
        t += rng.exponential(1 / top)
        if t >= span:
            break
        if rng.uniform() * top < rate(t):
            arrivals.append(t)
    # Recordings: median 60 s, a long tail (meetings) up to the 4 h limit.
    audio = np.clip(rng.lognormal(math.log(60), 1.1, len(arrivals)), 1, 14400)
    trace = [Arrival(float(a), float(s)) for a, s in zip(arrivals, audio, strict=True)]
    # Batch uploads between 9:00 and 18:00: 80-300 short files within 20-120 s.
    for _ in range(4):
        start = rng.uniform(9 / 24, 18 / 24) * span
        n = int(rng.integers(80, 301))
        within = rng.uniform(20, 120)
        times = start + np.sort(rng.uniform(0, within, n))
        sizes = np.clip(rng.lognormal(math.log(30), 0.8, n), 1, 14400)
        trace += [
            Arrival(float(a), float(s)) for a, s in zip(times, sizes, strict=True)
        ]
    return sorted(trace, key=lambda a: a.t)


def read_trace(path: Path) -> list[Arrival]:
    with path.open() as fh:
        rows = [
            Arrival(float(r["arrival_s"]), float(r["audio_s"]))
            for r in csv.DictReader(fh)
        ]
    return sorted(rows, key=lambda a: a.t)


def write_trace(path: Path, trace: list[Arrival]) -> None:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["arrival_s", "audio_s"])
        # repr: the shortest text that reads back as the same float.
        out.writerows([repr(a.t), repr(a.audio)] for a in trace)


# --- The simulation ---------------------------------------------------------------


@dataclass
class Job:
    id: int
    submitted: float
    audio: float
    started: float | None = None
    done: float | None = None
    chunks_left: int = 0
    refusals: int = 0
    finishes: int = 0  # more than 1 would be a job done twice


@dataclass
class Message:
    job: Job
    kind: str  # whole | leader | chunk
    work: float
    runs: int = 0


@dataclass
class Pod:
    id: int
    created: float
    ready_at: float
    ready: bool = False
    stopping: float | None = None
    gone: float | None = None
    message: Message | None = None
    token: int = 0  # invalidates a pending "done" event of a message handed back
    idle_since: float = 0.0


@dataclass
class Result:
    label: str
    waits: list[float]
    results: list[float]
    refusals: int
    refused_jobs: int
    reruns: int
    peak_pods: int
    peak_gpus: int
    worker_seconds: float
    end: float
    completed: int
    finished_twice: int
    jobs: int
    replicas: list[tuple[float, int]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float:
            return float(np.percentile(values, q)) if values else 0.0

        return {
            "fleet": self.label,
            "wait_p50_s": round(pct(self.waits, 50), 2),
            "wait_p99_s": round(pct(self.waits, 99), 2),
            "wait_max_s": round(max(self.waits, default=0.0), 2),
            "result_p99_s": round(pct(self.results, 99), 2),
            "refused": self.refusals,
            "refused_jobs": self.refused_jobs,
            "reruns": self.reruns,
            "peak_pods": self.peak_pods,
            "peak_gpus": self.peak_gpus,
            "worker_minutes": round(self.worker_seconds / 60, 1),
            "completed": self.completed,
            "finished_twice": self.finished_twice,
            "jobs": self.jobs,
            "end_s": round(self.end, 1),
        }


class Simulation:
    """One fleet through one trace: the autoscaler of ``rule``, or ``fixed`` pods."""

    def __init__(
        self,
        *,
        trace: list[Arrival],
        app: App,
        service: Service,
        load_seconds: float,
        span: float,
        rule: Rule | None = None,
        fixed: int | None = None,
    ) -> None:
        assert (rule is None) != (fixed is None)
        self.trace = trace
        self.span = span
        self.app = app
        self.service = service
        self.load_seconds = load_seconds
        self.rule = rule
        self.fixed = fixed
        self.now = 0.0
        self.events: list[tuple[float, int, str, Any]] = []
        self.seq = itertools.count()
        self.queue: collections.deque[Message] = collections.deque()
        self.pods: list[Pod] = []
        self.pod_ids = itertools.count()
        self.jobs: list[Job] = []
        self.refusals = 0
        self.reruns = 0
        self.replicas = 0
        self.replica_log: list[tuple[float, int]] = []
        self.peak_pods = 0
        self.peak_gpus = 0
        # The work of the last messages done, for the doors' Retry-After estimate.
        self.recent_work: collections.deque[float] = collections.deque()
        self.recent_total = 0.0
        # The HPA's memory: its recommendations, and the changes it made.
        self.recommendations: list[tuple[float, int]] = []
        self.scaled_up: list[tuple[float, int]] = []
        self.scaled_down: list[tuple[float, int]] = []
        self.last_active: float | None = None

    # Events --------------------------------------------------------------------

    def at(self, t: float, kind: str, payload: Any = None) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, payload))

    def run(self, label: str) -> Result:
        for i, arrival in enumerate(self.trace):
            job = Job(id=i, submitted=arrival.t, audio=arrival.audio)
            self.jobs.append(job)
            self.at(arrival.t, "submit", job)
        if self.fixed is not None:
            self.set_replicas(self.fixed, loaded=True)
        else:
            self.at(0.0, "keda")
            self.at(0.0, "hpa")
        while self.events:
            self.now, _, kind, payload = heapq.heappop(self.events)
            getattr(self, f"on_{kind}")(payload)
        assert self.finished(), "jobs left unserved"
        # The day is over at the end of the trace's span, or with the last result if
        # that comes later; each fleet pays until then (a fixed one would go on, and
        # so would a pod still stopping).
        end = max([self.span] + [j.done for j in self.jobs if j.done is not None])
        done = [j for j in self.jobs if j.done is not None]
        return Result(
            label=label,
            waits=[j.started - j.submitted for j in done if j.started is not None],
            results=[j.done - j.submitted for j in done if j.done is not None],
            refusals=self.refusals,
            refused_jobs=sum(1 for j in self.jobs if j.refusals),
            reruns=self.reruns,
            peak_pods=self.peak_pods,
            peak_gpus=self.peak_gpus,
            worker_seconds=sum(
                min(end if p.gone is None else p.gone, end) - p.created
                for p in self.pods
            ),
            end=end,
            completed=len(done),
            finished_twice=sum(1 for j in self.jobs if j.finishes > 1),
            jobs=len(self.jobs),
            replicas=self.replica_log,
        )

    def finished(self) -> bool:
        return all(j.done is not None for j in self.jobs)

    # Doors and queue -------------------------------------------------------------

    def on_submit(self, job: Job) -> None:
        depth = len(self.queue)
        if depth >= self.app.max_queue_depth:
            # asr.services.intake: 503 busy; the client retries after Retry-After.
            self.refusals += 1
            job.refusals += 1
            self.at(self.now + self.retry_after(depth), "submit", job)
            return
        if self.app.fans_out(job.audio):
            self.queue.append(Message(job, "leader", self.service.leader(job.audio)))
        else:
            self.queue.append(Message(job, "whole", self.service.whole(job.audio)))
        self.dispatch()

    def retry_after(self, depth: int) -> float:
        # asr.ops.stats.busy_retry_after: the excess over the limit, times the mean
        # job time over the workers' processes.
        workers = sum(1 for p in self.live_pods() if p.ready)
        if not self.recent_work or not workers:
            return self.app.busy_retry_after
        per_job = self.recent_total / len(self.recent_work) / workers
        excess = max(depth - self.app.max_queue_depth + 1, 1)
        return float(
            min(max(round(excess * per_job), 1), self.app.busy_retry_after_max)
        )

    def dispatch(self) -> None:
        idle = sorted(
            (
                p
                for p in self.pods
                if p.ready and p.stopping is None and p.message is None
            ),
            key=lambda p: p.idle_since,
        )
        for pod in idle:
            if not self.queue:
                return
            self.start(pod, self.queue.popleft())

    def start(self, pod: Pod, message: Message) -> None:
        pod.message = message
        message.runs += 1
        if message.kind != "chunk" and message.job.started is None:
            message.job.started = self.now
        pod.token += 1
        self.at(self.now + message.work, "done", (pod, pod.token))

    def on_done(self, payload: tuple[Pod, int]) -> None:
        pod, token = payload
        if token != pod.token or pod.message is None:
            return  # handed back at shutdown; another run finishes it
        message, pod.message = pod.message, None
        pod.idle_since = self.now
        self.recent_work.append(message.work)
        self.recent_total += message.work
        if len(self.recent_work) > 200:
            self.recent_total -= self.recent_work.popleft()
        job = message.job
        if message.kind == "leader":
            chunk = self.app.fanout_chunk_seconds
            n = math.ceil(job.audio / chunk)
            job.chunks_left = n
            for i in range(n):
                audio = min(chunk, job.audio - i * chunk)
                self.queue.append(Message(job, "chunk", self.service.whole(audio)))
        elif message.kind == "chunk":
            job.chunks_left -= 1
            if job.chunks_left == 0:
                job.done = self.now
                job.finishes += 1
        else:
            job.done = self.now
            job.finishes += 1
        self.dispatch()

    # Pods ----------------------------------------------------------------------

    def live_pods(self) -> list[Pod]:
        return [p for p in self.pods if p.stopping is None and p.gone is None]

    def set_replicas(self, n: int, loaded: bool = False) -> None:
        self.replicas = n
        self.replica_log.append((self.now, n))
        live = self.live_pods()
        for _ in range(n - len(live)):
            pod = Pod(
                id=next(self.pod_ids),
                created=self.now,
                ready_at=self.now if loaded else self.now + self.load_seconds,
            )
            self.pods.append(pod)
            self.at(pod.ready_at, "ready", pod)
        # The ReplicaSet stops the pods that became ready last.
        for pod in sorted(live, key=lambda p: (p.ready_at, p.id))[n:]:
            self.stop(pod)
        self.peak_pods = max(self.peak_pods, len(self.live_pods()))
        self.peak_gpus = max(
            self.peak_gpus, sum(1 for p in self.pods if p.gone is None)
        )

    def on_ready(self, pod: Pod) -> None:
        if pod.stopping is not None:
            return
        pod.ready = True
        pod.idle_since = self.now
        self.dispatch()

    def stop(self, pod: Pod) -> None:
        pod.stopping = self.now
        if not pod.ready:
            # Still loading its model: it holds no message, and exits at once.
            pod.gone = self.now
            return
        self.at(self.now + self.app.soft_shutdown, "soft_shutdown_over", pod)

    def on_soft_shutdown_over(self, pod: Pod) -> None:
        if pod.message is not None:
            # Cold shutdown: the acks_late message goes back, to be served next.
            self.queue.appendleft(pod.message)
            self.reruns += 1
            pod.message = None
            pod.token += 1
        pod.gone = self.now + SHUTDOWN_EXIT_SECONDS
        self.dispatch()

    # KEDA and the HPA ------------------------------------------------------------

    def measure(self, trigger: Trigger) -> int:
        if trigger.list_name == WAITING:
            return len(self.queue)
        return sum(1 for p in self.pods if p.message is not None)

    def on_keda(self, _: Any) -> None:
        rule = self.rule
        assert rule is not None
        if any(self.measure(t) > t.activation for t in rule.triggers):
            self.last_active = self.now
            if self.replicas == 0:
                self.set_replicas(max(rule.min_replicas, 1))
        elif (
            self.replicas > 0
            and rule.min_replicas == 0
            and (
                self.last_active is None or self.now - self.last_active > rule.cooldown
            )
        ):
            self.set_replicas(0)
        if not self.finished():
            self.at(self.now + rule.polling, "keda")

    def on_hpa(self, _: Any) -> None:
        rule = self.rule
        assert rule is not None
        if self.replicas > 0:
            desired = self.hpa_desired(rule)
            if desired != self.replicas:
                change = desired - self.replicas
                log = self.scaled_up if change > 0 else self.scaled_down
                log.append((self.now, abs(change)))
                self.set_replicas(desired)
        if not self.finished():
            self.at(self.now + HPA_SYNC_SECONDS, "hpa")

    def hpa_desired(self, rule: Rule) -> int:
        # k8s.io/kubernetes pkg/controller/podautoscaler: per External metric with an
        # AverageValue target, ceil(value / target) unless within the tolerance; the
        # highest of the metrics; then normalizeDesiredReplicasWithBehaviors.
        current = self.replicas
        raw = 0
        for trigger in rule.triggers:
            usage = self.measure(trigger)
            ratio = usage / (trigger.list_length * current)
            if abs(1 - ratio) <= HPA_TOLERANCE:
                raw = max(raw, current)
            else:
                raw = max(raw, math.ceil(usage / trigger.list_length))
        lowest = max(rule.min_replicas, 1)
        # Stabilisation: the lowest wish of the scale-up window, the highest of the
        # scale-down window.
        up, down = raw, raw
        for t, rec in self.recommendations:
            if t > self.now - rule.scale_up.window:
                up = min(up, rec)
            if t > self.now - rule.scale_down.window:
                down = max(down, rec)
        keep = max(rule.scale_up.window, rule.scale_down.window)
        self.recommendations = [
            (t, r) for t, r in self.recommendations if t > self.now - keep
        ] + [(self.now, raw)]
        desired = min(max(current, up), down)
        # Rate policies over their periods.
        if desired > current:
            limit = max(self.scale_up_limit(rule.scale_up, current), current)
            desired = min(desired, limit, rule.max_replicas)
        elif desired < current:
            limit = min(self.scale_down_limit(rule.scale_down, current), current)
            desired = max(desired, limit, lowest)
        return min(max(desired, lowest), rule.max_replicas)

    def changed_within(self, log: list[tuple[float, int]], period: float) -> int:
        return sum(n for t, n in log if t > self.now - period)

    def scale_up_limit(self, behavior: Behavior, current: int) -> int:
        if behavior.select == "Disabled":
            return current
        proposals = []
        for p in behavior.policies:
            start = (
                current
                - self.changed_within(self.scaled_up, p.period)
                + self.changed_within(self.scaled_down, p.period)
            )
            if p.kind == "Pods":
                proposals.append(start + p.value)
            else:
                proposals.append(math.ceil(start * (1 + p.value / 100)))
        return max(proposals) if behavior.select == "Max" else min(proposals)

    def scale_down_limit(self, behavior: Behavior, current: int) -> int:
        if behavior.select == "Disabled":
            return current
        proposals = []
        for p in behavior.policies:
            start = (
                current
                - self.changed_within(self.scaled_up, p.period)
                + self.changed_within(self.scaled_down, p.period)
            )
            if p.kind == "Pods":
                proposals.append(start - p.value)
            else:
                proposals.append(int(start * (1 - p.value / 100)))
        # "Max" is the policy that allows the largest change: the fewest pods.
        return min(proposals) if behavior.select == "Max" else max(proposals)


# --- Command line -----------------------------------------------------------------


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    docs = read_manifests(Path(args.manifests))
    (scaled_object,) = [d for d in docs if d["kind"] == "ScaledObject"]
    rule = Rule.from_scaled_object(scaled_object)
    app = App.from_manifests(docs, rule.target)
    service = Service(
        speed=args.speed, overhead=args.overhead, vad_speed=args.vad_speed
    )
    if args.trace:
        trace = read_trace(Path(args.trace))
        span = trace[-1].t if trace else 0.0
    else:
        trace = make_trace(args.seed, args.hours)
        span = args.hours * 3600
    if args.save_trace:
        write_trace(Path(args.save_trace), trace)

    def run(label: str, **fleet: Any) -> Result:
        sim = Simulation(
            trace=trace,
            app=app,
            service=service,
            load_seconds=args.load_seconds,
            span=span,
            **fleet,
        )
        return sim.run(label)

    results = [run("autoscaled (keda.yaml)", rule=rule)]
    # Beside it, the same rule with one thing changed.
    waiting_only = tuple(t for t in rule.triggers if t.list_name == WAITING)
    if waiting_only != rule.triggers:
        results.append(
            run(
                f"  what if: the {WAITING} list only",
                rule=replace(rule, triggers=waiting_only),
            )
        )
    if rule.min_replicas == 0:
        results.append(
            run("  what if: minReplicaCount 1", rule=replace(rule, min_replicas=1))
        )
    # The largest fleet, always on; a mid-size one; a small one (from 2 workers:
    # one alone is no fleet).
    results.append(
        run(f"fixed {rule.max_replicas} (max, always on)", fixed=rule.max_replicas)
    )
    for n in sorted({rule.max_replicas // 2, rule.max_replicas // 4}, reverse=True):
        if n >= 2 or (n == 1 and rule.max_replicas // 2 == 1):
            results.append(run(f"fixed {n}", fixed=n))
    fanned = [a for a in trace if app.fans_out(a.audio)]
    works = [service.whole(a.audio) for a in trace if not app.fans_out(a.audio)]
    return {
        "seed": None if args.trace else args.seed,
        "trace": {
            "jobs": len(trace),
            "span_s": round(span, 1),
            "audio_hours": round(sum(a.audio for a in trace) / 3600, 1),
            "fanned_out": len(fanned),
            "chunks": sum(
                math.ceil(a.audio / app.fanout_chunk_seconds) for a in fanned
            ),
            "service_mean_s": round(float(np.mean(works)), 2) if works else 0.0,
            "service_p99_s": round(float(np.percentile(works, 99)), 2)
            if works
            else 0.0,
        },
        "rule": {
            "triggers": [
                {
                    "listName": x.list_name,
                    "listLength": x.list_length,
                    "activationListLength": x.activation,
                }
                for x in rule.triggers
            ],
            "polling_s": rule.polling,
            "cooldown_s": rule.cooldown,
            "min": rule.min_replicas,
            "max": rule.max_replicas,
            "scale_up": _describe(rule.scale_up),
            "scale_down": _describe(rule.scale_down),
            "soft_shutdown_s": app.soft_shutdown,
            "grace_period_s": app.grace_period,
            "max_queue_depth": app.max_queue_depth,
        },
        "load_seconds": args.load_seconds,
        "results": [r.row() for r in results],
    }


def _describe(b: Behavior) -> str:
    policies = ", ".join(
        f"{p.value}{'%' if p.kind == 'Percent' else ' pods'}/{p.period:g}s"
        for p in b.policies
    )
    return f"window {b.window:g}s, {b.select} of [{policies}]"


def report(out: dict[str, Any]) -> str:
    t, r = out["trace"], out["rule"]
    source = f"seed {out['seed']}" if out["seed"] is not None else "from --trace"
    lines = [
        f"Trace ({source}): {t['jobs']} jobs over {t['span_s'] / 3600:.1f} h, "
        f"{t['audio_hours']} h of audio; {t['fanned_out']} long files fanned out into "
        f"{t['chunks']} chunks.",
        f"Service on one GPU worker: mean {t['service_mean_s']} s a job, p99 "
        f"{t['service_p99_s']} s (--speed, --overhead); a new worker takes "
        f"{out['load_seconds']:g} s before its first job (--load-seconds).",
        "Rule (deploy/k8s/keda.yaml): "
        + "; ".join(
            f"{x['listName']} listLength {x['listLength']:g} activation "
            f"{x['activationListLength']:g}"
            for x in r["triggers"]
        )
        + f"; polling {r['polling_s']:g} s, cooldown {r['cooldown_s']:g} s, "
        f"replicas {r['min']}-{r['max']}; HPA every {HPA_SYNC_SECONDS:g} s, up: "
        f"{r['scale_up']}; down: {r['scale_down']}.",
        f"Stopping a worker: soft shutdown {r['soft_shutdown_s']:g} s (grace period "
        f"{r['grace_period_s']:g} s); doors refuse past {r['max_queue_depth']} waiting.",
        "",
    ]
    rows = out["results"]
    top = next(x for x in rows if x["fleet"].startswith("fixed"))["worker_minutes"]
    header = (
        f"{'fleet':<30}{'wait p50':>10}{'p99':>9}{'max':>9}{'result p99':>11}"
        f"{'503s':>6}{'re-run':>7}{'peak':>5}{'GPU-min':>9}{'vs max':>8}"
    )
    lines += [header, "-" * len(header)]
    for x in rows:
        lines.append(
            f"{x['fleet']:<30}{x['wait_p50_s']:>9.1f}s{x['wait_p99_s']:>8.1f}s"
            f"{x['wait_max_s']:>8.1f}s{x['result_p99_s']:>10.1f}s{x['refused_jobs']:>6}"
            f"{x['reruns']:>7}{x['peak_pods']:>5}{x['worker_minutes']:>9.0f}"
            f"{x['worker_minutes'] / top:>8.0%}"
        )
    lines += [
        "",
        "wait: submission (first try) to a worker starting the job; result: to the "
        "job done (all chunks); 503s: jobs refused at the queue limit at least once "
        "(their clients retry); re-run: messages handed back by a stopping worker; peak: pods "
        "asked for; GPU-min: pod lifetimes, load and shutdown included.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="trace seed (default 1)")
    parser.add_argument(
        "--hours",
        type=float,
        default=2.0,
        help="the generated day's length (default 2)",
    )
    parser.add_argument("--trace", help="CSV of arrival_s,audio_s to replay instead")
    parser.add_argument("--save-trace", help="write the trace used to this CSV")
    parser.add_argument(
        "--manifests", default=str(MANIFESTS), help="folder of the manifests to read"
    )
    parser.add_argument(
        "--load-seconds",
        type=float,
        default=60.0,
        help="a new worker's start to its first job (default 60)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="audio seconds one GPU worker transcribes per second (default 60)",
    )
    parser.add_argument(
        "--overhead", type=float, default=0.4, help="seconds per message (default 0.4)"
    )
    parser.add_argument(
        "--vad-speed",
        type=float,
        default=2000.0,
        help="audio seconds a fan-out leader decodes and cuts per second",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    out = simulate(args)
    print(json.dumps(out, indent=1) if args.json else report(out))


if __name__ == "__main__":
    main()
