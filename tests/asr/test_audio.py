"""asr.audio on real files: every format we accept decodes, every bad file is refused
with the code that says what is wrong with it. No processes, no Django."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from asr import audio
from tests import audio_files
from tests.audio_files import BAD_FILES
from tests.audio_files import FORMATS
from tests.audio_files import BadFile
from tests.audio_files import Format
from tests.speech import espeak_available

LIMIT = audio_files.DURATION_LIMIT_SECONDS

# What probe() reports for each good format: the extension we store it under, and
# FFmpeg's decoder.
PROBED = {
    "wav": (".wav", "pcm_s16le"),
    "wav_stereo_44k": (".wav", "pcm_s16le"),
    "flac": (".flac", "flac"),
    "mp3": (".mp3", "mp3float"),
    "ogg_opus": (".ogg", "opus"),
    "ogg_vorbis": (".ogg", "vorbis"),
    "m4a_aac": (".m4a", "aac"),
    "webm_opus": (".webm", "opus"),
    "mp4_video_aac": (".m4a", "aac"),
}


def decode(source: audio.Source, *, timeout: float = 30) -> np.ndarray:
    return audio.decode(source, max_seconds=LIMIT, timeout=timeout)


def refusal(call) -> audio.AudioError:
    with pytest.raises(audio.AudioError) as caught:
        call()
    return caught.value


def dominant_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * audio.SAMPLE_RATE / len(samples))


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    if not espeak_available():
        pytest.skip("espeak-ng is installed by `make test`")
    return audio_files.speech(
        "Speech recognition turns spoken words into written text.",
        tmp_path_factory.mktemp("speech"),
    )


# Good files ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_every_accepted_format_decodes_to_16k_mono_float32(
    fmt: Format, spoken: np.ndarray, tmp_path: Path
) -> None:
    # given speech encoded in this format
    path = audio_files.write(spoken, tmp_path / f"speech{fmt.suffix}", fmt)

    # when it is probed (by path, and by content as an upload held in memory)
    info = audio.probe(path)
    assert audio.probe(io.BytesIO(path.read_bytes())) == info

    # then the container and codec are recognised, and the header length is right
    assert (info.extension, info.codec) == PROBED[fmt.name]
    expected = len(spoken) / audio.SAMPLE_RATE
    assert info.duration_hint == pytest.approx(expected, abs=0.1)

    # and it decodes to mono float32 16 kHz of the same length and loudness
    samples = decode(path)
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert np.isfinite(samples).all()
    assert len(samples) / audio.SAMPLE_RATE == pytest.approx(expected, abs=0.1)
    assert rms(samples) == pytest.approx(rms(spoken), rel=0.25)

    # and the container is the one FFmpeg's own probe finds in these bytes
    with av.open(io.BytesIO(path.read_bytes())) as container:
        assert info.format_name == container.format.name

    # and the worker, told the format the upload's probe found, decodes the same
    told = audio.decode(
        path, max_seconds=LIMIT, timeout=30, format_name=info.format_name
    )
    np.testing.assert_array_equal(told, samples)


def test_audio_under_the_wrong_name_is_recognised_by_its_content(
    tmp_path: Path,
) -> None:
    mp3 = audio_files.write(audio_files.sine(2), tmp_path / "a.mp3", FORMATS["mp3"])
    misnamed = tmp_path / "recording.wav"
    misnamed.write_bytes(mp3.read_bytes())

    info = audio.probe(misnamed)
    assert (info.format_name, info.extension) == ("mp3", ".mp3")
    assert len(decode(misnamed)) / audio.SAMPLE_RATE == pytest.approx(2, abs=0.1)


def test_a_stream_whose_rate_and_channels_change_midway_decodes_in_full(
    tmp_path: Path,
) -> None:
    # MP3s joined end to end (as a recorder appending to a file, or `cat`, makes
    # them) decode to frames whose rate and layout change where they meet.
    parts = [
        (FORMATS["mp3"], audio_files.sine(1.5)),
        (
            Format("mp3_stereo_44k", ".mp3", "mp3", "libmp3lame", 44_100, "stereo"),
            audio_files.sine(2, frequency=880),
        ),
    ]
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(
        b"".join(
            audio_files.write(samples, tmp_path / f"part{i}.mp3", fmt).read_bytes()
            for i, (fmt, samples) in enumerate(parts)
        )
    )

    samples = decode(joined)

    # every part is there, at 16 kHz (MP3 pads each part by a frame or so)
    assert len(samples) / audio.SAMPLE_RATE == pytest.approx(3.5, abs=0.15)
    # each part at its own pitch: the resampler after the change runs at the new rate
    first, second = samples[: audio.SAMPLE_RATE], samples[-audio.SAMPLE_RATE :]
    assert dominant_frequency(first) == pytest.approx(440, abs=5)
    assert dominant_frequency(second) == pytest.approx(880, abs=5)


def test_a_format_name_that_the_content_does_not_fit_is_refused(
    tmp_path: Path,
) -> None:
    mp3 = audio_files.write(audio_files.sine(1), tmp_path / "a.mp3", FORMATS["mp3"])
    for name in ("flac", "ogg", "mov,mp4,m4a,3gp,3g2,mj2"):
        error = refusal(
            lambda name=name: audio.decode(
                mp3, max_seconds=LIMIT, timeout=30, format_name=name
            )
        )
        assert error.code in (
            audio.UNSUPPORTED_FORMAT,
            audio.CORRUPT_AUDIO,
            audio.EMPTY_AUDIO,
        ), name
        assert str(tmp_path) not in error.message


@pytest.mark.parametrize(
    "head",
    [
        b"RIFF\x24\x08\x00\x00WAVE",
        b"fLaC",
        b"OggS",
        b"\x1aE\xdf\xa3",
        b"\x00\x00\x00\x18ftypmp42",
    ],
    ids=["wav", "flac", "ogg", "matroska", "mp4"],
)
def test_random_bytes_behind_a_containers_magic_are_refused_with_a_code(
    head: bytes,
) -> None:
    # The first bytes choose the demuxer (FFmpeg's probe is skipped for them); what
    # follows must still be a container that demuxer can read.
    data = head + np.random.default_rng(7).bytes(16 * 1024)
    for call in (
        lambda: audio.probe(io.BytesIO(data)),
        lambda: audio.decode(io.BytesIO(data), max_seconds=LIMIT, timeout=30),
    ):
        assert refusal(call).code in (
            audio.UNSUPPORTED_FORMAT,
            audio.NO_AUDIO_STREAM,
            audio.CORRUPT_AUDIO,
            audio.EMPTY_AUDIO,
        )


def test_a_wav_of_unknown_length_decodes_to_its_end(tmp_path: Path) -> None:
    # A recorder writing to a pipe cannot go back to fill in the data size: the
    # header says 0xFFFFFFFF, which is "unknown", not "truncated".
    path = audio_files.wav_of_unknown_length(tmp_path / "stream.wav", seconds=2)
    assert len(decode(path)) / audio.SAMPLE_RATE == pytest.approx(2, abs=0.01)


def test_an_ogg_cut_mid_stream_decodes_the_pages_it_has(tmp_path: Path) -> None:
    # Ogg states no total length (its duration is read from the last page), so a
    # cut-off Ogg is a shorter Ogg. Known limit, not a failure.
    path = audio_files.truncated(tmp_path / "cut.ogg", FORMATS["ogg_opus"])
    seconds = len(decode(path)) / audio.SAMPLE_RATE
    assert 0.5 < seconds < 2.0  # of 3 s
    assert audio.probe(path).duration_hint == pytest.approx(seconds, abs=0.1)


# Bad files ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_FILES, ids=[bad.id for bad in BAD_FILES])
def test_bad_file_is_refused_with_the_code_that_names_the_problem(
    bad: BadFile, tmp_path: Path
) -> None:
    path = bad.build(tmp_path / bad.filename)

    # decoding (the worker) refuses it with its code and a message for a person
    error = refusal(lambda: decode(path))
    assert error.code == bad.code, error.message
    assert error.message
    # that never names where the file lies on this machine
    assert str(tmp_path) not in error.message

    # probing (the upload) either lets it through to the decoder or refuses it
    # with the same code, by path and by content alike
    for source in (path, io.BytesIO(path.read_bytes())):
        try:
            audio.probe(source)
        except audio.AudioError as probe_error:
            assert probe_error.code == bad.code, probe_error.message
            assert str(tmp_path) not in probe_error.message


def test_long_audio_is_stopped_at_the_limit_while_decoding(tmp_path: Path) -> None:
    # The WebM states no duration, so only the decoded samples show how long it is.
    path = audio_files.long_opus(tmp_path / "long.webm", container="webm")
    assert audio.probe(path).duration_hint is None
    assert refusal(lambda: decode(path)).code == audio.TOO_LONG
    # with room for it, the same file decodes in full
    samples = audio.decode(path, max_seconds=2 * audio_files.LONG_SECONDS, timeout=30)
    assert len(samples) / audio.SAMPLE_RATE == pytest.approx(
        audio_files.LONG_SECONDS, abs=0.1
    )


@pytest.mark.parametrize("timeout", [0.0, 0.001])
def test_decoding_past_its_time_budget_is_stopped(
    timeout: float, tmp_path: Path
) -> None:
    path = audio_files.long_opus(tmp_path / "long.ogg")
    error = refusal(lambda: audio.decode(path, max_seconds=10 * LIMIT, timeout=timeout))
    assert error.code == audio.DECODE_TIMEOUT


def test_an_empty_file_is_no_audio_to_the_decoder(tmp_path: Path) -> None:
    # An empty upload never gets here: the service answers empty_audio first.
    path = audio_files.empty_file(tmp_path / "empty.wav")
    assert refusal(lambda: audio.probe(path)).code == audio.UNSUPPORTED_FORMAT
    assert refusal(lambda: decode(path)).code == audio.UNSUPPORTED_FORMAT


def test_an_m4a_cut_before_its_index_is_not_recognised_as_audio(
    tmp_path: Path,
) -> None:
    # MP4 writers put the index (moov) at the end unless asked for "fast start";
    # without it FFmpeg cannot tell the file from any other bytes.
    path = audio_files.truncated(tmp_path / "cut.m4a", FORMATS["m4a_aac"])
    assert refusal(lambda: audio.probe(path)).code == audio.UNSUPPORTED_FORMAT


def test_random_bytes_named_flac_are_not_audio_by_content(tmp_path: Path) -> None:
    data = audio_files.random_bytes(tmp_path / "noise.flac").read_bytes()
    error = refusal(lambda: audio.probe(io.BytesIO(data)))
    assert error.code == audio.UNSUPPORTED_FORMAT


def test_random_bytes_named_flac_are_not_audio_by_path(tmp_path: Path) -> None:
    path = audio_files.random_bytes(tmp_path / "noise.flac")
    assert refusal(lambda: audio.probe(path)).code == audio.UNSUPPORTED_FORMAT
