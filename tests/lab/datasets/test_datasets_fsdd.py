"""FSDD wav reader, official split, and the torch-only log-mel front end."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from dropkit.lab.datasets import DataFormatError, DatasetNotFoundError, fsdd, load_fsdd
from dropkit.lab.datasets.fsdd import (
    fix_frames,
    hz_to_mel,
    list_recordings,
    log_mel_spectrogram,
    mel_centres,
    mel_filterbank,
    mel_to_hz,
    official_split,
    parse_name,
    read_wav,
)
from tests.conftest import require_shared


@pytest.fixture(autouse=True)
def _isolated_data_env(tmp_path_factory, monkeypatch):
    """Keep the user's real cache and $DROPKIT_DATA out of every test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.delenv("DROPKIT_DATA", raising=False)


RATE = 8000


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE, width: int = 2) -> Path:
    """``samples`` float in [-1, 1), shape (frames,) or (frames, channels)."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    if width == 1:
        raw = np.clip(np.round(frames * 128 + 128), 0, 255).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.round(frames * 2**23).astype("<i4")
        raw = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        scale = 2 ** (8 * width - 1)
        ints = np.clip(np.round(frames * scale), -scale, scale - 1)
        raw = ints.astype("<i2" if width == 2 else "<i4").tobytes()
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(frames.shape[1])
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(raw)
    return path


def tone(freq: float, seconds: float, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


# --------------------------------------------------------------------------- wav reading


@pytest.mark.parametrize("width, step", [(1, 1 / 128), (2, 2.0**-15), (3, 2.0**-23), (4, 2.0**-31)])
def test_read_wav_scales_every_pcm_width(tmp_path, width, step):
    samples = tone(440, 0.05)
    waveform, rate = read_wav(write_wav(tmp_path / "a.wav", samples, width=width))
    assert rate == RATE and waveform.shape == (1, samples.size)
    assert waveform.dtype == torch.float32
    # Quantisation error is at most half a step; float32 adds ~6e-8 relative.
    assert np.abs(waveform[0].numpy() - samples).max() <= step / 2 + 1e-6


def test_read_wav_keeps_channels(tmp_path):
    stereo = np.stack([tone(300, 0.02), -tone(300, 0.02)], axis=1)
    waveform, _ = read_wav(write_wav(tmp_path / "s.wav", stereo))
    assert waveform.shape == (2, stereo.shape[0])
    assert torch.allclose(waveform[0], -waveform[1], atol=2**-15)


def test_read_wav_rejects_bad_files(tmp_path):
    not_wav = tmp_path / "notes.wav"
    not_wav.write_text("not audio")
    with pytest.raises(DataFormatError, match=r"notes.wav \(9 bytes\) is not a readable PCM wav"):
        read_wav(not_wav)
    empty = write_wav(tmp_path / "empty.wav", np.zeros((0, 1)))
    with pytest.raises(DataFormatError, match="empty.wav has no samples"):
        read_wav(empty)
    full = write_wav(tmp_path / "cut.wav", tone(300, 0.1))
    full.write_bytes(full.read_bytes()[:-100])  # header still claims 800 frames
    with pytest.raises(DataFormatError, match="cut.wav is truncated: header says 800 frames"):
        read_wav(full)


# --------------------------------------------------------------------------- names and split


def test_parse_name_and_bad_names():
    record = parse_name("/x/7_jackson_32.wav")
    assert (record.digit, record.speaker, record.take) == (7, "jackson", 32)
    for bad in ("7_jackson.wav", "x_jackson_1.wav", "12_jackson_1.wav", "7_jackson_1.mp3"):
        with pytest.raises(ValueError, match=f"'{bad}' is not an FSDD recording name"):
            parse_name(bad)


def make_fsdd(folder: Path, speakers=("alice", "bob"), takes=range(7), rate: int = RATE) -> Path:
    """Digit d is a 0.3 s tone at 400 + 300 d Hz, so labels are recoverable from features."""
    folder.mkdir(parents=True, exist_ok=True)
    for speaker in speakers:
        for digit in range(10):
            for take in takes:
                samples = tone(400 + 300 * digit, 0.3 + 0.01 * take, rate)
                write_wav(folder / f"{digit}_{speaker}_{take}.wav", samples, rate)
    return folder


def test_official_split_uses_takes_0_to_4_as_test(tmp_path):
    make_fsdd(tmp_path / "recordings", speakers=("alice",), takes=range(7))
    recordings = list_recordings(tmp_path)
    assert len(recordings) == 70
    train, test = official_split(recordings)
    assert {r.take for r in test} == {0, 1, 2, 3, 4} and len(test) == 50
    assert {r.take for r in train} == {5, 6} and len(train) == 20


def test_list_recordings_errors_name_folders_and_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        list_recordings(tmp_path)
    assert f"    {tmp_path / 'recordings'}\n" in str(info.value)
    assert "Jakobovski/free-spoken-digit-dataset" in str(info.value)
    write_wav(tmp_path / "hello.wav", tone(300, 0.1))
    with pytest.raises(ValueError, match="'hello.wav' is not an FSDD recording name"):
        list_recordings(tmp_path)


# --------------------------------------------------------------------------- mel front end


def test_htk_mel_scale():
    hz = torch.tensor([0.0, 700.0, 1000.0, 4000.0], dtype=torch.float64)
    mel = hz_to_mel(hz)
    # 2595 log10(2) = 781.17 at 700 Hz; 1000 Hz is ~1000 mel by construction of the scale.
    assert mel[0] == 0 and abs(float(mel[1]) - 2595 * math.log10(2)) < 1e-9
    assert abs(float(mel[2]) - 1000.0) < 0.1
    assert torch.allclose(mel_to_hz(mel), hz)


def test_filterbank_triangles_peak_at_centres_and_sum_to_one():
    n_fft, n_mels = 512, 20
    bank = mel_filterbank(n_mels, n_fft, RATE)
    assert bank.shape == (n_mels, n_fft // 2 + 1) and bank.dtype == torch.float32
    assert bank.min() >= 0 and bank.max() <= 1
    freqs = torch.linspace(0, RATE / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_centres(n_mels, RATE)
    # Each filter peaks at one of the two FFT bins around its centre (15.6 Hz apart).
    spacing = RATE / n_fft
    peak_freqs = freqs[bank.argmax(dim=1)]
    assert torch.all((peak_freqs - edges[1:-1]).abs() < spacing)
    # Adjacent triangles overlap so that they sum to 1 between the first and last centre.
    inside = (freqs >= edges[1]) & (freqs <= edges[-2])
    assert torch.allclose(bank[:, inside].sum(dim=0), torch.ones(int(inside.sum())), atol=1e-6)
    assert torch.all(bank[:, freqs > edges[-1]] == 0)


def test_filterbank_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_mels=128 is too many for n_fft=64"):
        mel_filterbank(128, 64, RATE)
    with pytest.raises(ValueError, match="f_max <= sample_rate / 2 = 4000.0, but got .*f_max=5000"):
        mel_filterbank(40, 256, RATE, f_max=5000)
    with pytest.raises(ValueError, match="n_mels has to be a positive int, but got 0"):
        mel_filterbank(0, 256, RATE)


@pytest.mark.parametrize("band", [8, 15, 25, 35])
def test_pure_tone_energy_lands_in_the_mel_band_centred_on_it(band):
    freq = float(mel_centres(40, RATE)[band + 1])
    spectrogram = log_mel_spectrogram(torch.tensor(tone(freq, 0.5), dtype=torch.float32), RATE)
    assert spectrogram.shape == (40, 1 + 4000 // 80)
    middle = spectrogram[:, 5:-5]  # frames whose window lies fully inside the tone
    assert torch.all(middle.argmax(dim=0) == band)


def test_power_spectrogram_matches_a_hand_computed_frame():
    rng = np.random.default_rng(1)
    signal = rng.standard_normal(2000).astype(np.float32)
    n_fft, win, hop, n_mels = 256, 200, 80, 40
    spectrogram = log_mel_spectrogram(
        torch.from_numpy(signal), RATE, n_fft=n_fft, win_length=win, hop_length=hop
    )
    # torch.stft centres the win-length Hann window in n_fft and zero-pads the signal.
    window = np.zeros(n_fft)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    window[(n_fft - win) // 2 : (n_fft - win) // 2 + win] = hann
    padded = np.pad(signal.astype(np.float64), n_fft // 2)
    bank = mel_filterbank(n_mels, n_fft, RATE).double().numpy()
    for frame in (0, 7, 24):
        chunk = padded[frame * hop : frame * hop + n_fft] * window
        power = np.abs(np.fft.rfft(chunk)) ** 2
        expected = np.log(np.maximum(bank @ power, 1e-10))
        np.testing.assert_allclose(spectrogram[:, frame].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_log_mel_of_silence_is_log_floor_and_batches_broadcast():
    silence = torch.zeros(3, 800)
    spectrogram = log_mel_spectrogram(silence, RATE, floor=1e-8)
    assert spectrogram.shape == (3, 40, 11)
    assert torch.allclose(spectrogram, torch.full_like(spectrogram, math.log(1e-8)))
    with pytest.raises(ValueError, match="win_length=300 has to be at most n_fft=256"):
        log_mel_spectrogram(silence, RATE, win_length=300)
    with pytest.raises(TypeError, match="waveform has to be a floating-point tensor"):
        log_mel_spectrogram(torch.zeros(10, dtype=torch.int16), RATE)


def test_fix_frames_crops_and_pads():
    x = torch.arange(10.0).view(1, 10)
    assert fix_frames(x, 4, -1.0).tolist() == [[3.0, 4.0, 5.0, 6.0]]
    assert fix_frames(x, 4, -1.0, align="start").tolist() == [[0.0, 1.0, 2.0, 3.0]]
    padded = fix_frames(x[:, :3], 6, -1.0)
    assert padded.tolist() == [[-1.0, 0.0, 1.0, 2.0, -1.0, -1.0]]
    assert fix_frames(x[:, :3], 5, -1.0, align="start").tolist() == [[0, 1, 2, -1, -1]]
    with pytest.raises(ValueError, match="align has to be 'start' or 'center', but got 'end'"):
        fix_frames(x, 4, 0.0, align="end")


def test_batched_features_equal_per_file_features():
    waveforms = [
        torch.tensor(tone(500 + 100 * i, 0.05 * (i + 1)), dtype=torch.float32) for i in range(5)
    ]
    options = dict(n_fft=256, win_length=200, hop_length=80, n_mels=40, floor=1e-10)
    batched = fsdd._log_mel_many(waveforms, RATE, chunk=2, **options)
    for waveform, features in zip(waveforms, batched, strict=True):
        single = log_mel_spectrogram(waveform, RATE, **options)
        assert features.shape == single.shape
        assert torch.allclose(features, single, atol=1e-4)


# --------------------------------------------------------------------------- load_fsdd


def test_load_fsdd_features_labels_and_split(tmp_path):
    make_fsdd(tmp_path / "fsdd" / "recordings")
    train = load_fsdd(tmp_path, "train", n_frames=32)
    test = load_fsdd(tmp_path, "test", n_frames=32)
    assert train.features.shape == (40, 40, 32) and len(test) == 100
    assert train.labels.tolist().count(3) == 4 and set(train.speakers) == {"alice", "bob"}
    # Each digit is a different tone: its loudest mel band rises with the digit.
    loudest = test.features.mean(dim=2).argmax(dim=1)
    per_digit = [int(loudest[test.labels == d].float().mean()) for d in range(10)]
    assert per_digit == sorted(per_digit) and len(set(per_digit)) == 10
    only_bob = load_fsdd(tmp_path, "all", n_frames=32, speakers=["bob"])
    assert len(only_bob) == 70 and set(only_bob.speakers) == {"bob"}
    assert "FSDD all (70 recordings, speakers ['bob'])" in only_bob.description


def test_load_fsdd_errors(tmp_path):
    folder = make_fsdd(tmp_path / "recordings", speakers=("alice",), takes=range(5, 6))
    with pytest.raises(ValueError, match=r"unknown speaker\(s\) \['carol'\]"):
        load_fsdd(tmp_path, speakers=["carol"])
    with pytest.raises(DatasetNotFoundError, match="FSDD split 'test' is empty"):
        load_fsdd(tmp_path, "test")
    with pytest.raises(ValueError, match="split has to be 'train', 'test' or 'all'"):
        load_fsdd(tmp_path, "dev")
    write_wav(folder / "0_alice_7.wav", tone(300, 0.2, 16000), 16000)
    with pytest.raises(DataFormatError, match="0_alice_7.wav is sampled at 16000 Hz; expected"):
        load_fsdd(tmp_path)


def test_status(tmp_path):
    present, message = fsdd.status(tmp_path)
    assert not present and "no {digit}_{speaker}_{take}.wav files" in message
    make_fsdd(tmp_path / "recordings", speakers=("alice",))
    present, message = fsdd.status(tmp_path)
    assert present and "70 recordings (20 train, 50 test; 1 speakers; every file reads)" in message
    # A truncated recording: before, status only listed the names and said "present".
    victim = sorted((tmp_path / "recordings").glob("*.wav"))[3]
    victim.write_bytes(victim.read_bytes()[:-100])
    present, message = fsdd.status(tmp_path)
    assert not present and message.startswith("FSDD: damaged: ")
    assert victim.name in message and "truncated" in message


def test_shared_fsdd_counts_and_test_split():
    recordings_dir = require_shared("fsdd", "recordings")
    present, message = fsdd.status(recordings_dir.parent.parent)
    assert present and "3000 recordings (2700 train, 300 test; 6 speakers; every file" in message
    test = load_fsdd(recordings_dir, "test")
    assert test.features.shape == (300, 40, 100)
    assert torch.bincount(test.labels).tolist() == [30] * 10
    assert len(set(test.speakers)) == 6
    assert torch.isfinite(test.features).all()
    assert test.features.max() > 0  # speech is louder than the floor
