"""dropkit.distributed: per-rank and shared streams, DDP, activation checkpointing.

Independence checks compare two boolean masks drawn with keep probability 1/2:
if independent, the number of positions where they agree is Binomial(n, 1/2),
so it lies within 6 standard deviations (6 * sqrt(n) / 2) of n / 2 except with
probability < 2e-9. Identical masks agree on all n positions and fail the check.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.checkpoint import checkpoint

import dropkit
from dropkit.distributed import RNGTracker, exit_rank, get_rng_tracker, per_rank_seed
from dropkit.random import draw_seed, fold_seed

REPO_ROOT = Path(__file__).resolve().parents[1]

MASK_SIZE = 4096


def _assert_independent(a: torch.Tensor, b: torch.Tensor) -> None:
    n = a.numel()
    agree = int((a == b).sum())
    bound = 6 * math.sqrt(n) / 2
    assert abs(agree - n / 2) <= bound, (
        f"masks agree on {agree} of {n} positions; independent masks agree on "
        f"{n / 2:.0f} +- {bound:.0f}"
    )


def _mask(numel: int = MASK_SIZE) -> torch.Tensor:
    return dropkit.functional.dropout(torch.ones(numel), 0.5) != 0


# ------------------------------------------------------------------ tracker, one process


def test_fork_follows_the_documented_derivation():
    tracker = RNGTracker()
    tracker.add("tp", 3, 1)
    torch.manual_seed(11)
    with tracker.fork("tp"):
        got = dropkit.functional.dropout(torch.ones(256), 0.5)

    # Re-derive by hand from the module docstring, on private generators.
    name_key = int.from_bytes(hashlib.blake2b(b"tp", digest_size=8).digest(), "little")
    base = draw_seed(torch.Generator().manual_seed(11))
    stream_seed = fold_seed(base, fold_seed(name_key, 3, 1))
    assert tracker.stream_seed("tp", base) == stream_seed
    op_seed = draw_seed(torch.Generator().manual_seed(stream_seed))
    expected = dropkit.functional.dropout(torch.ones(256), 0.5, seed=op_seed)
    assert torch.equal(got, expected)


def test_scalar_fold_matches_the_reference_bit_for_bit():
    from dropkit.distributed import _fold_seed_scalar

    generator = torch.Generator().manual_seed(0)
    words = torch.randint(0, 2**62, (200, 2), generator=generator).tolist()
    edges = [(0, 0), (2**64 - 1, 2**64 - 1), (2**32 - 1, 2**32), (1, 2**63)]
    for seed, value in edges + [(a * 4 + 3, b * 4 + 1) for a, b in words]:
        assert _fold_seed_scalar(seed, value) == fold_seed(seed, value), (seed, value)


def test_fork_costs_one_draw_and_restores_the_generator():
    tracker = RNGTracker()
    tracker.add("s", 0)
    torch.manual_seed(5)
    draw_seed()
    after_one_draw = torch.get_rng_state()

    torch.manual_seed(5)
    with tracker.fork("s"):
        torch.rand(1000)
    assert torch.equal(torch.get_rng_state(), after_one_draw)

    torch.manual_seed(5)
    with pytest.raises(ZeroDivisionError), tracker.fork("s"):
        torch.rand(10)
        raise ZeroDivisionError
    assert torch.equal(torch.get_rng_state(), after_one_draw)


def test_same_keys_agree_and_different_keys_are_independent():
    first, second = RNGTracker(), RNGTracker()
    for tracker in (first, second):
        tracker.add("rank0", 0)
        tracker.add("rank1", 1)
    masks = {}
    for label, tracker, name in (("a0", first, "rank0"), ("b0", second, "rank0"),
                                 ("a1", first, "rank1")):
        torch.manual_seed(3)
        with tracker.fork(name):
            masks[label] = _mask()
    assert torch.equal(masks["a0"], masks["b0"])
    _assert_independent(masks["a0"], masks["a1"])


def test_name_alone_separates_streams():
    tracker = RNGTracker()
    tracker.add("attention")
    tracker.add("hidden")
    torch.manual_seed(0)
    with tracker.fork("attention"):
        attention = _mask()
    torch.manual_seed(0)
    with tracker.fork("hidden"):
        hidden = _mask()
    _assert_independent(attention, hidden)


def test_successive_forks_draw_fresh_masks():
    tracker = RNGTracker()
    tracker.add("s", 9)
    torch.manual_seed(0)
    with tracker.fork("s"):
        step0 = _mask()
    with tracker.fork("s"):
        step1 = _mask()
    _assert_independent(step0, step1)


def test_nested_fork_derives_from_the_enclosing_stream():
    tracker = RNGTracker()
    tracker.add("outer", 1)
    tracker.add("inner", 2)
    torch.manual_seed(4)
    with tracker.fork("outer"):
        with tracker.fork("inner"):
            nested = _mask()
    torch.manual_seed(4)
    base = draw_seed()
    generator = torch.Generator().manual_seed(tracker.stream_seed("outer", base))
    inner_seed = tracker.stream_seed("inner", draw_seed(generator))
    op_seed = draw_seed(torch.Generator().manual_seed(inner_seed))
    expected = dropkit.functional.dropout(torch.ones(MASK_SIZE), 0.5, seed=op_seed) != 0
    assert torch.equal(nested, expected)


def test_fork_also_steers_torch_dropout_and_works_as_decorator():
    tracker = RNGTracker()
    tracker.add("a", 0)
    tracker.add("b", 1)

    @tracker.fork("a")
    def torch_mask_a():
        return torch.nn.functional.dropout(torch.ones(MASK_SIZE), 0.5) != 0

    torch.manual_seed(2)
    first = torch_mask_a()
    torch.manual_seed(2)
    assert torch.equal(torch_mask_a(), first)
    torch.manual_seed(2)
    with tracker.fork("b"):
        other = torch.nn.functional.dropout(torch.ones(MASK_SIZE), 0.5) != 0
    _assert_independent(first, other)


def test_fork_around_a_compiled_module_matches_eager():
    tracker = RNGTracker()
    tracker.add("a", 0)
    tracker.add("b", 1)
    layer = dropkit.Dropout(0.5)
    compiled = torch.compile(layer, fullgraph=True)

    def mask(name, module):
        torch.manual_seed(3)
        with tracker.fork(name):
            return module(torch.ones(MASK_SIZE)) != 0

    eager_a = mask("a", layer)
    assert torch.equal(mask("a", compiled), eager_a)
    _assert_independent(mask("b", compiled), eager_a)


def test_explicit_seed_bypasses_the_fork():
    # Documented: modules built with seed= ignore forks; per_rank_seed is the remedy.
    tracker = RNGTracker()
    tracker.add("a", 0)
    tracker.add("b", 1)
    # Two layers at the same position of the stream of seed 123 (a seeded module
    # draws call k's mask from (123, k), whatever fork it runs in).
    layer, twin = dropkit.Dropout(0.5, seed=123), dropkit.Dropout(0.5, seed=123)
    with tracker.fork("a"):
        in_a = layer(torch.ones(64))
    with tracker.fork("b"):
        in_b = twin(torch.ones(64))
    assert torch.equal(in_a, in_b)


def test_registry_bookkeeping():
    tracker = RNGTracker()
    tracker.add("x", 1)
    tracker.add("y")
    assert tracker.names == ("x", "y")
    assert "x" in tracker and "z" not in tracker
    tracker.remove("x")
    assert tracker.names == ("y",)
    assert get_rng_tracker() is get_rng_tracker()
    assert isinstance(get_rng_tracker(), RNGTracker)


@pytest.mark.parametrize(
    ("name", "keys", "error", "message"),
    [
        ("", (), ValueError, "stream name has to be a non-empty str, but got ''"),
        (7, (), ValueError, "stream name has to be a non-empty str, but got 7"),
        ("s", (-1,), ValueError, r"stream key has to be an int in \[0, 2\*\*64\), but got -1"),
        ("s", (2**64,), ValueError, "but got 18446744073709551616"),
        ("s", (True,), ValueError, "but got True"),
        ("s", (1.0,), ValueError, "but got 1.0"),
    ],
)
def test_add_rejects_bad_names_and_keys(name, keys, error, message):
    with pytest.raises(error, match=message):
        RNGTracker().add(name, *keys)


def test_duplicate_and_unknown_streams_are_named():
    tracker = RNGTracker()
    tracker.add("data-parallel", 0)
    with pytest.raises(ValueError, match="stream 'data-parallel' is already registered"):
        tracker.add("data-parallel", 1)
    known = r"unknown stream 'tp'; registered streams: \['data-parallel'\]"
    with pytest.raises(KeyError, match=known):
        with tracker.fork("tp"):
            pass
    with pytest.raises(KeyError, match="unknown stream 'tp'"):
        tracker.remove("tp")


def test_group_streams_need_an_initialised_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        RNGTracker().add_per_rank("dp")
    with pytest.raises(RuntimeError, match="init_process_group"):
        RNGTracker().add_shared("tp")
    with pytest.raises(RuntimeError, match="init_process_group"):
        per_rank_seed(1)


# ------------------------------------------------------------------ activation checkpointing

# Every elementwise variant of the core: (factory, input shape). Append new variants here.
CHECKPOINT_VARIANTS = [
    pytest.param(lambda: dropkit.Dropout(0.5), (4, 16), id="Dropout"),
    pytest.param(lambda: dropkit.Dropout(0.5, inplace=True), (4, 16), id="Dropout-inplace"),
    pytest.param(lambda: dropkit.Dropout(0.5, mode="classic"), (4, 16), id="Dropout-classic"),
    pytest.param(lambda: dropkit.Dropout1d(0.5), (4, 16, 6), id="Dropout1d"),
    pytest.param(lambda: dropkit.Dropout2d(0.5), (4, 16, 3, 6), id="Dropout2d"),
    pytest.param(lambda: dropkit.Dropout3d(0.5), (2, 16, 2, 3, 6), id="Dropout3d"),
    pytest.param(lambda: dropkit.SpatialDropout(0.5), (4, 16, 6), id="SpatialDropout"),
    pytest.param(
        lambda: dropkit.SpatialDropout(0.5, channels_last=True), (4, 6, 16),
        id="SpatialDropout-channels_last",
    ),
    pytest.param(lambda: dropkit.AlphaDropout(0.5), (4, 16), id="AlphaDropout"),
    pytest.param(lambda: dropkit.FeatureAlphaDropout(0.5), (4, 16, 3, 6), id="FeatureAlphaDropout"),
]


def _block(factory, width: int) -> nn.Module:
    # Two dropout layers, so the recompute must also reproduce the order of draws.
    torch.manual_seed(100)
    return nn.Sequential(
        nn.Linear(width, width), factory(), nn.Linear(width, width), factory(),
        nn.Linear(width, width),
    )


def _forward_backward(block, shape, seed, *, checkpointed, use_reentrant=False, fork=None,
                      preserve_rng_state=True):
    """Output and gradients of one step; ``fork`` is None, "outside" or "inside" the checkpoint."""
    tracker = RNGTracker()
    tracker.add("stream", 7)
    for param in block.parameters():
        param.grad = None
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    weights = torch.randn(shape, generator=torch.Generator().manual_seed(2))

    def run(inp):
        if fork == "inside":
            with tracker.fork("stream"):
                return block(inp)
        return block(inp)

    torch.manual_seed(seed)
    with tracker.fork("stream") if fork == "outside" else contextlib.nullcontext():
        if checkpointed:
            out = checkpoint(run, x, use_reentrant=use_reentrant,
                             preserve_rng_state=preserve_rng_state)
        else:
            out = run(x)
    # Move the generator on before backward: a recompute that did not restore it
    # would draw different masks.
    torch.rand(100)
    (out * weights).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in block.parameters()]


@pytest.mark.parametrize("fork", [None, "outside", "inside"])
@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize(("factory", "shape"), CHECKPOINT_VARIANTS)
def test_checkpoint_recomputes_the_same_masks(factory, shape, use_reentrant, fork):
    block = _block(factory, shape[-1])
    plain = _forward_backward(block, shape, 21, checkpointed=False, fork=fork)
    recomputed = _forward_backward(
        block, shape, 21, checkpointed=True, use_reentrant=use_reentrant, fork=fork
    )
    for index, (a, b) in enumerate(zip(plain, recomputed, strict=True)):
        assert torch.equal(a, b), f"tensor {index} (0: output, 1: input grad, then params) differs"
    # The masks matter: another seed gives other gradients.
    other = _forward_backward(block, shape, 22, checkpointed=False, fork=fork)
    assert not torch.equal(plain[1], other[1])


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpoint_without_rng_restore_would_differ(use_reentrant):
    # Control: the equality above is not vacuous; without restoring the
    # generator the recompute draws other masks and the gradients change.
    block = _block(lambda: dropkit.Dropout(0.5), 16)
    plain = _forward_backward(block, (4, 16), 21, checkpointed=False)
    unrestored = _forward_backward(
        block, (4, 16), 21, checkpointed=True, use_reentrant=use_reentrant,
        preserve_rng_state=False,
    )
    assert torch.equal(plain[0], unrestored[0])
    # Non-reentrant checkpointing keeps the original autograd nodes (whose seeds
    # still give x.grad), but the weights' gradients use recomputed activations.
    assert any(not torch.equal(a, b) for a, b in zip(plain[1:], unrestored[1:], strict=True))


# ------------------------------------------------------------------ two gloo processes

SPAWN_TIMEOUT_S = 180
WORLD_SIZE = 2
DDP_STEPS = 3
RUN_SEED, OTHER_SEED = 17, 18


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(worker, *args) -> None:
    """Run ``worker(rank, port, *args)`` on ``WORLD_SIZE`` processes, with a deadline."""
    port = _free_port()
    context = mp.start_processes(
        worker, args=(port, *args), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{WORLD_SIZE} gloo workers did not finish in {SPAWN_TIMEOUT_S} s")


def _make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 64), nn.Sigmoid(), dropkit.Dropout(0.5), nn.Linear(64, 1))


def _train_ddp(rank: int, seed: int) -> dict:
    torch.manual_seed(seed)  # same on every rank: same init, generators in lockstep
    model = _make_model()
    masks = []

    def record(module, inputs, output):
        # Sigmoid outputs are > 0, so a zero after dropout marks a dropped unit.
        masks.append(output.detach() != 0)

    model[2].register_forward_hook(record)
    ddp = nn.parallel.DistributedDataParallel(model)
    tracker = RNGTracker()
    tracker.add_per_rank("data-parallel")
    optimiser = torch.optim.SGD(ddp.parameters(), lr=0.5)
    shard = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    params = []
    for _ in range(DDP_STEPS):
        x = torch.randn(32, 6, generator=shard)
        with tracker.fork("data-parallel"):
            loss = nn.functional.mse_loss(ddp(x), x.sum(dim=1, keepdim=True))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return {"masks": masks, "params": params}


def _group_masks(rank: int) -> dict:
    # Every rank must create every group, in the same order.
    singletons = [dist.new_group([r]) for r in range(WORLD_SIZE)]
    tracker = RNGTracker()
    tracker.add_shared("world-replicated")              # one mask for the 2-rank group
    tracker.add_shared("own-group", singletons[rank])   # disjoint groups: independent
    tracker.add_per_rank("world-sharded")
    torch.manual_seed(5)
    masks = {}
    for name in tracker.names:
        with tracker.fork(name):
            masks[name] = _mask()
    # A shared outer stream keeps a shared inner stream shared.
    with tracker.fork("world-replicated"), tracker.fork("world-replicated"):
        masks["nested"] = _mask()
    layer = dropkit.Dropout(0.5, seed=per_rank_seed(42))
    masks["per_rank_seed"] = layer(torch.ones(MASK_SIZE)) != 0
    result = {
        "masks": masks,
        "stream_seeds": {name: tracker.stream_seed(name, 0) for name in tracker.names},
        "non_member_error": "no error raised",
    }
    try:
        tracker.add_shared("not-mine", singletons[1 - rank])
    except RuntimeError as error:
        result["non_member_error"] = str(error)
    return result


def _worker(rank: int, port: int, seeds: list[int], out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)  # two workers on a 2-core machine
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        result = {seed: _train_ddp(rank, seed) for seed in seeds}
        result["groups"] = _group_masks(rank)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    exit_rank(0)  # the result is saved; a DDP rank must not finalize (see exit_rank)


@pytest.fixture(scope="module")
def gloo_runs(tmp_path_factory) -> tuple[list[dict], list[dict]]:
    """Two independent 2-process runs (fresh processes): seeds [17, 18], then [17] again."""
    runs = []
    for seeds in ([RUN_SEED, OTHER_SEED], [RUN_SEED]):
        out_dir = tmp_path_factory.mktemp("gloo")
        _spawn(_worker, seeds, str(out_dir))
        runs.append([torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)])
    return runs[0], runs[1]


def test_ddp_masks_differ_per_rank_and_replicas_stay_equal(gloo_runs):
    first, _ = gloo_runs
    rank0, rank1 = first[0][RUN_SEED], first[1][RUN_SEED]
    assert len(rank0["masks"]) == DDP_STEPS
    torch.manual_seed(RUN_SEED)
    start = torch.cat([p.detach().flatten() for p in _make_model().parameters()])
    for step in range(DDP_STEPS):
        _assert_independent(rank0["masks"][step], rank1["masks"][step])
        assert torch.equal(rank0["params"][step], rank1["params"][step]), (
            f"replicas differ after step {step}"
        )
        previous = start if step == 0 else rank0["params"][step - 1]
        assert not torch.equal(rank0["params"][step], previous), f"step {step} changed nothing"
    _assert_independent(rank0["masks"][0], rank0["masks"][1])


def test_ddp_masks_reproduce_from_the_seed(gloo_runs):
    first, second = gloo_runs
    for rank in range(WORLD_SIZE):
        again = second[rank][RUN_SEED]
        for step in range(DDP_STEPS):
            assert torch.equal(first[rank][RUN_SEED]["masks"][step], again["masks"][step])
            assert torch.equal(first[rank][RUN_SEED]["params"][step], again["params"][step])
        # The masks come from the seed: another seed, other masks.
        _assert_independent(first[rank][RUN_SEED]["masks"][0], first[rank][OTHER_SEED]["masks"][0])


def test_shared_streams_give_equal_masks_on_a_group(gloo_runs):
    first, second = gloo_runs
    rank0, rank1 = first[0]["groups"]["masks"], first[1]["groups"]["masks"]
    for name in ("world-replicated", "nested"):
        assert torch.equal(rank0[name], rank1[name]), name
    for name in ("own-group", "world-sharded", "per_rank_seed"):
        _assert_independent(rank0[name], rank1[name])
    _assert_independent(rank0["world-replicated"], rank0["world-sharded"])
    for rank in range(WORLD_SIZE):
        groups = first[rank]["groups"]
        assert f"(global rank {rank}) is not a member of the group" in groups["non_member_error"]
        for name, mask in groups["masks"].items():
            assert torch.equal(mask, second[rank]["groups"]["masks"][name]), name


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def test_group_stream_keys_follow_the_documented_formula(gloo_runs):
    first, _ = gloo_runs
    world, own = _digest("ranks:0,1"), [_digest("ranks:0"), _digest("ranks:1")]
    for rank in range(WORLD_SIZE):
        expected_keys = {
            "world-replicated": (world,),
            "own-group": (own[rank],),
            "world-sharded": (world, rank),
        }
        for name, keys in expected_keys.items():
            expected = fold_seed(0, fold_seed(_digest(name), *keys))
            assert first[rank]["groups"]["stream_seeds"][name] == expected, (rank, name)


def test_documented_torchrun_example(tmp_path):
    pytest.importorskip("sklearn", reason="the example trains on scikit-learn's digits")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO_ROOT / "examples" / "ddp_dropout.py"), "--epochs", "1", "--checkpoint",
    ]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=SPAWN_TIMEOUT_S
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "replicas bit-identical after 1 epochs: True" in result.stdout, result.stdout
    agreement = re.search(r"agree on ([\d.]+)% of (\d+) units", result.stdout)
    assert agreement, result.stdout
    fraction, units = float(agreement[1]) / 100, int(agreement[2])
    # Same 6-sigma binomial bound as _assert_independent, on the live units.
    assert abs(fraction - 0.5) <= 3 / math.sqrt(units) + 1e-4, result.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fork_steers_and_restores_the_cuda_generator():
    tracker = RNGTracker()
    tracker.add("a", 0)
    tracker.add("b", 1)
    ones = torch.ones(MASK_SIZE, device="cuda")

    def torch_cuda_mask(name):
        torch.manual_seed(8)
        before = torch.cuda.get_rng_state()
        with tracker.fork(name):
            mask = torch.nn.functional.dropout(ones, 0.5) != 0
        assert torch.equal(torch.cuda.get_rng_state(), before)
        return mask.cpu()

    first = torch_cuda_mask("a")
    assert torch.equal(torch_cuda_mask("a"), first)
    _assert_independent(first, torch_cuda_mask("b"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpoint_recomputes_the_same_masks_on_cuda(use_reentrant):
    block = _block(lambda: dropkit.Dropout(0.5), 16).cuda()
    torch.manual_seed(0)
    x = torch.randn(4, 16, device="cuda", requires_grad=True)
    tracker = RNGTracker()
    tracker.add("stream", 7)
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(21)
        x.grad = None
        with tracker.fork("stream"):
            out = checkpoint(block, x, use_reentrant=use_reentrant) if checkpointed else block(x)
        torch.rand(100, device="cuda")
        torch.rand(100)
        out.square().sum().backward()
        grads.append(x.grad.clone())
    assert torch.equal(grads[0], grads[1])
