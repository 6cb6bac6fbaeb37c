"""FunASR (SenseVoiceSmall, Paraformer) through ``funasr.AutoModel``, offline first.

What this adds to a bare ``AutoModel``:

- a model name that is not a local directory is refused at once unless downloads
  are allowed: offline, AutoModel spends ~20 s retrying the hub and then fails with
  an error that names neither the setting nor the cause;
- the checkpoint is loaded strictly and memory-mapped: FunASR's own loader logs
  skipped or mis-shaped weights at INFO and runs on random ones, and keeps two extra
  copies of the checkpoint in memory (``torch.load`` then ``deepcopy``). Parameters
  are created on the meta device (no memory, no random initialisation) and then
  become the mapped checkpoint tensors, so the weights exist once, as pages of the
  file that every worker on the machine shares;
- audio is cut into segments (by the VAD model when one is configured, else fixed
  windows) that run in batches (``batch_size`` segments, and on CPU at most
  ``batch_seconds`` of audio), so every segment has absolute timestamps;
- SenseVoice's inline tags (language, emotion, audio events, ITN) are taken out of
  the text and kept as structured metadata;
- CUDA out-of-memory halves the batch and tries again; a single segment that does
  not fit is a transient error (the task retries later, bounded).

It is one module past 500 lines on purpose: each part works around one behaviour of
FunASR's ``AutoModel``, and none is used without the others.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

from asr.engines.base import EngineError
from asr.engines.base import EngineTransientError
from asr.engines.base import Segment
from asr.engines.base import TranscriptionResult

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# SenseVoice's language ids (funasr.models.sense_voice.model.SenseVoiceSmall.lid_dict).
SENSEVOICE_LANGUAGES = ("zh", "en", "yue", "ja", "ko")
EMOTIONS = frozenset(
    {
        "HAPPY",
        "SAD",
        "ANGRY",
        "NEUTRAL",
        "FEARFUL",
        "DISGUSTED",
        "SURPRISED",
        "EMO_UNKNOWN",
    }
)
ITN_TAGS = frozenset({"withitn", "woitn"})
LANGUAGE_TAGS = frozenset({*SENSEVOICE_LANGUAGES, "nospeech", "auto"})
TAG_RE = re.compile(r"<\|([^|<>]*)\|>")

_load_lock = threading.Lock()
# Set while FunASR builds models in this thread: new parameters go to the meta device.
_building = threading.local()


class ModelMismatchError(EngineError):
    def __init__(self, message: str) -> None:
        super().__init__("model_mismatch", message)


def split_tags(text: str) -> tuple[str, dict[str, Any]]:
    """SenseVoice text without its ``<|...|>`` tags, and the tags sorted by kind."""
    tags: dict[str, Any] = {}
    for tag in TAG_RE.findall(text):
        if tag in LANGUAGE_TAGS:
            tags.setdefault("language", tag)
        elif tag in EMOTIONS:
            tags.setdefault("emotion", tag)
        elif tag in ITN_TAGS:
            tags.setdefault("itn", tag == "withitn")
        else:
            events = tags.setdefault("events", [])
            if tag not in events:
                events.append(tag)
    clean = " ".join(TAG_RE.sub(" ", text).split())
    return clean, tags


def strict_load_checkpoint(model: Any, path: str, **_: Any) -> None:
    """Load ``path`` into ``model`` or raise: every key present, every shape equal.

    Memory-mapped and assigned in place (``assign=True``): the model's parameters
    become the checkpoint's tensors, so the process holds the weights once
    (file-backed on CPU) instead of FunASR's three copies, and ``model`` may have
    been built on the meta device.
    """
    import torch

    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:
        # Legacy (non-zip) checkpoints cannot be memory-mapped.
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in state.items()
    }
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
        for k in expected.keys() & state.keys()
        if tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            problems.append(f"{len(mismatched)} of another shape ({mismatched[0]})")
        raise ModelMismatchError(
            f"The checkpoint {path} does not match the config.yaml next to it: "
            + "; ".join(problems)
            + ". FunASR would run on random weights for these; fix the config or "
            "use the checkpoint it was trained with."
        )
    meta_params = getattr(_building, "meta_params", False)
    _building.meta_params = False  # the loaded parameters are the real ones
    try:
        model.load_state_dict(state, strict=True, assign=True)
    finally:
        _building.meta_params = meta_params


def check_materialized(model: Any, name: str) -> None:
    """Raise unless every parameter and buffer of ``model`` holds real data.

    Parameters are built on the meta device and only a checkpoint gives them data;
    FunASR goes on without one when ``model.pt`` is missing (it prints a line and
    would otherwise run on random weights).
    """
    empty = [
        key
        for key, tensor in (*model.named_parameters(), *model.named_buffers())
        if tensor.is_meta
    ]
    if empty:
        raise ModelMismatchError(
            f"{name}: {len(empty)} weights were not loaded from a checkpoint (e.g. "
            f"{empty[0]}); is model.pt missing from the model directory?"
        )


@contextmanager
def _strict_loading() -> Iterator[None]:
    """While FunASR builds models in this thread: parameters are made on the meta
    device and the checkpoint is loaded by :func:`strict_load_checkpoint`.

    Only parameters, which a strict load replaces one and all, go to meta (what
    ``accelerate.init_empty_weights(include_buffers=False)`` does): buffers, plain
    tensor attributes and front-ends are built as usual. This saves building and
    randomly initialising a full copy of the weights only to drop it (for
    SenseVoiceSmall ~0.9 GB of RSS at load and most of the build time).
    """
    import funasr.auto.auto_model as auto_model
    import torch
    from torch.nn.modules.module import register_module_parameter_registration_hook

    def on_meta(_module: Any, _name: str, param: Any) -> Any:
        if param is None or param.is_meta or not getattr(_building, "meta_params", 0):
            return None
        return torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    handle = register_module_parameter_registration_hook(on_meta)
    original = auto_model.load_pretrained_model
    auto_model.load_pretrained_model = strict_load_checkpoint
    _building.meta_params = True
    try:
        yield
    finally:
        _building.meta_params = False
        auto_model.load_pretrained_model = original
        handle.remove()


# How FunASR's modules register their classes: @tables.register("model_classes", "X").
_REGISTRATION_RE = re.compile(r'tables\.register\(\s*"(\w+)"\s*,\s*"([^"]+)"\s*\)')
# Registries only training reads (a config names them too, e.g. ``dataset``).
_TRAINING_TABLES = frozenset(
    {
        "dataset_classes",
        "dataloader_classes",
        "batch_sampler_classes",
        "index_ds_classes",
        "preprocessor_classes",
    }
)


def _registering_modules(package_dir: Path) -> dict[tuple[str, str], set[str]]:
    """(table, name) -> the FunASR modules whose source registers it (~30 ms)."""
    found: dict[tuple[str, str], set[str]] = {}
    for source in package_dir.rglob("*.py"):
        text = source.read_text(encoding="utf-8", errors="replace")
        if "tables.register" not in text:
            continue
        parts = source.relative_to(package_dir.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for table, name in _REGISTRATION_RE.findall(text):
            found.setdefault((table, name), set()).add(module)
    return found


def model_config(model_path: str) -> dict[str, Any] | None:
    """The ``config.yaml`` of a local model directory; None for a hub name."""
    path = Path(model_path) / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    return config if isinstance(config, dict) else None


def import_funasr(configs: Sequence[dict[str, Any] | None]) -> None:
    """Import FunASR with the classes these model configs name registered.

    ``import funasr`` imports each of its ~430 modules, for every one to register
    its classes, and with them transformers, hydra, numba, sympy and
    torch.distributed: for a SenseVoiceSmall worker ~120 MB of RSS (the llvmlite
    library alone is 40 MB) and ~4 s of start-up it never uses. Here that package-wide import is skipped and only the
    modules that register the classes a config names (found in FunASR's source) are
    imported. A name that no module, or more than one, registers falls back to the
    full import: there the import order decides which class wins, and it stays the
    one FunASR itself would use. A config of None (a hub name) does the same.
    """
    import importlib
    import importlib.util
    import pkgutil
    import sys

    if "funasr" not in sys.modules:
        walk = pkgutil.walk_packages
        # funasr/__init__.py imports every module that pkgutil.walk_packages yields;
        # for the moment of that import it yields none.
        pkgutil.walk_packages = lambda *_, **__: iter(())
        try:
            import funasr
        finally:
            pkgutil.walk_packages = walk
    import funasr
    from funasr.register import tables

    spec = importlib.util.find_spec("funasr")
    assert spec is not None and spec.origin is not None
    registering = _registering_modules(Path(spec.origin).parent)
    registries = {table for table, _ in registering} - _TRAINING_TABLES
    wanted = {
        (f"{key}_classes", value)
        for config in configs
        if config is not None
        for key, value in config.items()
        if isinstance(value, str) and f"{key}_classes" in registries
    }

    def unregistered() -> list[tuple[str, str]]:
        return [(t, name) for t, name in wanted if name not in getattr(tables, t, {})]

    sources = [registering.get(item, set()) for item in unregistered()]
    if None not in configs and all(len(found) == 1 for found in sources):
        for found in sources:
            importlib.import_module(next(iter(found)))
        if not unregistered():
            return
    logger.info(
        "funasr: importing all of FunASR for %s",
        ", ".join(sorted(name for _, name in unregistered())) or "a hub model",
    )
    funasr.import_submodules("funasr")


def resolve_model(name: str, *, setting: str, allow_download: bool) -> str:
    """A local model directory, or a hub name when downloads are allowed."""
    path = Path(name).expanduser()
    if path.is_dir():
        if (
            not (path / "config.yaml").is_file()
            and not (path / "configuration.json").is_file()
        ):
            raise EngineError(
                "model_missing",
                f"{setting}={name!r} is a directory but not a FunASR model (no "
                "config.yaml or configuration.json in it).",
            )
        return str(path.resolve())
    if allow_download:
        return name
    raise EngineError(
        "model_missing",
        f"{setting}={name!r} is not a local directory. Offline, FunASR would spend "
        "about 20 s retrying the model hub and then fail with a misleading error, so "
        "it is not tried: set it to a downloaded model directory, or set "
        "ASR_ALLOW_DOWNLOAD=true on a machine that can reach the hub.",
    )


def resolve_device(device: str) -> str:
    """``device`` if usable, else ``cpu`` with one log line saying why."""
    if not device.startswith("cuda"):
        return device
    import torch

    if torch.cuda.is_available():
        return device
    logger.warning(
        "ASR_DEVICE=%s but this machine has no usable CUDA (torch %s): running on CPU",
        device,
        torch.__version__,
    )
    return "cpu"


def _return_freed_heap() -> None:
    # glibc keeps what a call freed in its heap (blocks under its mmap threshold,
    # which it raises by itself up to 32 MB once large blocks are freed): after one
    # 60 s SenseVoiceSmall call on CPU ~200 MB, held until the next job and counted
    # in the worker's RSS and by Celery's per-child memory limit. Trimming takes
    # 1-8 ms. (A fixed low threshold, MALLOC_MMAP_THRESHOLD_, lowers the peak a
    # little more but costs ~20 times the page faults: +20 % CPU time.)
    import ctypes

    with suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or "CUDA out of memory" in str(exc)


def _call_samples(
    batch_seconds: float, *, max_segment_seconds: float, device: str
) -> int:
    """The most audio samples one engine call takes (0: no limit)."""
    if batch_seconds <= 0 and device == "cpu":
        # On CPU a call's activations are worker RAM, and SenseVoiceSmall's CTC
        # output alone takes ~3.4 MB per audio second (a 25k-token vocabulary,
        # logits and log-probabilities in float32): 16 segments of 30 s would
        # add 1.6 GB. Two 30 s segments in one call ran ~10 % faster than one
        # after the other (more on a busy machine) for ~140 MB more; a larger
        # batch_seconds buys that. On a GPU the batch size and the
        # out-of-memory halving govern VRAM.
        batch_seconds = max_segment_seconds
    return int(max(0.0, batch_seconds) * SAMPLE_RATE)


def _load_models(
    paths: list[str],
    *,
    names: tuple[str, str, str],
    device: str,
    threads: int,
    half: bool,
    max_segment_seconds: float,
) -> tuple[Any, Any, Any]:
    """AutoModels for the recognizer and, where given, the VAD and punctuation
    models, each checked to hold real weights."""
    from funasr import AutoModel

    model_path, vad_path, punc_path = paths
    common: dict[str, Any] = {
        "device": device,
        "ncpu": threads,
        "disable_update": True,
        "disable_pbar": True,
        "disable_log": True,
    }
    with _load_lock, _strict_loading():
        model = AutoModel(model=model_path, fp16=half, **common)
        vad = (
            AutoModel(
                model=vad_path,
                max_single_segment_time=int(max_segment_seconds * 1000),
                **common,
            )
            if vad_path
            else None
        )
        punc = AutoModel(model=punc_path, **common) if punc_path else None
    for name, auto in zip(names, (model, vad, punc), strict=True):
        if auto is not None:
            check_materialized(auto.model, name)
    return model, vad, punc


class FunASREngine:
    """SenseVoiceSmall or Paraformer (+ optional fsmn-vad and punctuation) on one
    device. Built once per worker process."""

    name = "funasr"
    # Segments of several clips go through the model together (transcribe_batch).
    batches_natively = True

    def __init__(
        self,
        *,
        model: str = "",
        device: str = "cpu",
        device_label: str = "",
        compute_type: str = "",
        threads: int = 2,
        vad_model: str = "",
        punc_model: str = "",
        allow_download: bool = False,
        use_itn: bool = True,
        batch_size: int = 16,
        max_segment_seconds: float = 30.0,
        batch_seconds: float = 0.0,
        **_: Any,
    ) -> None:
        if not model:
            raise EngineError(
                "model_missing",
                "ASR_ENGINE=funasr needs ASR_MODEL: a local SenseVoiceSmall or "
                "Paraformer model directory.",
            )
        paths = [
            resolve_model(name, setting=setting, allow_download=allow_download)
            if name
            else ""
            for name, setting in (
                (model, "ASR_MODEL"),
                (vad_model, "ASR_VAD_MODEL"),
                (punc_model, "ASR_PUNC_MODEL"),
            )
        ]
        with _load_lock:
            import_funasr([model_config(path) for path in paths if path])
        torch_device = resolve_device(device)
        self.device = (
            device_label if device_label and torch_device != "cpu" else torch_device
        )
        self.model_name = Path(model).name or model
        self.use_itn = use_itn
        self.batch_size = max(1, batch_size)
        self.max_segment_seconds = max_segment_seconds
        self.batch_samples = _call_samples(
            batch_seconds, max_segment_seconds=max_segment_seconds, device=torch_device
        )
        self._model, self._vad, self._punc = _load_models(
            paths,
            names=(model, vad_model, punc_model),
            device=torch_device,
            threads=threads,
            half=compute_type in ("float16", "fp16") and torch_device != "cpu",
            max_segment_seconds=max_segment_seconds,
        )
        self.architecture = str(self._model.kwargs.get("model", ""))
        self.is_sensevoice = "SenseVoice" in self.architecture
        # SenseVoice takes its five languages; other models (Paraformer) one they
        # were trained on, which their files do not say: any, as requested.
        self.languages: tuple[str, ...] | None = (
            SENSEVOICE_LANGUAGES if self.is_sensevoice else None
        )
        self._torch_device = torch_device
        logger.info(
            "funasr model %s (%s) loaded on %s, %d threads, vad %s, punc %s",
            self.model_name,
            self.architecture,
            self.device,
            threads,
            Path(vad_model).name if vad_model else "none",
            Path(punc_model).name if punc_model else "none",
        )

    # -- segmentation ------------------------------------------------------------

    def segment_bounds(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """(start, end) sample offsets of the pieces to transcribe, in order."""
        total = int(samples.shape[0])
        if total == 0:
            return []
        if self._vad is not None:
            out = self._vad.generate(input=samples, fs=SAMPLE_RATE, disable_pbar=True)
            spans = out[0].get("value", []) if out else []
            bounds = []
            for beg_ms, end_ms in spans:
                beg = max(0, int(beg_ms) * SAMPLE_RATE // 1000)
                end = min(total, int(end_ms) * SAMPLE_RATE // 1000)
                if end > beg:
                    bounds.append((beg, end))
            return bounds
        window = max(1, int(self.max_segment_seconds * SAMPLE_RATE))
        return [(beg, min(total, beg + window)) for beg in range(0, total, window)]

    # -- inference ---------------------------------------------------------------

    def _check_language(self, language: str | None) -> str:
        if not language:
            return "auto"
        if self.is_sensevoice and language not in SENSEVOICE_LANGUAGES:
            raise EngineError(
                "unsupported_language",
                f"The model on this server ({self.model_name}) transcribes "
                f"{', '.join(SENSEVOICE_LANGUAGES)}; '{language}' was requested. "
                "Leave the language empty to detect it.",
            )
        return language

    def _generate(self, pieces: list[np.ndarray], language: str) -> list[dict]:
        options: dict[str, Any] = {
            "batch_size": len(pieces),
            "disable_pbar": True,
        }
        if self.is_sensevoice:
            options.update(language=language, use_itn=self.use_itn)
        results = self._model.generate(input=pieces, **options)
        if len(results) != len(pieces):
            raise EngineError(
                "engine_error",
                f"FunASR returned {len(results)} results for {len(pieces)} segments.",
            )
        return results

    def _batch_end(self, pieces: list[np.ndarray], start: int) -> int:
        """End of the batch that starts at ``start``: at most ``batch_size`` pieces
        and, past the first, ``batch_samples`` samples (0: no limit)."""
        end, samples = start + 1, pieces[start].shape[0]
        while end < len(pieces) and end - start < self.batch_size:
            samples += pieces[end].shape[0]
            if self.batch_samples and samples > self.batch_samples:
                break
            end += 1
        return end

    def _generate_adaptive(self, pieces: list[np.ndarray], language: str) -> list[dict]:
        """Run ``pieces``; on CUDA OOM, halve the batch (and keep it halved)."""
        results: list[dict] = []
        i = 0
        while i < len(pieces):
            chunk = pieces[i : self._batch_end(pieces, i)]
            try:
                results.extend(self._generate(chunk, language))
            except Exception as exc:
                if not _is_cuda_oom(exc):
                    raise
                self._release_cuda_cache()
                if len(chunk) == 1:
                    raise EngineTransientError(
                        f"CUDA out of memory on one {chunk[0].shape[0] / SAMPLE_RATE:.1f}"
                        f" s segment on {self.device}; retrying later"
                    ) from exc
                self.batch_size = max(1, len(chunk) // 2)
                logger.warning(
                    "CUDA out of memory on a batch of %d on %s: batch size now %d",
                    len(chunk),
                    self.device,
                    self.batch_size,
                )
                continue
            i += len(chunk)
        return results

    def _release_cuda_cache(self) -> None:
        if self._torch_device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _segment_from(self, raw: dict, beg: int, end: int) -> tuple[Segment, dict]:
        text = str(raw.get("text", ""))
        tags: dict[str, Any] = {}
        if self.is_sensevoice:
            text, tags = split_tags(text)
        text = text.strip()
        if self._punc is not None and text:
            punctuated = self._punc.generate(input=text, disable_pbar=True)
            if punctuated:
                text = str(punctuated[0].get("text", text))
        segment = Segment(
            start=round(beg / SAMPLE_RATE, 3),
            end=round(end / SAMPLE_RATE, 3),
            text=text,
        )
        return segment, tags

    def transcribe(
        self,
        samples: np.ndarray,
        sample_rate: int = 16_000,
        language: str | None = None,
        **options: Any,
    ) -> TranscriptionResult:
        return self.transcribe_batch(
            [samples],
            sample_rate,
            [language],
            on_segment=options.get("on_segment"),
        )[0]

    def transcribe_batch(
        self,
        clips: Sequence[np.ndarray],
        sample_rate: int = 16_000,
        languages: Sequence[str | None] | None = None,
        **options: Any,
    ) -> list[TranscriptionResult]:
        """All segments of all clips in as few engine calls as the batch size allows.

        Clips asking for different languages run in separate calls (SenseVoice takes
        one language per call). ``on_segment`` (single clip only) gets each segment.
        """
        if sample_rate != SAMPLE_RATE:
            raise ValueError("FunASR takes 16 kHz samples")
        langs = list(languages) if languages is not None else [None] * len(clips)
        if len(langs) != len(clips):
            raise ValueError("one language per clip")
        on_segment: Callable[[Segment], None] | None = options.get("on_segment")
        wanted = [self._check_language(lang) for lang in langs]
        bounds = [self.segment_bounds(np.asarray(clip)) for clip in clips]
        # (clip index, piece index) grouped by language, in order.
        by_language: dict[str, list[tuple[int, int]]] = {}
        for ci, clip_bounds in enumerate(bounds):
            for pi in range(len(clip_bounds)):
                by_language.setdefault(wanted[ci], []).append((ci, pi))
        raw: dict[tuple[int, int], dict] = {}
        for lang, refs in by_language.items():
            pieces = [
                np.ascontiguousarray(
                    clips[ci][slice(*bounds[ci][pi])], dtype=np.float32
                )
                for ci, pi in refs
            ]
            for ref, result in zip(
                refs, self._generate_adaptive(pieces, lang), strict=True
            ):
                raw[ref] = result
        if self._torch_device == "cpu":
            _return_freed_heap()
        out = []
        for ci, clip_bounds in enumerate(bounds):
            segments: list[Segment] = []
            seg_tags: list[dict[str, Any]] = []
            for pi, (beg, end) in enumerate(clip_bounds):
                segment, tags = self._segment_from(raw[(ci, pi)], beg, end)
                if on_segment is not None:
                    on_segment(segment)
                seg_tags.append(tags)
                if segment.text:
                    segments.append(segment)
            out.append(self._result(segments, seg_tags, wanted[ci]))
        return out

    def _result(
        self, segments: list[Segment], seg_tags: list[dict[str, Any]], language: str
    ) -> TranscriptionResult:
        meta: dict[str, Any] = {
            "architecture": self.architecture,
            "batch_size": self.batch_size,
        }
        detected = language if language != "auto" else None
        if self.is_sensevoice:
            languages = [t["language"] for t in seg_tags if "language" in t]
            emotions = [t["emotion"] for t in seg_tags if "emotion" in t]
            events: list[str] = []
            for t in seg_tags:
                events.extend(e for e in t.get("events", []) if e not in events)
            if detected is None and languages:
                detected = max(set(languages), key=languages.count)
            meta["tags"] = {
                "languages": sorted(set(languages)),
                "emotions": sorted(set(emotions)),
                "events": events,
                "segments": seg_tags,
            }
        return TranscriptionResult(
            text=" ".join(s.text for s in segments if s.text).strip(),
            language=detected if detected not in (None, "nospeech") else None,
            segments=segments,
            meta=meta,
        )
