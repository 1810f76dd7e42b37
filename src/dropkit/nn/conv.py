"""DropBlock and DropPath modules: thin wrappers over :mod:`dropkit.functional.conv`.

Element-wise dropout barely regularises a CNN: neighbouring activations are
correlated. DropBlock drops contiguous squares (cubes) of each feature map;
DropPath drops a whole residual branch for a sample. See the functional ops
for the papers and the arguments; ``seed`` makes the masks a reproducible
stream (:mod:`dropkit.nn.base`).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from dropkit import functional as F
from dropkit.functional.checks import validate_p
from dropkit.functional.conv import BlockSize, block_sizes
from dropkit.nn.base import SeedStream

__all__ = ["DropBlock2d", "DropBlock3d", "DropPath"]


class _DropBlockNd(SeedStream, nn.Module):
    _spatial = 2

    def __init__(
        self,
        p: float = 0.1,
        block_size: BlockSize = 7,
        inplace: bool = False,
        *,
        batchwise: bool = False,
        share_channels: bool = False,
        scale_by_keep: bool = True,
        clip_blocks: bool = False,
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        super().__init__()
        self.p = validate_p(p)
        self.block_size = block_sizes(block_size, self._spatial, type(self).__name__)
        self.clip_blocks = clip_blocks
        self.inplace = inplace
        self.batchwise = batchwise
        self.share_channels = share_channels
        self.scale_by_keep = scale_by_keep
        self._init_stream(seed, fixed_mask, persist_stream)

    def extra_repr(self) -> str:
        block = self.block_size[0] if len(set(self.block_size)) == 1 else self.block_size
        extra = f"p={self.p}, block_size={block}"
        for name in ("inplace", "batchwise", "share_channels", "clip_blocks"):
            if getattr(self, name):
                extra += f", {name}=True"
        if not self.scale_by_keep:
            extra += ", scale_by_keep=False"
        return extra

    def forward(self, input: Tensor) -> Tensor:
        op = F.drop_block2d if self._spatial == 2 else F.drop_block3d
        return op(
            input,
            self.p,
            self.block_size,
            self.training,
            inplace=self.inplace,
            batchwise=self.batchwise,
            share_channels=self.share_channels,
            scale_by_keep=self.scale_by_keep,
            clip_blocks=self.clip_blocks,
            seed=self.seed,
            offset=self._next_offset() if self.training else 0,
        )


class DropBlock2d(_DropBlockNd):
    """DropBlock for ``(N, C, H, W)`` feature maps (Ghiasi et al., 2018).

    Use after convolutional stages of a CNN; ``p`` is usually ramped from 0 to
    its final value (0.05-0.2) during training by assigning ``module.p``.
    See :func:`drop_block2d` for the arguments.

    Shape: ``(N, C, H, W)`` or ``(C, H, W)``; output has the input's shape.

    Example::

        >>> block = dropkit.DropBlock2d(p=0.1, block_size=5)
        >>> y = block(torch.randn(8, 64, 14, 14))
    """

    _spatial = 2


class DropBlock3d(_DropBlockNd):
    """DropBlock for ``(N, C, D, H, W)`` volumes (3-D CNNs, video).

    See :func:`drop_block3d`. Shape: ``(N, C, D, H, W)`` or ``(C, D, H, W)``.

    Example::

        >>> block = dropkit.DropBlock3d(p=0.1, block_size=(3, 5, 5))
        >>> y = block(torch.randn(2, 16, 8, 28, 28))
    """

    _spatial = 3


class DropPath(SeedStream, nn.Module):
    """Stochastic depth: drop a residual branch per sample (Huang et al., 2016).

    Wrap the residual branch of ResNet/ViT blocks: ``x + self.drop_path(f(x))``.
    See :func:`drop_path` for the arguments.

    Shape: ``(N, ...)``; output has the input's shape.

    Example::

        >>> drop = dropkit.DropPath(p=0.1)
        >>> out = x + drop(mlp(x))
    """

    def __init__(
        self,
        p: float = 0.1,
        *,
        scale_by_keep: bool = True,
        batchwise: bool = False,
        inplace: bool = False,
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        super().__init__()
        self.p = validate_p(p)
        self.scale_by_keep = scale_by_keep
        self.batchwise = batchwise
        self.inplace = inplace
        self._init_stream(seed, fixed_mask, persist_stream)

    def extra_repr(self) -> str:
        extra = f"p={self.p}"
        if not self.scale_by_keep:
            extra += ", scale_by_keep=False"
        if self.batchwise:
            extra += ", batchwise=True"
        if self.inplace:
            extra += ", inplace=True"
        return extra

    def forward(self, input: Tensor) -> Tensor:
        return F.drop_path(
            input,
            self.p,
            self.training,
            self.scale_by_keep,
            batchwise=self.batchwise,
            inplace=self.inplace,
            seed=self.seed,
            offset=self._next_offset() if self.training else 0,
        )
