"""bench/chaos.py's bookkeeping: what counts as run twice, affected, recovered, a
Telegram duplicate or an order violation, and which failures fail the run. Checked
on records made by hand (the chaos run itself kills real processes; it is a
script, not a test)."""

from __future__ import annotations

import datetime as dt
import json
import math

from bench import chaos
from bench.chaos import BotMessage
from bench.chaos import Outcome

JOB = "0b7f2a64-6d0e-4a4b-9d9b-3f1f1f7a1c01"
OTHER = "5c1e0a2b-8f3d-4e6a-b1c2-9a8b7c6d5e4f"


def test_a_job_is_run_twice_when_two_attempts_reached_a_result() -> None:
    # given one job written twice, one written once beside a dropped result, and
    # one written once
    succeeded = {"a": 2, "b": 1, "c": 1}
    dropped = {"b": 1}

    # then the first two ran twice
    assert chaos.run_twice(succeeded, dropped) == 2


def test_dropped_results_are_read_from_json_and_plain_worker_logs() -> None:
    log = "\n".join(
        [
            json.dumps(
                {
                    "level": "WARNING",
                    "message": f"job {JOB}: result dropped, another attempt finished it",
                    "job_id": JOB,
                }
            ),
            f"WARNING job {JOB}: result dropped, another attempt finished it",
            f"INFO job {OTHER} succeeded: 2.0 s of audio (engine 1.00 s)",
        ]
    )
    assert chaos.dropped_results(log) == {JOB: 2}


def test_the_reconcilers_requeued_jobs_are_summed_from_its_log_lines() -> None:
    log = (
        "WARNING reconcile: {'requeued': 3, 'timed_out': 0}\n"
        "INFO something else\n"
        "{\"message\": \"reconcile: {'requeued': 2, 'timed_out': 1}\"}\n"
    )
    assert chaos.reconciler_requeued(log) == 5


def test_a_rescued_job_is_told_by_when_its_upload_was_accepted() -> None:
    killed = dt.datetime(2026, 12, 3, 12, 0, 0, tzinfo=dt.UTC)
    restarted = killed + dt.timedelta(seconds=3)

    def kind(seconds: float) -> str:
        created = killed + dt.timedelta(seconds=seconds)
        return chaos.rescue_kind(created, killed=killed, restarted=restarted)

    assert [kind(s) for s in (-5.0, -0.5, 0.0, 2.9, 3.0)] == [
        "accepted at other times",
        "accepted in the second before the kill",
        "accepted while Redis was down",
        "accepted while Redis was down",
        "accepted at other times",
    ]


def test_an_attempt_cut_by_a_fault_counts_from_the_fault_to_its_restart() -> None:
    # given a job cut at 10 and started again at 13, done at 15; one running across
    # the fault that finished unharmed; one that ran after it only
    starts = {"cut": [5.0, 13.0], "unharmed": [8.0], "later": [11.0]}
    finished = {"cut": 15.0, "unharmed": 12.0, "later": 12.5}

    # then only the first is affected, recovered 5 s and restarted 3 s after it
    assert chaos.recovery_times(starts, finished, [10.0]) == (1, 5.0, 3.0)


def test_an_attempt_is_charged_to_the_first_fault_after_it_began() -> None:
    # given a job cut at 10 that waited in the queue past a second fault at 20
    starts = {"cut": [5.0, 22.0]}
    finished = {"cut": 23.0}

    # then it is one job affected, timed from the fault that cut it
    assert chaos.recovery_times(starts, finished, [10.0, 20.0]) == (1, 13.0, 12.0)


def test_a_job_never_finished_after_a_fault_never_recovered() -> None:
    starts = {"stuck": [5.0], "fine": [1.0, 12.0]}
    finished = {"stuck": None, "fine": 13.0}
    assert chaos.recovery_times(starts, finished, [10.0]) == (2, None, None)


def test_nothing_affected_has_no_times() -> None:
    assert chaos.recovery_times({"a": [1.0]}, {"a": 2.0}, [10.0]) == (0, None, None)


def final(message_id: int, reply_to: int) -> BotMessage:
    return BotMessage(message_id, reply_to, f"{chaos.MARKER_TEXT} ok")


def test_telegram_tally_counts_duplicates_losses_and_order() -> None:
    # given chat 1 answered in order, chat 2 answered twice for one voice and out
    # of order, chat 3 left with an acknowledgement only
    voices = {1: [10, 11], 2: [10, 11, 12], 3: [10]}
    messages = {
        1: [final(1, 10), final(2, 11)],
        2: [final(3, 11), final(4, 10), final(5, 11), final(6, 12)],
        3: [BotMessage(7, 10, "Recognizing… (you are next in the queue)")],
    }

    tally = chaos.telegram_tally(voices, messages)

    assert tally == {
        "expected": 6,
        "finals": 5,
        "duplicates": 1,
        "lost": 1,
        "order": 1,
    }


def test_a_hung_call_stalls_others_only_while_they_have_replies_waiting() -> None:
    # given chat 9 hung from 0 to 10; chat 1 called at 1 and 8, with a reply
    # waiting from 0 to 8; chat 2 idle (nothing waiting) until a reply at 9
    calls = [(0.0, 9), (1.0, 1), (8.0, 1), (9.5, 2)]
    pending = [(1, 0.0, 8.0), (2, 9.0, 9.5)]

    quiet = chaos.longest_quiet(calls, pending, start=0.0, end=10.0, exclude=9)

    # then the longest wait is chat 1's between its calls: 7 s
    assert quiet == 7.0


def test_a_reply_never_sent_counts_to_the_end_of_the_hang() -> None:
    quiet = chaos.longest_quiet(
        [(0.0, 9)], [(1, 2.0, math.inf)], start=0.0, end=10.0, exclude=9
    )
    assert quiet == 8.0


def test_verdicts_follow_the_targets_of_each_scenario() -> None:
    worker = Outcome("worker", accepted=10, succeeded=8, stuck=2, affected=2)
    checks = {c.key: c for c in chaos.verdicts(worker)}
    assert checks["stuck"].ok is False and checks["lost"].ok is True
    assert checks["recovery"].ok is False and checks["recovery"].value == "never"

    pool = Outcome("pool", accepted=10, succeeded=10, affected=1, restart=4.0)
    assert {c.key: c.ok for c in chaos.verdicts(pool)}["restart"] is True

    redis = Outcome("redis", rescued=2, after_restart=40.0, remaining_work=15.0)
    checks = {c.key: c for c in chaos.verdicts(redis)}
    assert checks["rescued"].ok is False
    assert checks["after_restart"].ok is True  # 40 <= 30 + 15
    redis = Outcome("redis", rescued=0, after_restart=50.0, remaining_work=15.0)
    checks = {c.key: c for c in chaos.verdicts(redis)}
    assert checks["rescued"].ok is True and checks["after_restart"].ok is False

    assert chaos.verdicts(Outcome("link", skipped="not root")) == []


def test_only_the_strict_checks_fail_the_run() -> None:
    results = {
        "pool": chaos.verdicts(Outcome("pool", affected=1, restart=15.0)),
        "worker": chaos.verdicts(Outcome("worker", stuck=1, affected=1)),
    }
    assert chaos.strict_failures(results, ["lost", "twice"]) == []
    assert chaos.strict_failures(results, ["stuck"]) == ["worker.stuck"]
    assert chaos.strict_failures(results, ["pool.*"]) == ["pool.restart"]
    assert chaos.strict_failures(results, [""]) == []
