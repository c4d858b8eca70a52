"""Layer L4: 1-d average pooling at the aten level, as 2-d pooling of a height-1 image.

torch decomposes ``F.avg_pool1d`` / ``F.adaptive_avg_pool1d`` into their 2-d forms before the
dispatch table sees them (they are composite ops), so user calls already run on
``ops.pooling``; these entries serve code that calls the aten ops directly. Same cost and error
as the 2-d ops (a local sum and one division by the public window size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__: list[str] = []


def _one(value: Sequence[int] | int) -> int:
    return int(value if isinstance(value, int) else value[0])


@implements(aten.avg_pool1d.default)
def avg_pool1d(
    x: MPCTensor,
    kernel_size: Sequence[int],
    stride: Sequence[int] = (),
    padding: Sequence[int] = (0,),
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Any:
    k = _one(kernel_size)
    s = _one(stride) if stride else k
    out = aten.avg_pool2d.default(
        x.unsqueeze(-2), [1, k], [1, s], [0, _one(padding)], ceil_mode, count_include_pad
    )
    return out.squeeze(-2)


@implements(aten.adaptive_avg_pool1d.default)
def adaptive_avg_pool1d(x: MPCTensor, output_size: Sequence[int]) -> Any:
    out = aten._adaptive_avg_pool2d.default(x.unsqueeze(-2), [1, _one(output_size)])
    return out.squeeze(-2)
