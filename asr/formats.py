"""A finished job's transcript as txt, srt, vtt or json.

SRT and WebVTT are written by the `srt` and `webvtt-py` libraries rather than by hand:
both formats have escaping and timestamp rules that are easy to get subtly wrong.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import srt
import webvtt

FORMATS = {
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "json": "application/json",
}


def _segments(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in segments if str(s.get("text", "")).strip()]


def to_txt(text: str, segments: list[dict[str, Any]]) -> str:
    return (text or "").strip() + "\n"


def to_srt(text: str, segments: list[dict[str, Any]]) -> str:
    subtitles = [
        srt.Subtitle(
            index=i,
            start=datetime.timedelta(seconds=float(s["start"])),
            end=datetime.timedelta(seconds=float(s["end"])),
            content=str(s["text"]).strip(),
        )
        for i, s in enumerate(_segments(segments), start=1)
    ]
    return srt.compose(subtitles, reindex=False)


def _vtt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def to_vtt(text: str, segments: list[dict[str, Any]]) -> str:
    doc = webvtt.WebVTT()
    for s in _segments(segments):
        doc.captions.append(
            webvtt.Caption(
                _vtt_time(float(s["start"])),
                _vtt_time(float(s["end"])),
                str(s["text"]).strip(),
            )
        )
    return str(doc.content)


def to_json(text: str, segments: list[dict[str, Any]], **extra: Any) -> str:
    return json.dumps(
        {**extra, "text": text, "segments": segments}, ensure_ascii=False, indent=2
    )


def render(fmt: str, text: str, segments: list[dict[str, Any]], **extra: Any) -> str:
    if fmt == "txt":
        return to_txt(text, segments)
    if fmt == "srt":
        return to_srt(text, segments)
    if fmt == "vtt":
        return to_vtt(text, segments)
    if fmt == "json":
        return to_json(text, segments, **extra)
    raise ValueError(fmt)
