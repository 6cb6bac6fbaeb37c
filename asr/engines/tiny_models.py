"""Build randomly initialised FunASR model directories, offline.

No model hub can be reached from CI or from the development machines, yet the
funasr engine's real loading and inference code must run in tests. These builders
write the same files a hub download holds (``config.yaml``, ``model.pt``,
``am.mvn``, a tokenizer) for SenseVoiceSmall-style and Paraformer-style models with
random weights: ``AutoModel`` loads and runs them exactly as it would the real
ones; the text they produce is meaningless.

``tiny`` sizes make directories of a few hundred KB for the test suite; ``full``
gives SenseVoiceSmall's real dimensions (~234 M parameters) for benchmarks.

Usage: ``python -m asr.engines.tiny_models sensevoice DIR [--size full]``.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import yaml

SENSEVOICE_LANGUAGE_TAGS = ["zh", "en", "yue", "ja", "ko", "nospeech"]
SENSEVOICE_EMOTION_TAGS = [
    "HAPPY",
    "SAD",
    "ANGRY",
    "NEUTRAL",
    "FEARFUL",
    "DISGUSTED",
    "SURPRISED",
    "EMO_UNKNOWN",
]
SENSEVOICE_EVENT_TAGS = [
    "Speech",
    "BGM",
    "Applause",
    "Laughter",
    "Cry",
    "Sneeze",
    "Breath",
    "Cough",
    "Event_UNK",
]
SENSEVOICE_ITN_TAGS = ["withitn", "woitn"]

# Real dimensions of SenseVoiceSmall (iic/SenseVoiceSmall config.yaml).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "output_size": 32,
        "attention_heads": 2,
        "linear_units": 64,
        "num_blocks": 2,
        "tp_blocks": 1,
        "decoder_blocks": 1,
        "vocab_size": 300,
    },
    "full": {
        "output_size": 512,
        "attention_heads": 4,
        "linear_units": 2048,
        "num_blocks": 50,
        "tp_blocks": 20,
        "decoder_blocks": 16,
        "vocab_size": 25055,
    },
}

N_MELS = 80
LFR_M = 7
LFR_N = 6

_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
    "boxing",
    "matches",
    "near",
    "the",
    "harbour",
    "every",
    "morning",
    "speech",
    "recognition",
    "turns",
    "audio",
    "into",
    "text",
    "workers",
    "share",
    "queues",
    "and",
    "models",
    "across",
    "many",
    "machines",
]


def _frontend_conf() -> dict[str, Any]:
    return {
        "fs": 16000,
        "window": "hamming",
        "n_mels": N_MELS,
        "frame_length": 25,
        "frame_shift": 10,
        "lfr_m": LFR_M,
        "lfr_n": LFR_N,
        # Dither 0: the same audio always gives the same features, so tests can
        # compare outputs.
        "dither": 0.0,
    }


def _write_cmvn(path: Path, dim: int) -> None:
    # Kaldi nnet text format, as funasr.frontends.wav_frontend.load_cmvn reads it.
    shift = " ".join(["-8.0"] * dim)
    scale = " ".join(["0.25"] * dim)
    path.write_text(
        "<Nnet>\n"
        f"<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {shift} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {scale} ]\n"
        "</Nnet>\n",
        encoding="utf-8",
    )


def _sensevoice_special_tokens() -> list[str]:
    tags = (
        SENSEVOICE_LANGUAGE_TAGS
        + SENSEVOICE_EMOTION_TAGS
        + SENSEVOICE_EVENT_TAGS
        + SENSEVOICE_ITN_TAGS
    )
    return [f"<|{tag}|>" for tag in tags]


def _train_sentencepiece(path: Path, vocab_size: int) -> int:
    """Train a BPE model on a fixed corpus; returns its real vocabulary size."""
    import sentencepiece as spm

    corpus = [
        " ".join(_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(12))
        for i in range(400)
    ]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        user_defined_symbols=_sensevoice_special_tokens(),
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    data = buf.getvalue()
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(data)
    # A small corpus yields fewer pieces than asked for; pad with placeholder
    # pieces so the vocabulary (and the CTC layer) has the size asked for.
    lowest = min(piece.score for piece in proto.pieces)
    for i in range(vocab_size - len(proto.pieces)):
        piece = proto.pieces.add()
        piece.piece = f"▁tok{i}"
        piece.score = lowest - 1 - i
    path.write_bytes(proto.SerializeToString())
    processor = spm.SentencePieceProcessor(model_file=str(path))
    return int(processor.get_piece_size())


def _encoder_conf(dims: dict[str, Any]) -> dict[str, Any]:
    return {
        "output_size": dims["output_size"],
        "attention_heads": dims["attention_heads"],
        "linear_units": dims["linear_units"],
        "num_blocks": dims["num_blocks"],
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.1,
        "input_layer": "pe",
        "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True,
        "kernel_size": 11,
        "sanm_shfit": 0,
        "selfattention_layer_type": "sanm",
    }


def _save_random_weights(config: dict[str, Any], model_dir: Path, seed: int) -> int:
    """Instantiate the model class FunASR would, and save its random weights."""
    import torch
    from funasr.register import tables

    from asr.engines.funasr import import_funasr

    import_funasr([config])  # registers the classes it names

    torch.manual_seed(seed)
    frontend_class = tables.frontend_classes.get(config["frontend"])
    frontend = frontend_class(**config["frontend_conf"])
    model_class = tables.model_classes.get(config["model"])
    model_conf = dict(config.get("model_conf", {}))
    model_conf.update(config)
    model_conf["input_size"] = frontend.output_size()
    model = model_class(**model_conf)
    state = model.state_dict()
    torch.save(state, model_dir / "model.pt")
    return sum(t.numel() for t in state.values())


def build_sensevoice(
    model_dir: str | Path, *, size: str = "tiny", seed: int = 0
) -> Path:
    """Write a random SenseVoiceSmall-style model directory; returns its path."""
    dims = SIZES[size]
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    # download_model points the tokenizer at a file of this name.
    bpe = model_dir / "bpe.model"
    vocab_size = _train_sentencepiece(bpe, dims["vocab_size"])
    encoder_conf = _encoder_conf(dims)
    encoder_conf["tp_blocks"] = dims["tp_blocks"]
    config: dict[str, Any] = {
        "model": "SenseVoiceSmall",
        "model_conf": {
            "length_normalized_loss": True,
            "sos": 1,
            "eos": 2,
            "ignore_id": -1,
        },
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": encoder_conf,
        "vocab_size": vocab_size,
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {
            "bpemodel": bpe.name,
            "unk_symbol": "<unk>",
            "split_with_space": True,
        },
        "frontend": "WavFrontend",
        "frontend_conf": _frontend_conf(),
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True},
    }
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    _write_cmvn(model_dir / "am.mvn", N_MELS * LFR_M)
    params = _save_random_weights(config, model_dir, seed)
    _write_info(model_dir, "SenseVoiceSmall", size, params, vocab_size)
    return model_dir


def build_paraformer(
    model_dir: str | Path, *, size: str = "tiny", seed: int = 0
) -> Path:
    """Write a random Paraformer-style model directory (character tokens)."""
    dims = SIZES[size]
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    chars = sorted({ch for word in _WORDS for ch in word})
    tokens = ["<blank>", "<s>", "</s>"]
    tokens = list(dict.fromkeys(tokens + sorted(set(_WORDS)) + chars))
    filler = dims["vocab_size"] - 1 - len(tokens)
    tokens += [f"tok{i}" for i in range(max(filler, 0))]
    tokens.append("<unk>")
    (model_dir / "tokens.json").write_text(json.dumps(tokens), encoding="utf-8")
    d = dims["output_size"]
    config: dict[str, Any] = {
        "model": "Paraformer",
        "model_conf": {
            "ctc_weight": 0.0,
            "lsm_weight": 0.1,
            "length_normalized_loss": True,
            "predictor_weight": 1.0,
            "predictor_bias": 1,
            "sampling_ratio": 0.75,
        },
        "encoder": "SANMEncoder",
        "encoder_conf": _encoder_conf(dims),
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            "attention_heads": dims["attention_heads"],
            "linear_units": dims["linear_units"],
            "num_blocks": dims["decoder_blocks"],
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1,
            "src_attention_dropout_rate": 0.1,
            "att_layer_num": dims["decoder_blocks"],
            "kernel_size": 11,
            "sanm_shfit": 0,
        },
        "predictor": "CifPredictorV2",
        "predictor_conf": {
            "idim": d,
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
        },
        "vocab_size": len(tokens),
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": _frontend_conf(),
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True},
    }
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    _write_cmvn(model_dir / "am.mvn", N_MELS * LFR_M)
    params = _save_random_weights(config, model_dir, seed)
    _write_info(model_dir, "Paraformer", size, params, len(tokens))
    return model_dir


def _write_info(
    model_dir: Path, kind: str, size: str, params: int, vocab_size: int
) -> None:
    info = {
        "kind": kind,
        "size": size,
        "parameters": params,
        "vocab_size": vocab_size,
        "random": True,
    }
    (model_dir / "random_model.json").write_text(json.dumps(info), encoding="utf-8")


BUILDERS = {"sensevoice": build_sensevoice, "paraformer": build_paraformer}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(BUILDERS))
    parser.add_argument("directory")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = BUILDERS[args.kind](args.directory, size=args.size, seed=args.seed)
    print(json.loads((path / "random_model.json").read_text()))


if __name__ == "__main__":
    main()
