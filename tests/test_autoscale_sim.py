"""bench/autoscale_sim.py: deterministic, reads its rule from deploy/k8s, serves every
job once, and follows KEDA's and the HPA's rules while it does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from bench import autoscale_sim as sim

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "autoscale_sim.py"


def run(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def rows(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["fleet"].strip(): r for r in out["results"]}


def test_every_fleet_serves_every_job_once_and_autoscaling_costs_less() -> None:
    # given the committed manifests and a seeded day
    out = run("--seed", "3", "--hours", "1")
    fleets = rows(out)
    top = out["rule"]["max"]
    autoscaled = fleets["autoscaled (keda.yaml)"]
    always_max = fleets[f"fixed {top} (max, always on)"]
    # then nothing is lost or done twice, whatever the fleet (refused ones retried)
    for row in fleets.values():
        assert row["completed"] == row["jobs"] == out["trace"]["jobs"] > 0
        assert row["finished_twice"] == 0
    # the autoscaler stays within its bounds and pays less than the always-on max,
    # which never makes a job wait longer than the autoscaler does
    assert autoscaled["peak_pods"] <= top
    assert autoscaled["worker_minutes"] < always_max["worker_minutes"]
    assert always_max["wait_max_s"] <= autoscaled["wait_max_s"]


def test_the_same_seed_gives_the_same_figures_and_another_seed_others() -> None:
    first = run("--seed", "5", "--hours", "0.5")
    assert run("--seed", "5", "--hours", "0.5") == first
    assert run("--seed", "6", "--hours", "0.5")["results"] != first["results"]


def test_a_saved_trace_replays_to_the_same_figures(tmp_path: Path) -> None:
    trace = tmp_path / "day.csv"
    generated = run("--seed", "2", "--hours", "0.5", "--save-trace", str(trace))
    replayed = run("--trace", str(trace))
    assert trace.read_text().startswith("arrival_s,audio_s\n")
    assert replayed["trace"]["jobs"] == generated["trace"]["jobs"]
    # A saved trace ends at its last arrival, not at the generated span: the
    # fixed fleets' bill differs, every wait is the same.
    for name, row in rows(generated).items():
        again = rows(replayed)[name]
        for key in ("wait_p50_s", "wait_p99_s", "wait_max_s", "completed"):
            assert again[key] == row[key], (name, key)


def test_the_rule_is_read_from_the_scaled_object(tmp_path: Path) -> None:
    # given a copy of the manifests with a smaller fleet
    manifests = tmp_path / "k8s"
    shutil.copytree(sim.MANIFESTS, manifests)
    keda = manifests / "keda.yaml"
    docs = list(yaml.safe_load_all(keda.read_text()))
    docs[0]["spec"]["maxReplicaCount"] = 6
    keda.write_text(yaml.safe_dump_all(docs))
    # when the simulation reads it
    out = run("--seed", "3", "--hours", "1", "--manifests", str(manifests))
    # then it scales within it and compares with that fleet
    assert out["rule"]["max"] == 6
    assert rows(out)["autoscaled (keda.yaml)"]["peak_pods"] <= 6
    assert "fixed 6 (max, always on)" in rows(out)


def _committed() -> tuple[sim.Rule, sim.App]:
    docs = sim.read_manifests()
    (scaled_object,) = [d for d in docs if d["kind"] == "ScaledObject"]
    rule = sim.Rule.from_scaled_object(scaled_object)
    return rule, sim.App.from_manifests(docs, rule.target)


class Recorded(sim.Simulation):
    """Notes the fleet at each change of replicas."""

    changes: list[tuple[float, int, int, int]]

    def set_replicas(self, n: int, loaded: bool = False) -> None:
        if not hasattr(self, "changes"):
            self.changes = []
        running = sum(1 for p in self.pods if p.message is not None)
        self.changes.append((self.now, self.replicas, n, running))
        super().set_replicas(n, loaded)


def _recorded(rule: sim.Rule, app: sim.App, seed: int = 1) -> Recorded:
    simulation = Recorded(
        trace=sim.make_trace(seed, 1.0),
        app=app,
        service=sim.Service(speed=60, overhead=0.4, vad_speed=2000),
        load_seconds=60,
        span=3600,
        rule=rule,
    )
    simulation.run("recorded")
    return simulation


def test_scaling_follows_the_hpa_policies_and_keda_bounds() -> None:
    rule, app = _committed()
    changes = _recorded(rule, app).changes
    assert len(changes) > 5, "the autoscaler hardly scaled"
    (up,) = [p for p in rule.scale_up.policies if p.kind == "Pods"]
    (down,) = rule.scale_down.policies

    def replicas_at(t: float) -> int:
        return next((a for t0, _, a, _ in reversed(changes) if t0 <= t), 0)

    for t, before, after, _ in changes:
        assert 0 <= after <= rule.max_replicas
        if before == 0:
            # KEDA wakes the fleet to one (minReplicaCount 0); the HPA goes on.
            assert after == max(rule.min_replicas, 1)
        elif after > before:
            # One period of the scale-up policies adds at most 4 or doubles.
            start = max(replicas_at(t - up.period), 1)
            assert after <= max(start + up.value, 2 * start), (t, start, after)
        elif after > 0:
            # The HPA removes at most one worker a minute.
            removed = sum(
                b - a
                for t0, b, a, _ in changes
                if t - down.period < t0 <= t and 0 < a < b
            )
            assert removed <= down.value, (t, removed)


def test_the_unacked_trigger_keeps_busy_workers_from_being_scaled_to_zero() -> None:
    rule, app = _committed()
    waiting_only = replace(
        rule, triggers=tuple(t for t in rule.triggers if t.list_name == sim.WAITING)
    )
    assert waiting_only.triggers != rule.triggers, "keda.yaml has no unacked trigger"

    def busy_at_zero(r: sim.Rule) -> list[int]:
        return [run for _, b, a, run in _recorded(r, app).changes if a == 0 and b > 0]

    # On the waiting list alone, KEDA sees an empty list while workers are busy and
    # stops them all after the cooldown; with the running jobs counted, never.
    assert any(busy_at_zero(waiting_only))
    assert not any(busy_at_zero(rule))
