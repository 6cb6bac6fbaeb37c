"""Decoding untrusted audio with PyAV, to 16 kHz mono float32, under hard limits.

Nothing here imports Django: a GPU worker decodes with the same code, and limits are
passed in. Every failure is an :class:`AudioError` whose code says what happened.
Durations from container headers are only hints: the real duration is counted while
decoding, so a small file that claims to be short but holds hours is stopped at the
limit instead of filling memory.
"""

from __future__ import annotations

import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from typing import Any
from typing import Union

import av
import numpy as np

SAMPLE_RATE = 16_000

# Codes, as the job and the API report them.
UNSUPPORTED_FORMAT = "unsupported_format"
NO_AUDIO_STREAM = "no_audio_stream"
CORRUPT_AUDIO = "corrupt_audio"
EMPTY_AUDIO = "empty_audio"
TOO_LONG = "too_long"
TOO_LARGE = "too_large"
DECODE_TIMEOUT = "decode_timeout"

# Containers we accept, as FFmpeg names them (a format name may list several).
ACCEPTED_FORMATS = {
    "wav": ".wav",
    "flac": ".flac",
    "mp3": ".mp3",
    "ogg": ".ogg",
    "mov": ".m4a",  # mov,mp4,m4a,3gp,3g2,mj2: m4a/aac and the audio of mp4
    "mp4": ".m4a",
    "m4a": ".m4a",
    "matroska": ".webm",  # matroska,webm
    "webm": ".webm",
}

# A decoded length short of the container's duration by more than this means the
# file was cut off (a truncated upload), not a rounding difference.
TRUNCATION_TOLERANCE_SECONDS = 0.5
TRUNCATION_TOLERANCE_RATIO = 0.05
# FFmpeg skips a damaged packet and goes on; too many of them is a corrupt file.
MAX_BAD_PACKETS = 8
# WAV data sizes from this up are the placeholders that recorders writing to a pipe
# put in the header (FFmpeg 0xFFFFFFFF, arecord and sox ~0x7FFFFFFF): length unknown.
WAV_UNKNOWN_LENGTH = 0x7FFF_0000


