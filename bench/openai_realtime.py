"""OpenAI realtime transcription on the live pipeline, timed through the official client.

    .venv/bin/python bench/openai_realtime.py              # 4 streams of 40 s, whisper tiny.en
    .venv/bin/python bench/openai_realtime.py --streams 1 --seconds 20

Starts its own stack as bench/live.py does (its own Redis, SQLite, one web process, the
live worker as the Procfile runs it), then streams bench/live_clips.py's clips (espeak-ng
sentences of known text with pauses) through ``client.realtime.connect(extra_query=
{"intent": "transcription"})``, in real time, 100 ms of 24 kHz PCM16 per
``input_audio_buffer.append``, stream i starting ``live_clips.start_offset(i, n)``
seconds after the first (as bench/live.py's). Before the stack starts it times one
whisper call in this process with the live worker's threads: the unit of cost that
bounds the first delta from below (two partials must agree on a word). Per utterance it matches the item to the sentence by the
server's ``speech_started`` time and prints: start of speech -> first
``conversation.item.input_audio_transcription.delta`` (issue 16's target: 1.5 s), end
of speech -> ``.completed`` (the live door's final target: p50 1.0 s, p99 2.0 s), and
the WER of the completed transcripts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import live as bl  # noqa: E402
from bench import live_clips  # noqa: E402
from bench import pipeline as pl  # noqa: E402
from tests.speech import word_error_rate  # noqa: E402

FIRST_DELTA_TARGET = 1.5
FINAL_P50_TARGET = 1.0
FINAL_P99_TARGET = 2.0


def pcm24(clip: live_clips.Clip) -> bytes:
    samples = np.frombuffer(clip.pcm16, "<i2")
    return (
        soxr.resample(samples, live_clips.SAMPLE_RATE, 24_000).astype("<i2").tobytes()
    )


async def one_stream(
    base: str, token: str, clip: live_clips.Clip, delay: float = 0.0
) -> dict[str, Any]:
    import openai

    await asyncio.sleep(delay)

    client = openai.AsyncOpenAI(api_key=token, base_url=f"{base}/v1", max_retries=0)
    audio = pcm24(clip)
    events: list[tuple[float, Any]] = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.recv()  # session.created
        await conn.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "whisper-1", "language": "en"},
                        "turn_detection": {"type": "server_vad"},
                    }
                },
            }
        )
        started = time.monotonic()

        async def send() -> None:
            step = 4800
            for i, offset in enumerate(range(0, len(audio), step)):
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(audio[offset : offset + step]).decode()
                )
                await asyncio.sleep(
                    max(0.0, started + (i + 1) * 0.1 - time.monotonic())
                )

        sender = asyncio.ensure_future(send())
        want = len(clip.utterances)
        done = 0
        try:
            async with asyncio.timeout(clip.seconds + 60):
                async for event in conn:
                    events.append((time.monotonic() - started, event))
                    kind = event.type
                    if kind == "conversation.item.input_audio_transcription.completed":
                        done += 1
                        if done == want:
                            break
        except TimeoutError:
            pass
        await sender
    return {"events": events, "clip": clip}


def score(result: dict[str, Any]) -> dict[str, list[float] | list[str]]:
    clip: live_clips.Clip = result["clip"]
    items: dict[str, dict[str, Any]] = {}
    for at, event in result["events"]:
        item = getattr(event, "item_id", None)
        if item is None:
            continue
        entry = items.setdefault(item, {})
        if event.type == "input_audio_buffer.speech_started":
            entry["speech_ms"] = event.audio_start_ms
        elif event.type.endswith("transcription.delta") and "delta_at" not in entry:
            entry["delta_at"] = at
        elif event.type.endswith("transcription.completed"):
            entry["done_at"] = at
            entry["text"] = event.transcript
    first_delta, finals, texts, refs = [], [], [], []
    for start, end, text in clip.utterances:
        # The item whose speech_started falls nearest before this sentence's start.
        best = None
        for entry in items.values():
            speech = entry.get("speech_ms")
            if speech is None or speech / 1000 > start + 0.2:
                continue
            if best is None or speech > best["speech_ms"]:
                best = entry
        refs.append(text)
        if best is None or "done_at" not in best:
            texts.append("")
            finals.append(float("inf"))
            continue
        texts.append(best["text"])
        finals.append(best["done_at"] - end)
        if "delta_at" in best:
            first_delta.append(best["delta_at"] - start)
        best["speech_ms"] = -(10**9)  # used
    return {"first_delta": first_delta, "finals": finals, "texts": texts, "refs": refs}


def whisper_call_seconds(threads: int, calls: int = 5) -> float:
    """The median time of one whisper call on 1 s of speech, in this process, with
    the live worker's threads, before the stack starts, as a partial is asked for
    (asr.services.live: greedy, in a window fitted to the audio, no retries): the
    unit every partial, prepare and final costs."""
    from asr.engines.whisper import WhisperEngine

    engine = WhisperEngine(threads=threads)
    clip = live_clips.make_clips(1, 0, seconds=10)[0]
    start, _, _ = clip.utterances[0]
    samples = clip.float32()[round(start * 16_000) : round((start + 1) * 16_000)]
    times = []
    for _ in range(calls + 1):
        began = time.perf_counter()
        engine.transcribe(
            samples,
            16_000,
            "en",
            vad_filter=False,
            beam_size=1,
            fitted_window=True,
            retry_hotter=False,
        )
        times.append(time.perf_counter() - began)
    return statistics.median(times[1:])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("inf")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--live-concurrency", type=int, default=2)
    parser.add_argument("--live-threads", type=int, default=1)
    opts = parser.parse_args()
    opts.split_live = False
    opts.threads = 2
    call = whisper_call_seconds(opts.live_threads)
    cfg = pl.Config(
        web_workers=1,
        worker_pool="prefork",
        worker_concurrency=1,
        worker_log_level="info",
        what_if=[],
    )
    pl.use_bench_dir(bl.LIVE_DIR)
    with pl.own_redis() as cfg.redis:
        cfg.database = pl.configure_environment()
        pl.setup_django()
        pl.redis_client().flushdb()
        with pl.stack(cfg) as s:
            base = s.start_web()
            _, token = pl.make_token("realtime")
            bl.start_live_worker(s, opts)
            clips = live_clips.make_clips(opts.streams, opts.seed, seconds=opts.seconds)

            async def run_all() -> list[dict[str, Any]]:
                # Warm-up: one short stream, so the model's first call is not timed.
                await one_stream(
                    base, token, live_clips.make_clips(1, 99, seconds=6)[0]
                )
                # Starts spread as bench/live.py's are, so that the streams' first
                # sentences do not all begin in the same instant.
                return list(
                    await asyncio.gather(
                        *(
                            one_stream(
                                base,
                                token,
                                c,
                                live_clips.start_offset(i, len(clips)),
                            )
                            for i, c in enumerate(clips)
                        )
                    )
                )

            results = asyncio.run(run_all())
    scored = [score(r) for r in results]
    deltas = [v for s_ in scored for v in s_["first_delta"]]
    finals = [v for s_ in scored for v in s_["finals"]]
    refs = [t for s_ in scored for t in s_["refs"]]
    texts = [t for s_ in scored for t in s_["texts"]]
    missing = sum(1 for v in finals if v == float("inf"))
    wer = word_error_rate(refs, texts)
    print(
        f"{opts.streams} streams x {opts.seconds:g} s, {len(finals)} utterances "
        f"({missing} without a completed transcript)"
    )
    print(
        f"  start of speech -> first delta: p50 {pct(deltas, 0.5):.2f} s  "
        f"p95 {pct(deltas, 0.95):.2f} s  (mean {statistics.fmean(deltas) if deltas else 0:.2f})"
    )
    print(
        f"  end of speech -> completed: p50 {pct(finals, 0.5):.2f} s  "
        f"p99 {pct(finals, 0.99):.2f} s"
    )
    print(f"  WER of the completed transcripts: {wer:.1%}")
    # The floor under the first delta: a word goes out once two partials in a row
    # agree on it (asr/realtime/stable_text.py), one partial in flight per stream,
    # the first asked for after LIVE_AGREED_PARTIAL_INTERVAL of speech (once the
    # first word is said), the next that much later, and its answer a call after.
    from django.conf import settings

    word = 60 / statistics.fmean(live_clips.WORDS_PER_MINUTE)
    interval = settings.LIVE_AGREED_PARTIAL_INTERVAL
    floor = max(word, interval) + interval + call
    rate = opts.live_concurrency / call
    print(
        f"  reference: one whisper call here (LIVE_THREADS={opts.live_threads}, as"
        f" the live worker's) {call:.2f} s; floor for one stream alone: partials"
        f" after max(first word {word:.2f} s, {interval:.2f} s) and {interval:.2f} s"
        f" more of speech, + 1 call = {floor:.2f} s; the live worker's"
        f" {opts.live_concurrency} processes make at most {rate:.1f} calls a"
        f" second, {rate / opts.streams:.2f} per stream (partials, prepares, finals)"
    )
    checks = [
        ("first delta p50", pct(deltas, 0.5), FIRST_DELTA_TARGET),
        ("completed p50", pct(finals, 0.5), FINAL_P50_TARGET),
        ("completed p99", pct(finals, 0.99), FINAL_P99_TARGET),
    ]
    for name, value, target in checks:
        verdict = "PASS" if value <= target else "FAIL"
        print(f"  {name:<18} {value:6.2f} s  target <= {target} s  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
