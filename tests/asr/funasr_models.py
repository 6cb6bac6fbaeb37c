"""Tiny random FunASR model directories for tests, built once and kept under var/."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from asr.engines import tiny_models

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = ROOT / "var" / "test-models"


def _builder_version() -> str:
    # A change to the builder makes new directories, never a stale model.
    source = Path(tiny_models.__file__).read_bytes()
    return hashlib.sha256(source).hexdigest()[:12]


def tiny_model_dir(kind: str) -> Path:
    """The tiny ``kind`` ("sensevoice" or "paraformer") model directory."""
    target = CACHE / f"{kind}-tiny-{_builder_version()}"
    if (target / "model.pt").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=CACHE, prefix=f".{kind}-"))
    try:
        tiny_models.BUILDERS[kind](scratch, size="tiny")
        try:
            os.rename(scratch, target)
        except OSError:
            # Another test run built it meanwhile.
            if not (target / "model.pt").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