class AudioError(Exception):
    """Audio we cannot use, with a code and a message a person can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ProbeInfo:
    format_name: str
    extension: str
    codec: str
    duration_hint: float | None  # from headers: never trusted for limits


Source = Union[str, Path, IO[bytes], "_Unnamed"]


class _Unnamed:
    """A file without its name. Given a name (a path, or a file object's .name),
    FFmpeg also trusts its extension when guessing the format: random bytes called
    .flac then open as an empty FLAC. The content alone must decide."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.read = fh.read
        self.seek = fh.seek
        self.tell = fh.tell


def _sniff(source: Any) -> str | None:
    """The container, where the file's first bytes name it beyond doubt.

    FFmpeg's probe runs the start of the file past every demuxer it has (~3 % of an
    upload's instructions in the web process); for these it would pick the same one,
    which then reads the header and refuses what does not fit. Anything else (MP3,
    with or without an ID3 tag; a RIFF that is not WAVE) is left to the probe.
    """
    start = source.tell()
    head = source.read(12)
    source.seek(start)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1aE\xdf\xa3":  # EBML: Matroska and WebM
        return "matroska"
    if head[4:8] == b"ftyp":  # ISO base media: MP4, M4A, 3GP, QuickTime
        return "mov"
    return None


def _open(
    source: Source, *, metadata_errors: str = "ignore", format_name: str | None = None
) -> Any:
    if format_name is None and not isinstance(source, str | Path):
        format_name = _sniff(source)
    try:
        return av.open(
            source if not isinstance(source, Path) else str(source),
            mode="r",
            # A format name as ProbeInfo gives it lists aliases ("matroska,webm"):
            # the demuxer is the first.
            format=format_name.split(",")[0] if format_name else None,
            metadata_errors=metadata_errors,
            # Never follow references to other files or URLs named inside the
            # container (HLS playlists, concat lists): local, single-file input only.
            # max_probe_packets=0: the container is found from its header, without
            # decoding packets through every demuxer's probe (7 ms per WAV).
            options={"protocol_whitelist": "file,pipe", "max_probe_packets": "0"},
        )
    except av.error.InvalidDataError as exc:
        raise AudioError(
            UNSUPPORTED_FORMAT,
            "This file is not audio we can read. Send WAV, FLAC, MP3, OGG (Opus or "
            "Vorbis), M4A/AAC, WebM (Opus) or an MP4 with an audio track.",
        ) from exc
    except av.error.EOFError as exc:
        # A container cut inside its headers, or bytes FFmpeg took for one because
        # of the file's name: from here the two look the same.
        raise AudioError(
            UNSUPPORTED_FORMAT,
            "This file ends before any audio starts. If it is audio, it was cut "
            "short: upload the whole file again.",
        ) from exc
    except av.error.FFmpegError as exc:
        # str(exc) names the file's path on this machine: give the reason only.
        raise AudioError(
            UNSUPPORTED_FORMAT,
            f"This file could not be opened as audio ({exc.strerror}).",
        ) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise AudioError(
            UNSUPPORTED_FORMAT, f"This file could not be opened as audio ({exc})."
        ) from exc


def _format_extension(format_name: str) -> str | None:
    for name in format_name.split(","):
        if name in ACCEPTED_FORMATS:
            return ACCEPTED_FORMATS[name]
    return None


def probe(source: Source) -> ProbeInfo:
    """Check cheaply (headers only) that ``source`` is a container we take with audio."""
    if isinstance(source, str | Path):
        with open(source, "rb") as fh:
            return probe(_Unnamed(fh))
    with _open(source) as container:
        if not container.streams.audio:
            raise AudioError(
                NO_AUDIO_STREAM,
                "This file has no audio track. If it is a video, check that it was "
                "recorded with sound.",
            )
        format_name = _demuxer_name(container)
        extension = _format_extension(format_name)
        if extension is None:
            raise AudioError(
                UNSUPPORTED_FORMAT,
                f"Files of type '{container.format.long_name or format_name}'"
                " are not supported. Send WAV, FLAC, MP3, OGG, M4A, WebM or MP4.",
            )
        stream = _decodable(container.streams.audio[0])
        return ProbeInfo(
            format_name=format_name,
            extension=extension,
            codec=stream.codec_context.name,
            duration_hint=_declared_duration(container, stream),
        )


def _demuxer_name(container: Any) -> str:
    """The demuxer's full name ("mov,mp4,m4a,3gp,3g2,mj2"), also when it was chosen
    by a short name: PyAV then reports the name it was given."""
    demuxer = container.format.input
    return str(demuxer.name if demuxer is not None else container.format.name)


def _decodable(stream: Any) -> Any:
    # PyAV gives no codec context for a codec this FFmpeg cannot decode.
    if stream.codec_context is None:
        raise AudioError(
            UNSUPPORTED_FORMAT,
            "The audio in this file is in a codec we cannot decode. Send WAV, FLAC, "
            "MP3, OGG (Opus or Vorbis), M4A/AAC, WebM (Opus) or MP4.",
        )
    return stream


def _declared_duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def decode(
    source: Source,
    *,
    max_seconds: float,
    timeout: float,
    sample_rate: int = SAMPLE_RATE,
    format_name: str | None = None,
) -> np.ndarray:
    """Decode the first audio stream to mono float32 at ``sample_rate``.

    Raises :class:`AudioError` past ``max_seconds`` of decoded audio or ``timeout``
    seconds of wall time, for a file cut short of its declared length, and for a
    file with no samples.

    ``format_name``: the container as :func:`probe` found it in these same bytes
    (``ProbeInfo.format_name``). That demuxer is then used as it is, and FFmpeg's
    probe, which runs the start of the file past every demuxer it has, is skipped
    (~6 % of a short WAV's decoding). Content that does not fit it fails as
    unsupported or corrupt, as it would have anyway.
    """
    if isinstance(source, str | Path):
        with open(source, "rb") as fh:
            return decode(
                _Unnamed(fh),
                max_seconds=max_seconds,
                timeout=timeout,
                sample_rate=sample_rate,
                format_name=format_name,
            )
    if not isinstance(source, _Unnamed):
        # A stored file (a Django File, an S3 object) has a name: hide it.
        source = _Unnamed(source)
    collected = _Collected(max_seconds=max_seconds, timeout=timeout, rate=sample_rate)
    with _open(source, format_name=format_name) as container:
        if not container.streams.audio:
            raise AudioError(NO_AUDIO_STREAM, "This file has no audio track.")
        demuxer = _demuxer_name(container)
        if _format_extension(demuxer) is None:
            raise AudioError(UNSUPPORTED_FORMAT, "This file type is not supported.")
        stream = _decodable(container.streams.audio[0])
        declared = _declared_duration(container, stream)
        mixdown = _Mixdown(sample_rate)
        for frame in _decoded_frames(container, stream):
            collected.take(mixdown.push(frame))
        collected.take(mixdown.flush())
    if demuxer == "wav":
        declared = _wav_declared_duration(source) or declared
    _check_complete(decoded_seconds=collected.total / sample_rate, declared=declared)
    return collected.samples()


class _Collected:
    """The decoded samples so far, within the limits: past ``max_seconds`` of audio
    or ``timeout`` seconds of wall time, ``take`` raises."""

    def __init__(self, *, max_seconds: float, timeout: float, rate: int) -> None:
        self.max_seconds = max_seconds
        self.max_samples = int(max_seconds * rate)
        self.timeout = timeout
        self.started = time.monotonic()
        self.chunks: list[np.ndarray] = []
        self.total = 0

    def take(self, frames: Any) -> None:
        for frame in frames:
            samples = frame.to_ndarray().reshape(-1)
            self.chunks.append(samples)
            self.total += samples.shape[0]
        if self.total > self.max_samples:
            raise AudioError(
                TOO_LONG,
                f"This audio is longer than the limit of {_hms(self.max_seconds)}. "
                "Split it into shorter files.",
            )
        if time.monotonic() - self.started > self.timeout:
            raise AudioError(
                DECODE_TIMEOUT,
                f"Decoding took longer than {self.timeout:.0f} s; the file may be "
                "damaged or unusually encoded.",
            )

    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks) if len(self.chunks) > 1 else self.chunks[0]


