"""The funasr engine through the real ``funasr.AutoModel`` on tiny random models.

The models know no speech, so the text is meaningless: these tests check structure,
segments, timing, device, metadata and the error paths.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from asr.engines import EngineError
from asr.engines import EngineTransientError
from asr.engines import load_engine
from asr.engines.funasr import FunASREngine
from asr.engines.funasr import split_tags
from tests.asr.funasr_models import tiny_model_dir

SR = 16_000


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def sensevoice_dir() -> Path:
    return tiny_model_dir("sensevoice")


@pytest.fixture(scope="module")
def engine(sensevoice_dir: Path) -> FunASREngine:
    return FunASREngine(model=str(sensevoice_dir), threads=1, max_segment_seconds=2)


def test_tiny_model_directory_has_what_a_hub_download_has(sensevoice_dir: Path) -> None:
    names = {p.name for p in sensevoice_dir.iterdir()}
    assert {"config.yaml", "model.pt", "am.mvn", "bpe.model"} <= names
    config = yaml.safe_load((sensevoice_dir / "config.yaml").read_text())
    assert config["model"] == "SenseVoiceSmall"
    assert config["vocab_size"] >= 256
    assert config["frontend_conf"]["dither"] == 0
    size = sum(p.stat().st_size for p in sensevoice_dir.iterdir())
    assert size < 1_000_000


def test_load_engine_builds_funasr_from_a_local_directory(sensevoice_dir: Path) -> None:
    engine = load_engine("funasr", model=str(sensevoice_dir), threads=1)
    assert engine.name == "funasr"
    assert engine.model_name == sensevoice_dir.name
    assert engine.device == "cpu"


def test_segments_carry_absolute_timestamps_and_text_has_no_tags(
    engine: FunASREngine,
) -> None:
    # when 5 s are transcribed in 2 s windows
    seen: list[Any] = []
    result = engine.transcribe(noise(5), SR, "en", on_segment=seen.append)

    # then the windows tile the audio in order
    assert [(s.start, s.end) for s in seen] == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.0)]
    assert all(s.start < s.end for s in result.segments)
    assert "<|" not in result.text
    assert all("<|" not in s.text for s in result.segments)
    assert result.language == "en"
    assert result.meta["architecture"] == "SenseVoiceSmall"
    assert set(result.meta["tags"]) == {"languages", "emotions", "events", "segments"}
    assert len(result.meta["tags"]["segments"]) == 3
    assert result.segments_as_dicts()[0].keys() == {"start", "end", "text"}


def test_output_is_deterministic(engine: FunASREngine) -> None:
    clip = noise(3, seed=7)
    assert engine.transcribe(clip).text == engine.transcribe(clip).text


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process mapped from the file ``path``."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            lo, hi = fields[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


def test_the_weights_are_the_mapped_checkpoint_and_give_funasrs_own_output(
    sensevoice_dir: Path, engine: FunASREngine
) -> None:
    import torch
    from funasr import AutoModel

    # given the checkpoint as torch reads it
    checkpoint = torch.load(sensevoice_dir / "model.pt", weights_only=True)

    # then every weight of the engine's model is the checkpoint's, and lives in the
    # pages of model.pt itself: no copy of the weights in the process
    mapped = _mapped_ranges(sensevoice_dir / "model.pt")
    assert mapped
    weights = engine._model.model.state_dict()
    assert weights.keys() == checkpoint.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, checkpoint[name]), name
        if tensor.numel():
            assert any(lo <= tensor.data_ptr() < hi for lo, hi in mapped), name

    # and the engine's model transcribes as FunASR's own loader's does
    plain = AutoModel(
        model=str(sensevoice_dir),
        device="cpu",
        disable_update=True,
        disable_pbar=True,
        disable_log=True,
    )
    clip = noise(1.5, seed=5)
    expected = plain.generate(
        input=[clip], language="auto", use_itn=True, batch_size=1, disable_pbar=True
    )
    assert engine._generate([clip], "auto")[0]["text"] == expected[0]["text"]


def test_a_worker_imports_only_the_funasr_modules_its_models_name(
    sensevoice_dir: Path,
) -> None:
    # given a fresh process that loads SenseVoiceSmall, then a Paraformer, whose
    # decoder name two FunASR modules register
    script = (
        "import json, sys\n"
        "from asr.engines.funasr import FunASREngine\n"
        "FunASREngine(model=sys.argv[1], threads=1)\n"
        "after_sensevoice = {\n"
        "    'transformers': 'transformers' in sys.modules,\n"
        "    'funasr_modules': sum(m.startswith('funasr.') for m in sys.modules),\n"
        "}\n"
        "engine = FunASREngine(model=sys.argv[2], threads=1)\n"
        "from funasr.register import tables\n"
        "decoder = tables.decoder_classes['ParaformerSANMDecoder']\n"
        "text = engine.transcribe(__import__('numpy').zeros(16000, 'float32')).text\n"
        "print(json.dumps({**after_sensevoice, 'decoder': decoder.__module__}))\n"
    )
    paraformer_dir = tiny_model_dir("paraformer")
    done = subprocess.run(
        [sys.executable, "-c", script, str(sensevoice_dir), str(paraformer_dir)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    # then SenseVoiceSmall needed a few dozen of FunASR's ~430 modules, and none of
    # the libraries only other models use
    assert not seen["transformers"]
    assert seen["funasr_modules"] < 150
    # and the ambiguous name got the class a plain `import funasr` registers
    # (FunASR 1.4.16: the last module to register it in import order wins)
    assert seen["decoder"] == "funasr.models.e_paraformer.decoder"


def test_parameters_no_checkpoint_filled_are_refused() -> None:
    import threading

    import torch

    from asr.engines.funasr import _strict_loading
    from asr.engines.funasr import check_materialized

    # given modules built while FunASR loads, in this thread and in another one
    others: list[torch.nn.Module] = []
    with _strict_loading():
        layer = torch.nn.Linear(4, 2)
        thread = threading.Thread(target=lambda: others.append(torch.nn.Linear(4, 2)))
        thread.start()
        thread.join()

    # then only this thread's parameters wait on the meta device for a checkpoint
    assert layer.weight.is_meta
    assert not others[0].weight.is_meta
    # and a model left without one is refused, not run
    with pytest.raises(EngineError) as info:
        check_materialized(layer, "SenseVoiceSmall")
    assert info.value.code == "model_mismatch"
    assert "not loaded from a checkpoint" in info.value.message
    check_materialized(others[0], "SenseVoiceSmall")


def test_a_batch_gives_one_result_per_clip_in_order(engine: FunASREngine) -> None:
    clips = [noise(1.5, seed=1), noise(4.5, seed=2), noise(0.5, seed=3)]
    results = engine.transcribe_batch(clips, SR, [None, "en", None])
    assert len(results) == 3
    assert [r.segments[-1].end if r.segments else None for r in results][1] == 4.5
    assert results[1].language == "en"
    for clip, result in zip(clips, results, strict=True):
        alone = engine.transcribe(clip, SR)
        assert [(s.start, s.end) for s in alone.segments] == [
            (s.start, s.end) for s in result.segments
        ]


def test_empty_audio_gives_an_empty_result(engine: FunASREngine) -> None:
    result = engine.transcribe(np.zeros(0, dtype=np.float32))
    assert result.text == ""
    assert result.segments == []


def test_a_language_sensevoice_does_not_know_is_refused(engine: FunASREngine) -> None:
    with pytest.raises(EngineError) as info:
        engine.transcribe(noise(1), SR, "de")
    assert info.value.code == "unsupported_language"


def test_sensevoice_tags_become_metadata() -> None:
    text, tags = split_tags("<|en|><|HAPPY|><|Speech|><|Laughter|><|withitn|>Hi there.")
    assert text == "Hi there."
    assert tags == {
        "language": "en",
        "emotion": "HAPPY",
        "events": ["Speech", "Laughter"],
        "itn": True,
    }


def test_a_hub_name_is_refused_at_once_when_downloads_are_off() -> None:
    started = time.monotonic()
    with pytest.raises(EngineError) as info:
        FunASREngine(model="iic/SenseVoiceSmall")
    assert time.monotonic() - started < 2
    assert info.value.code == "model_missing"
    assert "ASR_ALLOW_DOWNLOAD" in info.value.message


def test_no_model_at_all_is_refused() -> None:
    with pytest.raises(EngineError, match="ASR_MODEL"):
        FunASREngine(model="")


def test_a_config_that_does_not_match_its_checkpoint_fails_loudly(
    sensevoice_dir: Path, tmp_path: Path
) -> None:
    # given a model dir whose config.yaml says wider layers than model.pt has
    broken = tmp_path / "broken"
    shutil.copytree(sensevoice_dir, broken)
    config = yaml.safe_load((broken / "config.yaml").read_text())
    config["encoder_conf"]["linear_units"] *= 2
    (broken / "config.yaml").write_text(yaml.safe_dump(config))

    # then loading fails, naming the mismatch, instead of running on random weights
    with pytest.raises(EngineError) as info:
        FunASREngine(model=str(broken), threads=1)
    assert info.value.code == "model_mismatch"
    assert "does not match" in info.value.message


def test_cuda_asked_for_on_a_machine_without_it_runs_on_cpu_and_says_so(
    sensevoice_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with caplog.at_level(logging.WARNING, logger="asr.engines.funasr"):
        engine = FunASREngine(
            model=str(sensevoice_dir), device="cuda", device_label="cuda:1", threads=1
        )
    assert engine.device == "cpu"
    lines = [r for r in caplog.records if "no usable CUDA" in r.getMessage()]
    assert len(lines) == 1
    assert engine.transcribe(noise(1)).segments is not None


def test_cuda_out_of_memory_halves_the_batch_then_is_transient(
    engine: FunASREngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    real = engine._generate
    sizes: list[int] = []

    def generate(pieces: list[np.ndarray], language: str) -> list[dict]:
        sizes.append(len(pieces))
        if len(pieces) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(pieces, language)

    monkeypatch.setattr(engine, "_generate", generate)
    monkeypatch.setattr(engine, "batch_size", 8)
    monkeypatch.setattr(engine, "batch_samples", 0)  # as on a GPU

    # when a batch of 5 segments does not fit, it is halved until it does
    result = engine.transcribe(noise(9), SR)
    assert sizes == [5, 2, 2, 1]
    assert engine.batch_size == 2
    assert result.segments[-1].end == 9.0

    # and one segment that does not fit is a transient error, not a crash loop
    def always_oom(pieces: list[np.ndarray], language: str) -> list[dict]:
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(engine, "_generate", always_oom)
    with pytest.raises(EngineTransientError):
        engine.transcribe(noise(1), SR)


def test_a_call_holds_at_most_batch_seconds_of_audio(
    sensevoice_dir: Path, engine: FunASREngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given 2 s windows, 8 segments per call and at most 5 s of audio per call
    bounded = FunASREngine(
        model=str(sensevoice_dir),
        threads=1,
        max_segment_seconds=2,
        batch_size=8,
        batch_seconds=5,
    )
    calls: list[float] = []
    real = bounded._generate

    def generate(pieces: list[np.ndarray], language: str) -> list[dict]:
        calls.append(sum(piece.shape[0] for piece in pieces) / SR)
        return real(pieces, language)

    monkeypatch.setattr(bounded, "_generate", generate)

    # when 9 s are transcribed, then no call exceeds 5 s, and all is transcribed
    result = bounded.transcribe(noise(9), SR)
    assert calls == [4.0, 5.0]
    assert len(result.meta["tags"]["segments"]) == 5
    # and on CPU the default is one longest segment's worth per call
    assert engine.batch_samples == 2 * SR


def test_paraformer_runs_through_automodel() -> None:
    engine = FunASREngine(model=str(tiny_model_dir("paraformer")), threads=1)
    result = engine.transcribe(noise(3), SR, "en")
    assert engine.architecture == "Paraformer"
    assert "tags" not in result.meta
    assert all(s.end <= 3.0 for s in result.segments)
    batch = engine.transcribe_batch([noise(1), noise(2)], SR)
    assert len(batch) == 2
