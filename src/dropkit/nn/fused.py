"""Fused modules: several elementwise steps of a block in one pass over memory."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from dropkit import functional as F
from dropkit.functional.fused import ACTIVATIONS

__all__ = ["BiasDropoutAdd"]


class BiasDropoutAdd(nn.Module):
    """``residual + dropout(act(x + bias), p)``, one Triton kernel each way on CUDA.

    Megatron-LM's fused bias-dropout-add (Shoeybi et al., 2019) on dropkit's
    Philox mask (dropout: Srivastava et al., 2014): the mask equals
    ``dropkit.functional.dropout(act(x + bias), p, seed=seed)``, backward
    regenerates it and nothing per element is saved for it. Use it after a
    bias-free projection of a transformer block (attention output, MLP down
    projection), handing it the projection's bias and the residual stream.

    Shape: ``x`` and ``residual`` ``(*, H)``, ``bias`` ``(H,)``; output like ``x``.

    Example::

        >>> block = dropkit.BiasDropoutAdd(0.1, activation="gelu")
        >>> proj = torch.nn.Linear(64, 64, bias=False)
        >>> y = block(proj(h), proj_bias, h)   # training: residual + dropout(gelu(.))
    """

    def __init__(
        self, p: float = 0.5, *, activation: Optional[str] = None, seed: Optional[int] = None
    ) -> None:
        super().__init__()
        self.p = F.validate_p(p)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation has to be one of {ACTIVATIONS}, but got {activation!r}")
        self.activation = activation
        self.seed = seed

    def forward(self, x: Tensor, bias: Tensor, residual: Tensor) -> Tensor:
        return F.bias_dropout_add(
            x, bias, residual, self.p, self.training, activation=self.activation, seed=self.seed
        )

    def extra_repr(self) -> str:
        extra = f"p={self.p}"
        if self.activation is not None:
            extra += f", activation={self.activation!r}"
        return extra
