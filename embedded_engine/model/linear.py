"""Linear layers that, on CPU, multiply through oneDNN with weights packed once in its blocked layout.

``F.linear`` re-reads a row-major weight for every call; oneDNN's matmul on a weight reordered ahead
of time (what vLLM's CPU backend does with ``onednn_mm``) runs the engine's skinny matmuls (a few to
a few hundred rows against a large weight) 1.2-1.8x faster in float32 (see docs/performance.md).
The packed copy is made on first use and made again when the weight changes (its storage or its
version counter: load weights with ``param.copy_`` under ``torch.no_grad``, not through ``.data``).
Elsewhere (GPU, other dtypes, a PyTorch without oneDNN) it is plain ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PACK_ROWS = 32  # the batch size oneDNN is told to expect when packing (vLLM uses the same hint)


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_ONEDNN = onednn_available()


class PackedWeight:
    """A weight's oneDNN-packed copy, kept in step with the weight."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.packed: torch.Tensor | None = None

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if not _ONEDNN or weight.device.type != "cpu" or weight.dtype != torch.float32 or x.dtype != weight.dtype:
            return F.linear(x, weight, bias)
        key = (weight.data_ptr(), weight._version, tuple(weight.shape))
        if key != self.key:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS)
            self.key = key
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, bias, "none", [], "")


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) multiplied through :class:`PackedWeight`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pack = PackedWeight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pack.linear(x, self.weight, self.bias)
