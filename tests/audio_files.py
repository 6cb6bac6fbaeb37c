"""Test audio made at test time with PyAV: every format we accept, and a corpus of
files the decoder must refuse, each with the code it must give.

The suite ships no media. Good files are encoded from a float32 16 kHz mono signal
(espeak-ng speech decoded with :func:`asr.audio.decode`, or a sine); bad ones are
cut, overwritten or made up from those, with fixed seeds, so every run tests the same
kind of bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from asr import audio
from tests.speech import espeak

SAMPLE_RATE = audio.SAMPLE_RATE
# The duration limit the bad corpus is made for: the long files are twice as long.
DURATION_LIMIT_SECONDS = 30
LONG_SECONDS = 60
# Encoders are fed frames of this many samples; each one re-frames them as it needs.
_CHUNK = 1024


def sine(seconds: float, *, frequency: float = 440.0) -> np.ndarray:
    """A quiet tone: float32, 16 kHz, mono."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def speech(text: str, directory: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng, as float32 16 kHz mono samples."""
    wav = espeak(text, directory / "espeak.wav")
    return audio.decode(wav, max_seconds=600, timeout=60)


# Good files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """One way of writing audio: a container, an audio codec and its settings."""

    name: str
    suffix: str
    container: str
    codec: str
    rate: int = SAMPLE_RATE
    layout: str = "mono"
    bit_rate: int | None = None
    codec_options: dict[str, str] = field(default_factory=dict)
    container_options: dict[str, str] = field(default_factory=dict)
    video: bool = False


FORMATS = {
    f.name: f
    for f in [
        Format("wav", ".wav", "wav", "pcm_s16le"),
        Format("wav_stereo_44k", ".wav", "wav", "pcm_s16le", 44_100, "stereo"),
        Format("flac", ".flac", "flac", "flac"),
        Format("mp3", ".mp3", "mp3", "libmp3lame", bit_rate=48_000),
        Format("ogg_opus", ".ogg", "ogg", "libopus", 48_000, bit_rate=24_000),
        Format(
            "ogg_vorbis",
            ".ogg",
            "ogg",
            "vorbis",
            44_100,
            "stereo",
            codec_options={"strict": "experimental"},
        ),
        Format("m4a_aac", ".m4a", "ipod", "aac", bit_rate=48_000),
        Format("webm_opus", ".webm", "webm", "libopus", 48_000, bit_rate=24_000),
        Format("mp4_video_aac", ".mp4", "mp4", "aac", bit_rate=48_000, video=True),
    ]
}
# An M4A with its index (moov) before the samples, as "fast start" writers put it.
M4A_FASTSTART = Format(
    "m4a_faststart",
    ".m4a",
    "ipod",
    "aac",
    bit_rate=48_000,
    container_options={"movflags": "faststart"},
)


def write(samples: np.ndarray, path: Path, fmt: Format) -> Path:
    """Encode float32 16 kHz mono ``samples`` to ``path`` in format ``fmt``."""
    if len(samples) == 0 and fmt.codec not in ("flac", "pcm_s16le"):
        # Most muxers then write no file at all, and FFmpeg's vorbis encoder never
        # returns from its flush.
        raise ValueError(f"{fmt.name}: no samples to write")
    with av.open(
        str(path), "w", format=fmt.container, container_options=fmt.container_options
    ) as out:
        stream = out.add_stream(
            fmt.codec, rate=fmt.rate, layout=fmt.layout, options=fmt.codec_options
        )
        if fmt.bit_rate:
            stream.bit_rate = fmt.bit_rate
        video = _add_video(out) if fmt.video else None
        _write_audio(out, stream, samples)
        if video is not None:
            _write_video(out, video, seconds=len(samples) / SAMPLE_RATE)
    return path


