"""The RNG contract: Philox4x32-10 known answers and the mask's pure-function property."""

import math

import pytest
import torch

from dropkit import random as dkr

# Random123's kat_vectors, "philox4x32 10" lines: counter[4], key[2] -> output[4].
KNOWN_ANSWERS = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    (
        [0xFFFFFFFF] * 4,
        [0xFFFFFFFF] * 2,
        [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD],
    ),
    (
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        [0xA4093822, 0x299F31D0],
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    ),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_matches_random123_known_answers(counter, key, expected):
    out = dkr.philox4x32(torch.tensor(counter), torch.tensor(key))
    assert out.tolist() == expected


def test_philox_batches_are_independent_of_batching():
    counters = torch.tensor([c for c, _, _ in KNOWN_ANSWERS])
    keys = torch.tensor([k for _, k, _ in KNOWN_ANSWERS])
    assert dkr.philox4x32(counters, keys).tolist() == [e for _, _, e in KNOWN_ANSWERS]


def test_philox_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"counter \(\.\.\., 4\)"):
        dkr.philox4x32(torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))


def test_lane_layout_follows_the_documented_contract():
    seed, offset = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    bits = dkr.random_bits16(20, seed, offset)
    for i in (0, 1, 7, 8, 13, 19):
        block = i // 8
        counter = torch.tensor(
            [block & 0xFFFFFFFF, block >> 32, offset & 0xFFFFFFFF, offset >> 32]
        )
        key = torch.tensor([seed & 0xFFFFFFFF, seed >> 32])
        word = dkr.philox4x32(counter, key)[(i % 8) // 2].item()
        assert bits[i].item() == (word >> (16 * (i % 2))) & 0xFFFF


def test_mask_element_depends_only_on_seed_offset_and_index():
    long = dkr.random_bits16(1000, seed=5, offset=3)
    short = dkr.random_bits16(37, seed=5, offset=3)
    assert torch.equal(long[:37], short)
    assert not torch.equal(dkr.random_bits16(37, seed=5, offset=4), short)
    assert not torch.equal(dkr.random_bits16(37, seed=6, offset=3), short)


def test_keep_threshold_quantises_to_16_bits():
    assert dkr.keep_threshold(0.5) == 32768
    assert dkr.keep_threshold(1.0) == 65536
    assert dkr.keep_threshold(0.0) == 0
    with pytest.raises(ValueError, match="got 1.5"):
        dkr.keep_threshold(1.5)
    with pytest.raises(ValueError, match="got nan"):
        dkr.keep_threshold(float("nan"))


def test_lanes_are_uniform_16_bit_values():
    bits = dkr.random_bits16(1 << 18, seed=11)
    assert bits.min() >= 0 and bits.max() < 1 << 16
    # Each of 16 equal bins expects n/16 values; a bin's count has binomial sd
    # sqrt(n * 1/16 * 15/16); allow 6 sd.
    n = bits.numel()
    counts = torch.bincount(bits >> 12, minlength=16).double()
    sd = math.sqrt(n * (1 / 16) * (15 / 16))
    assert (counts - n / 16).abs().max() < 6 * sd


def test_uniform_and_normal_moments():
    n = 200_000
    u = dkr.uniform((n,), seed=1, dtype=torch.float64)
    assert u.min() >= 0 and u.max() < 1
    # Mean of n uniforms has sd sqrt(1/12/n); allow 6 sd.
    assert abs(u.mean().item() - 0.5) < 6 * math.sqrt(1 / 12 / n)
    z = dkr.normal((n,), seed=2, dtype=torch.float64)
    assert abs(z.mean().item()) < 6 / math.sqrt(n)
    # Var of a sample variance of normals is 2/(n-1); allow 6 sd.
    assert abs(z.var().item() - 1) < 6 * math.sqrt(2 / (n - 1))
    assert dkr.normal((3, 5), seed=2).shape == (3, 5)


def test_seeds_are_validated():
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\), got -1"):
        dkr.random_bits16(4, seed=-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        dkr.random_bits16(4, seed=1.5)
    with pytest.raises(ValueError, match="offset"):
        dkr.random_bits16(4, seed=1, offset=1 << 64)


def test_draw_seed_follows_torch_manual_seed():
    torch.manual_seed(123)
    first = dkr.draw_seed()
    torch.manual_seed(123)
    assert dkr.draw_seed() == first
    assert dkr.draw_seed() != first


def test_fold_seed_is_deterministic_and_distinct():
    assert dkr.fold_seed(7, 0) == dkr.fold_seed(7, 0)
    assert len({dkr.fold_seed(7, rank) for rank in range(64)}) == 64
    assert dkr.fold_seed(7, 1, 2) != dkr.fold_seed(7, 2, 1)
    assert dkr.fold_seed(7) == 7
