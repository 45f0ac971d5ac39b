"""Data parallelism inside ``Learner.step``: which micro-batches a rank trains, one all-reduce.

When ``torch.distributed`` is initialised with more than one rank (``LearnerGroup`` does it,
one rank per Ray actor), every rank gets the WHOLE batch, builds the same sorted
micro-batches and whole-batch normalisers, and runs forward/backward only on micro-batches
``index % world_size == rank``. The loss of every micro-batch is already divided by
whole-batch counts, so summing the ranks' accumulated gradients gives exactly the
one-process gradient (up to float summation order); ``all_reduce_step`` does that sum, and
sums the metric parts and the per-row values, in ONE collective over one flat buffer. Every
rank then clips, checks and steps identically, so the weights stay equal without a
broadcast.

Without an initialised process group of two or more ranks ``current()`` is None and the
learner runs exactly as in one process (nothing here is called).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Ranks", "all_reduce_step", "current"]


@dataclass(frozen=True)
class Ranks:
    """This process's place among the learner ranks (torch.distributed's default group)."""

    rank: int
    world_size: int

    def owns(self, index: int) -> bool:
        """Whether this rank runs forward/backward on micro-batch ``index`` (round-robin)."""
        return index % self.world_size == self.rank


def current() -> Ranks | None:
    """The learner ranks this process belongs to, or None when it trains alone (no
    ``torch.distributed``, no process group, or a group of one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world_size = dist.get_world_size()
    if world_size <= 1:
        return None
    return Ranks(rank=dist.get_rank(), world_size=world_size)


def all_reduce_step(
    params: Sequence[torch.nn.Parameter],
    sums: Mapping[str, torch.Tensor],
    names: Sequence[str],
    rows: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sum gradients, metric parts and per-row values over all ranks, in one all-reduce.

    Args:
        params: The optimiser's parameters, in the same order on every rank. After the call
            each ``p.grad`` is the sum over ranks (a view into the reduced buffer); a
            parameter no rank gave a gradient keeps ``grad = None``, so AdamW skips it
            exactly as in one process (a zero gradient would still decay its moments).
        sums: This rank's metric parts (0-dim tensors); a name in ``names`` it lacks (a rank
            that trained no micro-batch) counts as 0.
        names: Every part name any rank may hold, the same on every rank.
        rows: (len(batch),) float per-row values in the learner's sorted order; zeros at the
            rows of micro-batches other ranks trained.

    Returns:
        ``(sums, rows)`` summed over ranks: float32 on ``rows``' device, identical on every
        rank (so every rank takes the same skip-or-step decision).
    """
    unknown = sorted(set(sums) - set(names))
    if unknown:
        raise ValueError(f"all_reduce_step: metric parts {unknown} are not in names {names}")
    device = rows.device
    # Per-parameter flags (1 = this rank has a gradient) travel with the gradients, so the
    # reduced flags tell every rank which parameters ANY rank gave a gradient.
    flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    pieces = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params
    ]
    scalars = [
        sums[name].detach().float().reshape(1)
        if name in sums
        else torch.zeros(1, dtype=torch.float32, device=device)
        for name in names
    ]
    buffer = torch.cat(
        [*(x.to(device) for x in pieces), flags.to(device), *scalars, rows.float().to(device)]
    )
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)

    offset = sum(p.numel() for p in params)
    any_grad = buffer[offset : offset + len(params)].tolist()  # one sync, small
    start = 0
    for p, flag in zip(params, any_grad, strict=True):
        size = p.numel()
        if flag > 0:
            p.grad = buffer[start : start + size].view_as(p).to(p.dtype)
        start += size
    offset += len(params)
    reduced = {name: buffer[offset + i] for i, name in enumerate(names)}
    offset += len(names)
    return reduced, buffer[offset:]
