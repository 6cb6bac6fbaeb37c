"""Where utterances begin and end in a live stream, and the stream at 16 kHz.

Pure numpy and two small C libraries, no Django: the web process runs this for
every audio frame of every live stream, so it must stay cheap (measured by
bench/live.py: CPU per stream-second). WebRTC's VAD (webrtcvad-wheels) decides
speech or not per 20 ms frame in about 2 microseconds; soxr resamples a 100 ms
browser frame at 48 kHz in about 20. Both keep their state across frames, so frames
of any size may arrive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr
import webrtcvad

RATE = 16_000
# WebRTC's VAD takes 10, 20 or 30 ms frames.
FRAME = RATE * 20 // 1000
# Rates a client may send; anything else is refused at the start (a rate we would
# have to guess the meaning of is worse than a clear error).
ACCEPTED_RATES = (8_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)


class Resampler:
    """PCM16 at the client's rate in, PCM16 at 16 kHz out, across frames."""

    def __init__(self, rate: int) -> None:
        if rate not in ACCEPTED_RATES:
            raise ValueError(rate)
        self.rate = rate
        self._stream = (
            None
            if rate == RATE
            else soxr.ResampleStream(rate, RATE, 1, dtype="int16", quality="HQ")
        )

    def feed(self, samples: np.ndarray) -> np.ndarray:
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        """What the filter still holds: call once, at the end of the stream."""
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)


@dataclass(frozen=True)
class Begin:
    """Speech began: the utterance will start at sample ``start``."""

    start: int


@dataclass(frozen=True)
class Utterance:
    """Sample offsets in the session's 16 kHz audio: [start, end)."""

    start: int
    end: int
    # "endpoint" (a pause), "max_length", or "stop" (the stream ended mid-speech).
    reason: str


@dataclass(frozen=True)
class EndpointConfig:
    # WebRTC VAD aggressiveness, 0-3: 3 calls the fewest non-speech frames speech.
    mode: int = 3
    # Speech starts after this much voiced audio within the last ``start_window``.
    start_ms: int = 60
    start_window_ms: int = 200
    # A pause this long after speech ends the utterance: the wait before a final.
    end_silence_ms: int = 400
    # Audio kept before the first voiced frame and after the last one: the VAD
    # misses soft onsets and trailing consonants.
    pre_roll_ms: int = 300
    tail_ms: int = 200
    # An utterance is cut here even without a pause, so one final never costs more
    # than this much audio.
    max_utterance_ms: int = 25_000


class Endpointer:
    """Cuts a 16 kHz stream into utterances at pauses (and at a maximum length).

    ``feed`` takes any number of samples and returns what happened in them, in
    order: an utterance began (``Begin``), one ended (``Utterance``);
    ``in_speech`` and ``speech_start`` say whether one is open and where.
    """

    def __init__(self, config: EndpointConfig | None = None, offset: int = 0) -> None:
        self.config = c = config or EndpointConfig()
        self._vad = webrtcvad.Vad(c.mode)
        self._ms = RATE // 1000
        self._frames_start = max(1, c.start_ms // 20)
        self._window = max(self._frames_start, c.start_window_ms // 20)
        self._frames_end = max(1, c.end_silence_ms // 20)
        self._pending = np.zeros(0, dtype=np.int16)
        # Sample offset of the next frame to judge (a resumed session starts later).
        self.position = offset
        self._recent: list[bool] = []
        self.in_speech = False
        self.speech_start = 0
        self._last_voiced_end = 0
        self._silent_frames = 0
        self._floor = offset

    def feed(self, samples: np.ndarray) -> list[Begin | Utterance]:
        if self._pending.size:
            samples = np.concatenate([self._pending, samples])
        whole = samples.size - samples.size % FRAME
        self._pending = samples[whole:].copy()
        out: list[Begin | Utterance] = []
        frames = samples[:whole].reshape(-1, FRAME)
        for frame in frames:
            voiced = self._vad.is_speech(frame.tobytes(), RATE)
            start = self.position
            self.position += FRAME
            out.extend(self._judge(voiced, start))
        return out

    def _judge(self, voiced: bool, frame_start: int) -> list[Begin | Utterance]:
        c = self.config
        if not self.in_speech:
            self._recent.append(voiced)
            if len(self._recent) > self._window:
                self._recent.pop(0)
            if sum(self._recent) >= self._frames_start:
                self.in_speech = True
                first_voiced = frame_start - (len(self._recent) - 1) * FRAME
                # Never before the end of the previous utterance: no audio twice.
                self.speech_start = max(
                    self._floor, first_voiced - c.pre_roll_ms * self._ms
                )
                self._last_voiced_end = frame_start + FRAME
                self._silent_frames = 0
                self._recent.clear()
                return [Begin(self.speech_start)]
            return []
        if voiced:
            self._last_voiced_end = frame_start + FRAME
            self._silent_frames = 0
        else:
            self._silent_frames += 1
        if self._silent_frames >= self._frames_end:
            end = min(self.position, self._last_voiced_end + c.tail_ms * self._ms)
            return [self._close(end, "endpoint")]
        if self.position - self.speech_start >= c.max_utterance_ms * self._ms:
            cut = self._close(self.position, "max_length")
            # Still speaking: the next utterance starts where this one was cut.
            self.in_speech = True
            self.speech_start = self.position
            return [cut, Begin(self.position)]
        return []

    def likely_end(self) -> int | None:
        """Where the open utterance ends if the pause now begun lasts: once the
        pause is ``tail_ms`` long, the end an end point would give (so its final's
        audio is all here already). None while speech goes on."""
        if not self.in_speech:
            return None
        end = self._last_voiced_end + self.config.tail_ms * self._ms
        return end if self.position >= end else None

    def _close(self, end: int, reason: str) -> Utterance:
        self.in_speech = False
        self._silent_frames = 0
        self._floor = end
        return Utterance(self.speech_start, end, reason)

    def cut(self, reason: str) -> Utterance | None:
        """End the open utterance here, whatever the VAD says (a client's commit)."""
        if not self.in_speech:
            return None
        return self._close(self.position, reason)

    def discard(self) -> Utterance | None:
        """Drop the open utterance (a client's clear): it ends where it began, with
        no audio, so its index still gets its (empty) final."""
        if not self.in_speech:
            return None
        return self._close(self.speech_start, "cleared")

    def tune(
        self,
        *,
        end_silence_ms: int | None = None,
        pre_roll_ms: int | None = None,
        mode: int | None = None,
    ) -> None:
        """New settings from now on (a client's turn detection)."""
        from dataclasses import replace

        changes = {
            name: value
            for name, value in (
                ("end_silence_ms", end_silence_ms),
                ("pre_roll_ms", pre_roll_ms),
                ("mode", mode),
            )
            if value is not None
        }
        self.config = replace(self.config, **changes)
        self._frames_end = max(1, self.config.end_silence_ms // 20)
        if mode is not None:
            self._vad = webrtcvad.Vad(self.config.mode)

    def finish(self) -> Utterance | None:
        """The stream ended: the open utterance, if any, up to the last sample."""
        self.position += self._pending.size
        self._pending = np.zeros(0, dtype=np.int16)
        if not self.in_speech:
            return None
        return self._close(self.position, "stop")
