"""Data-parallel training with dropkit dropout: own masks per rank, identical replicas.

Run on one machine with two CPU processes (gloo) or one process per GPU (nccl)::

    torchrun --standalone --nproc_per_node 2 examples/ddp_dropout.py
    torchrun --standalone --nproc_per_node 2 examples/ddp_dropout.py --checkpoint

On two machines, run on each (``--node_rank`` 0 and 1)::

    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 1 \\
        --rdzv_backend c10d --rdzv_endpoint HOST0:29500 examples/ddp_dropout.py

The script trains an MLP on scikit-learn's digits, sharded with
DistributedSampler, and prints how often the ranks' dropout masks agree at the
first step (about half the units for p = 0.5: independent masks) and whether
the replicas' parameters are bit-identical at the end.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import dropkit
from dropkit.distributed import RNGTracker, exit_rank


class _MLP(nn.Module):
    def __init__(self, p: float, use_checkpoint: bool) -> None:
        super().__init__()
        self.hidden = nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), dropkit.Dropout(p),
            nn.Linear(256, 256), nn.ReLU(), dropkit.Dropout(p),
        )
        self.head = nn.Linear(256, 10)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training:
            # The recompute in backward redraws the same masks: checkpoint restores
            # the generator that the tracker's fork has put on this rank's stream.
            return self.head(checkpoint(self.hidden, x, use_reentrant=False))
        return self.head(self.hidden(x))


def _agreement(first: torch.Tensor, second: torch.Tensor) -> tuple[float, int]:
    # Only units that ReLU passed on both ranks, so that only dropout's choice is compared.
    live = first[0] & second[0]
    return (first[1][live] == second[1][live]).float().mean().item(), int(live.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", action="store_true", help="activation checkpointing")
    args = parser.parse_args()

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))

    # The same seed on every rank: identical initial replicas, and torch's
    # generator advances in lockstep, which the tracker's streams build on.
    torch.manual_seed(args.seed)
    tracker = RNGTracker()
    tracker.add_per_rank("data-parallel")

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    split = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train = TensorDataset(x[split[:1400]], y[split[:1400]])
    x_test, y_test = x[split[1400:]].to(device), y[split[1400:]].to(device)
    sampler = DistributedSampler(train, seed=args.seed)
    loader = DataLoader(train, batch_size=64, sampler=sampler)

    model = _MLP(args.p, args.checkpoint).to(device)
    first_step = []

    def record_first_mask(module, inputs, output):
        if not first_step:
            # (input nonzero, output nonzero): where ReLU left a unit, dropout's choice shows.
            first_step.append(torch.stack((inputs[0] != 0, output != 0)))

    model.hidden[2].register_forward_hook(record_first_mask)
    ddp = DistributedDataParallel(model)
    optimiser = torch.optim.Adam(ddp.parameters(), lr=1e-3)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            with tracker.fork("data-parallel"):
                loss = nn.functional.cross_entropy(ddp(xb), yb)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    replicas = [torch.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(replicas, flat)
    masks = [torch.empty_like(first_step[0]) for _ in range(world_size)]
    dist.all_gather(masks, first_step[0])
    ddp.eval()
    with torch.no_grad():
        accuracy = (ddp(x_test).argmax(1) == y_test).float().mean().item()
    if rank == 0:
        agree, units = _agreement(masks[0], masks[1]) if world_size > 1 else (1.0, 0)
        identical = all(torch.equal(replicas[0], other) for other in replicas[1:])
        print(f"world size {world_size}, backend {dist.get_backend()}, "
              f"checkpointing {args.checkpoint}")
        print(f"first-step masks of ranks 0 and 1 agree on {agree:.2%} of {units} units")
        print(f"replicas bit-identical after {args.epochs} epochs: {identical}")
        print(f"parameter sum (compare runs): {flat.double().sum().item():.12f}")
        print(f"test accuracy: {accuracy:.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Not a plain return: torch's gloo threads can abort a process that trained a DDP
    # module while the interpreter shuts down (see dropkit.distributed.exit_rank).
    exit_rank(0)
