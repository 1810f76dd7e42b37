"""Free Spoken Digit Dataset (FSDD) reader and torch-only log-mel features.

FSDD (Jackson et al., 2018, "Jakobovski/free-spoken-digit-dataset", Zenodo
doi:10.5281/zenodo.1342401) holds 8 kHz mono recordings named
``{digit}_{speaker}_{index}.wav``. Its README fixes the split: takes 0-4 of every
(speaker, digit) are the test set, 5-49 the training set.

Features are log-mel spectrograms (Davis and Mermelstein, 1980, "Comparison of
parametric representations for monosyllabic word recognition in continuously
spoken sentences", the mel filterbank; HTK's mel formula
``mel = 2595 log10(1 + f / 700)``), computed with :func:`torch.stft` and a
triangular filterbank built here, so no audio library is needed. Each recording
becomes ``(n_mels, frames)`` and is centre-cropped or padded with the silence
value to a fixed number of frames so a CNN can batch it.

Example::

    train = load_fsdd("../shared/data", split="train")
    train.features.shape     # (2700, 40, 100): 40 mel bands x 100 frames of 10 ms
    train.labels[:5]         # digits 0..9
"""

from __future__ import annotations

import math
import re
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch import Tensor

from dropkit.lab.datasets._common import (
    DataFormatError,
    DatasetNotFoundError,
    PathLike,
    once_per_version,
    search_dirs,
)

__all__ = [
    "FsddSet",
    "Recording",
    "read_wav",
    "parse_name",
    "list_recordings",
    "official_split",
    "hz_to_mel",
    "mel_to_hz",
    "mel_centres",
    "mel_filterbank",
    "log_mel_spectrogram",
    "fix_frames",
    "load_fsdd",
    "status",
    "TEST_TAKES",
]

#: Takes 0..4 of each (speaker, digit) are the official test set.
TEST_TAKES = range(0, 5)

_NAME = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>[^_/\\]+)_(?P<take>[0-9]+)\.wav$")
_SUBFOLDERS = (
    "recordings",
    "fsdd/recordings",
    "fsdd",
    "free-spoken-digit-dataset/recordings",
)
_HOWTO = (
    "clone https://github.com/Jakobovski/free-spoken-digit-dataset and pass its "
    "recordings/ folder (or a folder holding it) as data_dir, or set $DROPKIT_DATA"
)

Split = Literal["train", "test", "all"]
Align = Literal["start", "center"]


@dataclass(frozen=True)
class Recording:
    """One FSDD file: what its name says about it."""

    path: Path
    digit: int
    speaker: str
    take: int


@dataclass(frozen=True)
class FsddSet:
    """Fixed-size log-mel features of a set of recordings.

    ``features``: ``float32 (N, n_mels, n_frames)``; ``labels``: ``int64 (N,)`` digits;
    ``speakers`` and ``recordings`` are aligned with the rows.
    """

    features: Tensor
    labels: Tensor
    speakers: tuple[str, ...]
    recordings: tuple[Recording, ...]
    description: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def read_wav(path: PathLike) -> tuple[Tensor, int]:
    """Read a PCM wav file with the standard library: ``(float32 (channels, samples), rate)``.

    Samples are scaled to ``[-1, 1)``. 8-bit (unsigned), 16-, 24- and 32-bit
    (signed) PCM are supported; anything else raises :class:`DataFormatError`
    naming the file.
    """
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as handle:
            channels = handle.getnchannels()
            width = handle.getsampwidth()
            rate = handle.getframerate()
            n_frames = handle.getnframes()
            raw = handle.readframes(n_frames)
    except (wave.Error, EOFError) as exc:
        raise DataFormatError(
            f"{path} ({path.stat().st_size} bytes) is not a readable PCM wav file ({exc})"
        ) from exc
    if len(raw) != n_frames * channels * width:
        raise DataFormatError(
            f"{path} is truncated: header says {n_frames} frames of {channels}x{width} bytes "
            f"({n_frames * channels * width} bytes), data has {len(raw)} bytes"
        )
    if n_frames == 0:
        raise DataFormatError(f"{path} has no samples")
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width in (2, 4):
        dtype = "<i2" if width == 2 else "<i4"
        scale = float(1 << (8 * width - 1))
        samples = np.frombuffer(raw, dtype=dtype).astype(np.float32) / scale
    elif width == 3:
        # Sign-extend little-endian 24-bit samples by placing them in the top bytes of int32.
        bytes3 = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        padded = np.zeros((bytes3.shape[0], 4), dtype=np.uint8)
        padded[:, 1:] = bytes3
        samples = padded.view("<i4").reshape(-1).astype(np.float32) / float(1 << 31)
    else:
        raise DataFormatError(f"{path} has {8 * width}-bit samples; supported are 8, 16, 24, 32")
    waveform = torch.from_numpy(samples.reshape(n_frames, channels).T.copy())
    return waveform, rate