def _write_audio(out: Any, stream: Any, samples: np.ndarray) -> None:
    resampler = av.AudioResampler(
        format=stream.codec_context.format,
        layout=stream.codec_context.layout,
        rate=stream.codec_context.sample_rate,
    )
    for start in range(0, len(samples), _CHUNK):
        frame = av.AudioFrame.from_ndarray(
            samples[start : start + _CHUNK].reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        frame.time_base = Fraction(1, SAMPLE_RATE)
        for resampled in resampler.resample(frame):
            out.mux(stream.encode(resampled))
    for resampled in resampler.resample(None):
        out.mux(stream.encode(resampled))
    out.mux(stream.encode(None))


def _add_video(out: Any, *, fps: int = 10) -> Any:
    stream = out.add_stream("mpeg4", rate=fps)
    stream.width = 64
    stream.height = 48
    stream.pix_fmt = "yuv420p"
    return stream


def _write_video(out: Any, stream: Any, *, seconds: float) -> None:
    fps = int(stream.average_rate)
    for index in range(max(1, round(seconds * fps))):
        # A slowly changing colour, so that every frame is a real picture.
        pixels = np.full((stream.height, stream.width, 3), index * 7 % 256, np.uint8)
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts = index
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


# Bad files: builders ------------------------------------------------------------------


def _random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def _good(path: Path, fmt: Format, seconds: float = 3.0) -> bytes:
    source = path.with_name(f"good-{fmt.name}{fmt.suffix}")
    return write(sine(seconds), source, fmt).read_bytes()


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncated(path: Path, fmt: Format, *, keep: float = 0.5) -> Path:
    """The first ``keep`` of a 3 s file: an upload cut off half-way."""
    data = _good(path, fmt)
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def ogg_cut_in_headers(path: Path) -> Path:
    """An Ogg Opus file cut inside its second page (OpusTags), before any audio."""
    data = _good(path, FORMATS["ogg_opus"])
    path.write_bytes(data[: data.index(b"OggS", 4) + 20])
    return path


def corrupt(path: Path, fmt: Format, *, after: bytes, skip: int = 0) -> Path:
    """A 3 s file kept up to ``skip`` bytes past the first ``after`` marker (its
    headers), the rest overwritten with random bytes: a valid header, garbage payload."""
    data = _good(path, fmt)
    keep = data.index(after) + skip
    path.write_bytes(data[:keep] + _random_bytes(len(data) - keep, seed=1))
    return path


def random_bytes(path: Path, *, size: int = 16 * 1024) -> Path:
    path.write_bytes(_random_bytes(size, seed=2))
    return path


def text_file(path: Path) -> Path:
    path.write_text(
        "This is not audio. It is a note someone saved with the wrong name.\n" * 40
    )
    return path


def png(path: Path) -> Path:
    """A small PNG picture, made with PyAV's png encoder."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = 32, 24, "rgb24"
    codec.time_base = Fraction(1, 25)
    pixels = np.zeros((24, 32, 3), np.uint8)
    pixels[:, :, 0] = 200
    packets = codec.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24"))
    packets += codec.encode(None)
    path.write_bytes(b"".join(bytes(packet) for packet in packets))
    return path


def video_without_audio(path: Path, *, seconds: float = 1.0) -> Path:
    """An MP4 with one video track and no audio track."""
    with av.open(str(path), "w", format="mp4") as out:
        _write_video(out, _add_video(out), seconds=seconds)
    return path


def wav_header(
    *,
    data_bytes: int,
    channels: int = 1,
    rate: int = SAMPLE_RATE,
    bits: int = 16,
    format_tag: int = 1,
) -> bytes:
    """A canonical 44-byte WAV header that declares ``data_bytes`` of samples."""
    block = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", min(36 + data_bytes, 0xFFFF_FFFF))
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH", 16, format_tag, channels, rate, rate * block, block, bits
        )
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def _pcm(seconds: float = 1.0) -> bytes:
    return (sine(seconds) * 32767).astype("<i2").tobytes()


def wav_header_only(path: Path) -> Path:
    """A valid WAV header and not one sample."""
    path.write_bytes(wav_header(data_bytes=0))
    return path


def flac_header_only(path: Path) -> Path:
    """A valid FLAC stream header (fLaC, STREAMINFO) and not one frame."""
    return write(np.zeros(0, np.float32), path, FORMATS["flac"])


def wav_of_unknown_length(path: Path, *, seconds: float = 2.0) -> Path:
    """A WAV as recorders writing to a pipe leave it: data size 0xFFFFFFFF."""
    path.write_bytes(wav_header(data_bytes=0xFFFF_FFFF) + _pcm(seconds))
    return path


def wav_with(path: Path, **header: int) -> Path:
    """One second of samples behind a WAV header with odd ``header`` fields."""
    pcm = _pcm()
    path.write_bytes(wav_header(data_bytes=len(pcm), **header) + pcm)
    return path


def hls_playlist(path: Path) -> Path:
    """An HLS playlist naming a local file: must never be followed."""
    path.write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n/etc/passwd\n"
        "#EXT-X-ENDLIST\n"
    )
    return path


def ffconcat_list(path: Path) -> Path:
    """An FFmpeg concat script naming a local file: must never be followed."""
    path.write_text("ffconcat version 1.0\nfile '/etc/passwd'\n")
    return path


def long_opus(path: Path, *, container: str = "ogg") -> Path:
    """:data:`LONG_SECONDS` of 6 kbit/s Opus: long audio in a small (~50 KB) file.

    In Ogg the duration is known from the last page. In WebM written in the
    muxer's live mode no header states it, so only decoding finds out.
    """
    fmt = Format(
        f"long_{container}",
        path.suffix,
        container,
        "libopus",
        48_000,
        bit_rate=6_000,
        codec_options={"compression_level": "0"},  # fastest: this is a test file
        container_options={"live": "1"} if container == "webm" else {},
    )
    return write(sine(LONG_SECONDS, frequency=220.0), path, fmt)


# Bad files: the corpus ----------------------------------------------------------------


@dataclass(frozen=True)
class BadFile:
    """A file the decoder must refuse, the name a client sends it under, and the
    code it must be refused with."""

    id: str
    filename: str
    build: Callable[[Path], Path]
    code: str


BAD_FILES = [
    BadFile(
        "truncated_wav",
        "cut.wav",
        lambda p: truncated(p, FORMATS["wav"]),
        audio.CORRUPT_AUDIO,
    ),
    BadFile(
        "truncated_mp3",
        "cut.mp3",
        lambda p: truncated(p, FORMATS["mp3"]),
        audio.CORRUPT_AUDIO,
    ),
    BadFile(
        "truncated_flac",
        "cut.flac",
        lambda p: truncated(p, FORMATS["flac"]),
        audio.CORRUPT_AUDIO,
    ),
    BadFile(
        "truncated_webm",
        "cut.webm",
        lambda p: truncated(p, FORMATS["webm_opus"]),
        audio.CORRUPT_AUDIO,
    ),
    BadFile(
        "truncated_m4a_faststart",
        "cut.m4a",
        lambda p: truncated(p, M4A_FASTSTART),
        audio.CORRUPT_AUDIO,
    ),
    BadFile(
        # Nothing to decode and no container to recognise: not "corrupt" but
        # "unsupported", with a message that says it may have been cut short.
        "truncated_ogg_in_headers",
        "cut.ogg",
        ogg_cut_in_headers,
        audio.UNSUPPORTED_FORMAT,
    ),
    BadFile(
        "corrupt_flac",
        "noise.flac",
        lambda p: corrupt(p, FORMATS["flac"], after=b"fLaC", skip=8192),
        audio.CORRUPT_AUDIO,
    ),
    BadFile(
        "corrupt_mp3",
        "noise.mp3",
        lambda p: corrupt(p, FORMATS["mp3"], after=b"Info", skip=1000),
        audio.CORRUPT_AUDIO,
    ),
    BadFile(
        # EBML header and tracks intact, the first cluster's content random.
        "corrupt_webm",
        "noise.webm",
        lambda p: corrupt(p, FORMATS["webm_opus"], after=b"\x1f\x43\xb6\x75", skip=20),
        audio.CORRUPT_AUDIO,
    ),
    BadFile(
        "corrupt_m4a_faststart",
        "noise.m4a",
        lambda p: corrupt(p, M4A_FASTSTART, after=b"mdat", skip=4),
        audio.CORRUPT_AUDIO,
    ),
    BadFile(
        "wav_zero_channels",
        "zero-channels.wav",
        lambda p: wav_with(p, channels=0),
        audio.CORRUPT_AUDIO,
    ),
    BadFile("random_bytes_ogg", "noise.ogg", random_bytes, audio.UNSUPPORTED_FORMAT),
    BadFile("random_bytes_wav", "noise.wav", random_bytes, audio.UNSUPPORTED_FORMAT),
    BadFile("text_named_mp3", "notes.mp3", text_file, audio.UNSUPPORTED_FORMAT),
    BadFile("hls_playlist", "playlist.mp3", hls_playlist, audio.UNSUPPORTED_FORMAT),
    BadFile("ffconcat_list", "list.mp3", ffconcat_list, audio.UNSUPPORTED_FORMAT),
    BadFile(
        "wav_unknown_codec",
        "codec.wav",
        lambda p: wav_with(p, format_tag=0x1234),
        audio.UNSUPPORTED_FORMAT,
    ),
    BadFile(
        # Nine channels have no layout FFmpeg can mix down to mono.
        "wav_9_channels",
        "channels.wav",
        lambda p: wav_with(p, channels=9),
        audio.UNSUPPORTED_FORMAT,
    ),
    BadFile("png_image", "picture.png", png, audio.NO_AUDIO_STREAM),
    BadFile(
        "mp4_without_audio",
        "silent-film.mp4",
        video_without_audio,
        audio.NO_AUDIO_STREAM,
    ),
    BadFile("wav_header_only", "header.wav", wav_header_only, audio.EMPTY_AUDIO),
    BadFile("flac_header_only", "header.flac", flac_header_only, audio.EMPTY_AUDIO),
    BadFile("long_opus_ogg", "long.ogg", long_opus, audio.TOO_LONG),
    BadFile(
        "long_opus_webm_no_duration",
        "long.webm",
        lambda p: long_opus(p, container="webm"),
        audio.TOO_LONG,
    ),
]