def _decoded_frames(container: Any, stream: Any) -> Iterator[Any]:
    """The stream's decoded frames. A container that cannot be read further is
    corrupt; a packet that does not decode is skipped, up to MAX_BAD_PACKETS."""
    packets = container.demux(stream)
    bad_packets = 0
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            raise _corrupt(exc) from exc
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            bad_packets += 1
            if bad_packets > MAX_BAD_PACKETS:
                raise AudioError(
                    CORRUPT_AUDIO,
                    "This audio is damaged: too many parts of it cannot be decoded.",
                ) from None
            continue
        yield from frames


def _check_complete(*, decoded_seconds: float, declared: float | None) -> None:
    """Refuse audio with no samples, or cut short of the length it declares."""
    if decoded_seconds == 0:
        if declared:
            raise AudioError(
                CORRUPT_AUDIO,
                f"This file declares {declared:.1f} s of audio but none of it can be "
                "decoded: it is damaged.",
            )
        raise AudioError(EMPTY_AUDIO, "This file holds no audio samples.")
    if declared is not None and declared > 0:
        shortfall = declared - decoded_seconds
        if shortfall > max(
            TRUNCATION_TOLERANCE_SECONDS, declared * TRUNCATION_TOLERANCE_RATIO
        ):
            raise AudioError(
                CORRUPT_AUDIO,
                f"This file stops after {decoded_seconds:.1f} s of its declared "
                f"{declared:.1f} s: it looks truncated. Upload the whole file again.",
            )


class _Mixdown:
    """Decoded frames in, mono float32 at ``rate`` out, through FFmpeg's resampler.

    Frames go to the resampler in blocks of ``BLOCK`` samples, gathered in a FIFO:
    a WAV or FLAC demuxes into packets of a few thousand samples, and each call into
    the resampler's filter graph has a cost of its own (a short WAV decodes in ~5 %
    fewer instructions). A stream whose format, layout or rate changes midway
    (concatenated MP3s, a radio recording) gets a new FIFO and resampler from there.
    """

    BLOCK = 16_384

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.key: tuple[str, str, int] | None = None
        self.channels = self.in_rate = 0
        self.fifo: Any = None
        self.resampler: Any = None

    def push(self, frame: Any) -> list[Any]:
        out: list[Any] = []
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self.key:
            out.extend(self.flush())
            self.key = key
            self.channels, self.in_rate = frame.layout.nb_channels, frame.sample_rate
            self.fifo = av.AudioFifo()
            self.resampler = av.AudioResampler(
                format="flt", layout="mono", rate=self.rate
            )
        # Timestamps of a damaged stream confuse the FIFO's and resampler's clocks.
        frame.pts = None
        self.fifo.write(frame)
        while self.fifo.samples >= self.BLOCK:
            out.extend(self._resample(self.fifo.read(self.BLOCK)))
        return out

    def flush(self) -> list[Any]:
        """What is still held: the FIFO's rest and the resampler's tail."""
        if self.fifo is None:
            return []
        out = self._resample(self.fifo.read()) if self.fifo.samples else []
        out.extend(self._resample(None))
        self.key = self.fifo = self.resampler = None
        return out

    def _resample(self, frame: Any) -> list[Any]:
        try:
            return list(self.resampler.resample(frame))
        except av.error.FFmpegError as exc:
            # e.g. 9 or 32 channels in no layout FFmpeg can mix down.
            raise AudioError(
                UNSUPPORTED_FORMAT,
                f"This audio ({self.channels} channels, {self.in_rate} Hz) cannot "
                f"be mixed down to mono ({exc.strerror}). Send mono or stereo audio.",
            ) from exc


def _wav_declared_duration(source: Source) -> float | None:
    """The length a PCM WAV header declares, where it declares one.

    FFmpeg drops a data size that runs past the end of the file and estimates the
    length from the file size instead, which hides a cut-off upload; the standard
    library's reader reports what the header says.
    """
    try:
        if not isinstance(source, str | Path):
            source.seek(0)
        with wave.open(str(source) if isinstance(source, Path) else source) as reader:  # type: ignore[arg-type]
            frames = reader.getnframes()
            rate = reader.getframerate()
            data_bytes = frames * reader.getnchannels() * reader.getsampwidth()
    except (wave.Error, EOFError, OSError):
        return None  # not plain PCM (float, extensible): FFmpeg's figure stands
    if data_bytes >= WAV_UNKNOWN_LENGTH:
        return None
    return frames / rate


def _corrupt(exc: av.error.FFmpegError) -> AudioError:
    # Not str(exc): it names the file's path on this machine.
    return AudioError(
        CORRUPT_AUDIO, f"This audio is damaged and cannot be decoded ({exc.strerror})."
    )


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"