def parse_name(path: PathLike) -> Recording:
    """Parse ``{digit}_{speaker}_{take}.wav``; raises DataFormatError (a ValueError) naming a
    non-conforming file."""
    path = Path(path)
    match = _NAME.match(path.name)
    if match is None:
        raise DataFormatError(
            f"{path.name!r} is not an FSDD recording name; expected '{{digit}}_{{speaker}}_"
            f"{{take}}.wav', e.g. '7_jackson_32.wav'"
        )
    return Recording(path, int(match["digit"]), match["speaker"], int(match["take"]))


def _recordings_in(directory: Path) -> list[Recording]:
    if not directory.is_dir():
        return []
    return [parse_name(p) for p in sorted(directory.glob("*.wav"))]


def list_recordings(data_dir: Optional[PathLike] = None) -> list[Recording]:
    """All recordings of the first searched folder that holds ``*.wav`` files, sorted by name.

    Raises :class:`DatasetNotFoundError` listing the folders looked in when none has any.
    """
    dirs = search_dirs("fsdd", data_dir, _SUBFOLDERS)
    for directory in dirs:
        found = _recordings_in(directory)
        if found:
            return found
    looked = "\n".join(f"    {d}" for d in dirs)
    raise DatasetNotFoundError(
        f"Free Spoken Digit Dataset: no {{digit}}_{{speaker}}_{{take}}.wav files found.\n"
        f"  Looked in:\n{looked}\n  {_HOWTO}."
    )


def official_split(recordings: Sequence[Recording]) -> tuple[list[Recording], list[Recording]]:
    """``(train, test)`` per the FSDD README: takes 0-4 test, the rest (5-49) train."""
    train = [r for r in recordings if r.take not in TEST_TAKES]
    test = [r for r in recordings if r.take in TEST_TAKES]
    return train, test


def hz_to_mel(hz: Tensor) -> Tensor:
    """HTK mel scale: ``2595 * log10(1 + hz / 700)``."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (torch.pow(10.0, mel / 2595.0) - 1.0)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} has to be a positive int, but got {value!r}")
    return value


def mel_centres(
    n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: Optional[float] = None
) -> Tensor:
    """The ``n_mels + 2`` filter edge/centre frequencies in Hz (float64), equally spaced in mel."""
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    mels = torch.linspace(
        float(hz_to_mel(torch.tensor(float(f_min), dtype=torch.float64))),
        float(hz_to_mel(torch.tensor(f_max, dtype=torch.float64))),
        n_mels + 2,
        dtype=torch.float64,
    )
    return mel_to_hz(mels)


def mel_filterbank(
    n_mels: int,
    n_fft: int,
    sample_rate: int,
    f_min: float = 0.0,
    f_max: Optional[float] = None,
) -> Tensor:
    """Triangular mel filterbank, ``float32 (n_mels, n_fft // 2 + 1)``.

    Filter ``k`` rises linearly from edge ``k`` to its peak of 1 at centre ``k + 1``
    and falls to 0 at edge ``k + 2`` of :func:`mel_centres` (HTK style, no area
    normalisation), so adjacent filters sum to 1 between the first and last centre.
    Raises ValueError when a filter would be narrower than the FFT's bin spacing
    and so catch no bin (too many mels for ``n_fft``).
    """
    _positive_int(n_mels, "n_mels")
    _positive_int(n_fft, "n_fft")
    _positive_int(sample_rate, "sample_rate")
    nyquist = sample_rate / 2.0
    top = nyquist if f_max is None else f_max
    if not 0.0 <= f_min < top <= nyquist:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2 = {nyquist}, but got "
            f"f_min={f_min}, f_max={f_max}"
        )
    edges = mel_centres(n_mels, sample_rate, f_min, top)
    freqs = torch.linspace(0.0, nyquist, n_fft // 2 + 1, dtype=torch.float64)
    widths = edges[1:] - edges[:-1]
    offsets = edges[None, :] - freqs[:, None]  # (bins, n_mels + 2)
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    bank = torch.clamp(torch.minimum(rising, falling), min=0.0).T
    empty = torch.nonzero(bank.max(dim=1).values <= 0).flatten()
    if empty.numel():
        raise ValueError(
            f"n_mels={n_mels} is too many for n_fft={n_fft} at {sample_rate} Hz: filter(s) "
            f"{empty.tolist()[:5]} fall between FFT bins ({sample_rate / n_fft:.1f} Hz apart); "
            f"use fewer mels or a larger n_fft"
        )
    return bank.to(torch.float32)


def log_mel_spectrogram(
    waveform: Tensor,
    sample_rate: int,
    *,
    n_fft: int = 256,
    win_length: Optional[int] = 200,
    hop_length: int = 80,
    n_mels: int = 40,
    f_min: float = 0.0,
    f_max: Optional[float] = None,
    floor: float = 1e-10,
) -> Tensor:
    """Natural-log mel power spectrogram of ``waveform (..., samples)``: ``(..., n_mels, frames)``.

    Hann-windowed :func:`torch.stft` with ``center=True`` and zero padding, so
    ``frames = 1 + samples // hop_length`` and frame ``t`` is centred on sample
    ``t * hop_length``. Power is ``|STFT|^2``; ``floor`` keeps the log finite on
    digital silence (``log(floor)`` is the silence value). The defaults are 32 ms
    FFTs over 25 ms windows every 10 ms at 8 kHz, a usual speech front end.
    """
    if not isinstance(waveform, Tensor) or not waveform.is_floating_point():
        raise TypeError(f"waveform has to be a floating-point tensor, but got {waveform!r:.80}")
    if waveform.dim() == 0 or waveform.shape[-1] == 0:
        raise ValueError(
            f"waveform has to have samples on its last dim, but has shape {tuple(waveform.shape)}"
        )
    _positive_int(hop_length, "hop_length")
    win_length = n_fft if win_length is None else _positive_int(win_length, "win_length")
    if win_length > n_fft:
        raise ValueError(f"win_length={win_length} has to be at most n_fft={n_fft}")
    if not floor > 0:
        raise ValueError(f"floor has to be > 0 (it is taken the log of), but got {floor}")
    bank = mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max).to(waveform.device)
    batch_shape = waveform.shape[:-1]
    flat = waveform.reshape(-1, waveform.shape[-1]).to(torch.float32)
    window = torch.hann_window(win_length, periodic=True, device=waveform.device)
    spectrum = torch.stft(
        flat,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = spectrum.real.square() + spectrum.imag.square()  # (batch, bins, frames)
    mel = torch.matmul(bank, power)
    return torch.log(mel.clamp_min(floor)).reshape(*batch_shape, n_mels, mel.shape[-1])


def fix_frames(
    features: Tensor, n_frames: int, pad_value: float, align: Align = "center"
) -> Tensor:
    """Crop or pad the last dim of ``features`` to ``n_frames``.

    ``align="center"`` keeps the middle of long inputs and centres short ones
    (FSDD files are trimmed to the spoken word, so its middle is the word);
    ``"start"`` keeps the beginning and pads at the end.
    """
    _positive_int(n_frames, "n_frames")
    if align not in ("start", "center"):
        raise ValueError(f"align has to be 'start' or 'center', but got {align!r}")
    length = features.shape[-1]
    if length >= n_frames:
        start = (length - n_frames) // 2 if align == "center" else 0
        return features[..., start : start + n_frames]
    before = (n_frames - length) // 2 if align == "center" else 0
    out = features.new_full((*features.shape[:-1], n_frames), pad_value)
    out[..., before : before + length] = features
    return out


def _log_mel_many(
    waveforms: Sequence[Tensor], sample_rate: int, chunk: int = 256, **options: object
) -> list[Tensor]:
    """:func:`log_mel_spectrogram` of each 1-D waveform, computed in padded batches.

    One STFT per chunk instead of per file: a few thousand tiny torch calls cost far
    more in dispatch and thread-pool wake-ups than the arithmetic. Zero padding is
    exact here: with ``center=True`` and zero ``pad_mode``, frame ``t`` of a signal
    only sees zeros past its end either way, so the first ``1 + len // hop`` frames
    of the padded signal equal the unpadded signal's frames.
    """
    hop_length = int(options["hop_length"])
    # Sorting by length keeps the padding inside each chunk small.
    order = sorted(range(len(waveforms)), key=lambda i: waveforms[i].shape[-1])
    out: list[Optional[Tensor]] = [None] * len(waveforms)
    for begin in range(0, len(order), chunk):
        members = order[begin : begin + chunk]
        longest = max(waveforms[i].shape[-1] for i in members)
        batch = torch.zeros(len(members), longest)
        for row, i in enumerate(members):
            batch[row, : waveforms[i].shape[-1]] = waveforms[i]
        spectra = log_mel_spectrogram(batch, sample_rate, **options)
        for row, i in enumerate(members):
            out[i] = spectra[row, :, : 1 + waveforms[i].shape[-1] // hop_length].clone()
    return out  # type: ignore[return-value]


def load_fsdd(
    data_dir: Optional[PathLike] = None,
    split: Split = "train",
    *,
    n_mels: int = 40,
    n_frames: int = 100,
    n_fft: int = 256,
    win_length: int = 200,
    hop_length: int = 80,
    sample_rate: int = 8000,
    align: Align = "center",
    speakers: Optional[Sequence[str]] = None,
) -> FsddSet:
    """Log-mel features and digit labels of one FSDD split.

    ``split``: "train" (takes 5-49, 2700 files), "test" (takes 0-4, 300 files) or
    "all". ``n_frames=100`` is one second at the default 10 ms hop, longer than
    99 % of the recordings (max 2.28 s, mean 0.44 s). ``speakers`` keeps only
    those speakers (e.g. for speaker-held-out experiments). Every file must be
    mono-compatible PCM at ``sample_rate`` (there is no resampler; a file at
    another rate is an error naming it).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split has to be 'train', 'test' or 'all', but got {split!r}")
    _positive_int(n_frames, "n_frames")
    recordings = list_recordings(data_dir)
    train, test = official_split(recordings)
    chosen = {"train": train, "test": test, "all": recordings}[split]
    if speakers is not None:
        known = sorted({r.speaker for r in recordings})
        unknown = sorted(set(speakers) - set(known))
        if unknown:
            raise ValueError(f"unknown speaker(s) {unknown}; the recordings have {known}")
        chosen = [r for r in chosen if r.speaker in set(speakers)]
    if not chosen:
        raise DatasetNotFoundError(
            f"FSDD split {split!r} is empty in {recordings[0].path.parent} "
            f"({len(recordings)} recordings, takes {TEST_TAKES.start}-{TEST_TAKES.stop - 1} "
            f"are test)"
        )
    floor = 1e-10
    waveforms = []
    for record in chosen:
        waveform, rate = read_wav(record.path)
        if rate != sample_rate:
            raise DataFormatError(
                f"{record.path} is sampled at {rate} Hz; expected {sample_rate} Hz "
                f"(pass sample_rate={rate} if the whole set uses it)"
            )
        waveforms.append(waveform[0] if waveform.shape[0] == 1 else waveform.mean(dim=0))
    spectrograms = _log_mel_many(
        waveforms,
        sample_rate,
        n_fft=n_fft,
        win_length=win_length,
        hop_length=hop_length,
        n_mels=n_mels,
        floor=floor,
    )
    silence = math.log(floor)
    features = [fix_frames(s, n_frames, silence, align) for s in spectrograms]
    description = (
        f"FSDD {split} ({len(chosen)} recordings"
        + (f", speakers {sorted(set(speakers))}" if speakers is not None else "")
        + f") from {chosen[0].path.parent}; log-mel {n_mels} bands, {n_frames} frames "
        f"of {1000 * hop_length / sample_rate:g} ms"
    )
    return FsddSet(
        features=torch.stack(features),
        labels=torch.tensor([r.digit for r in chosen], dtype=torch.long),
        speakers=tuple(r.speaker for r in chosen),
        recordings=tuple(chosen),
        description=description,
    )


def status(data_dir: Optional[PathLike] = None) -> tuple[bool, str]:
    """Whether FSDD recordings are found locally and every one reads, with counts per split.

    Each wav is read as the loader reads it (header, sample width, data length), so
    a truncated or damaged file makes ``present`` False and the message names it.
    """
    try:
        recordings = list_recordings(data_dir)
    except (DatasetNotFoundError, TypeError, ValueError) as exc:
        return False, str(exc).replace("\n", " ")
    damaged = once_per_version("fsdd", [r.path for r in recordings],
                               lambda: _first_unreadable(recordings))
    if damaged is not None:
        return False, f"FSDD: damaged: {damaged}"
    train, test = official_split(recordings)
    speakers = sorted({r.speaker for r in recordings})
    return True, (
        f"FSDD: {len(recordings)} recordings ({len(train)} train, {len(test)} test; "
        f"{len(speakers)} speakers; every file reads) in {recordings[0].path.parent}"
    )


def _first_unreadable(recordings: Sequence[Recording]) -> Optional[str]:
    for recording in recordings:
        try:
            read_wav(recording.path)
        except DataFormatError as exc:
            return str(exc)
    return None
