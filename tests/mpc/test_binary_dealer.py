"""The dealer kinds added for comparisons (``cmp``, ``inject``, ``and_node``, ``b2a_words``):
the reconstructed material satisfies its defining relations, for both dealers and N = 2, 3."""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from typing import Any

import pytest
import torch

from crypten_lite.runtime.dealer import (
    CMP_L2_E,
    CMP_L2_G,
    CMP_L3_G,
    DealerRequest,
    and_node_products,
    node_subsets,
    unpack_bits,
)
from crypten_lite.runtime.party import Party

Run = Callable[..., list[Any]]
N = 128


def xor_all(ts: list[torch.Tensor]) -> torch.Tensor:
    return reduce(lambda a, b: a ^ b, ts)


def sum_all(ts: list[torch.Tensor]) -> torch.Tensor:
    return reduce(lambda a, b: a + b, ts)


def products(masks: torch.Tensor, monomials: tuple[int, ...]) -> torch.Tensor:
    """Reference: bit s = AND of the mask bits in subset s."""
    subsets = torch.tensor(node_subsets(monomials))
    bits = ((masks.unsqueeze(-1) & subsets) == subsets).long()
    return (bits << torch.arange(len(subsets))).sum(-1)


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_new_kinds_reconstruct(world_size: int, dealer: str, run_parties: Run) -> None:
    requests = [
        DealerRequest("cmp", {"n": N, "count": 2, "mul": True}),
        DealerRequest("inject", {"n": N, "bits": 3, "values": 6, "mode": "block"}),
        DealerRequest("inject", {"n": N, "bits": 2, "values": 3, "mode": "full"}),
        DealerRequest("and_node", {"n": N, "k": 3}),
        DealerRequest("and_node", {"n": N, "k": 9}),
        DealerRequest("b2a_words", {"n": 10}),
    ]

    def fn(party: Party) -> list[list[torch.Tensor]]:
        return party.dealer.fetch(requests)

    shares = run_parties(fn, world_size, dealer=dealer)
    cmp_, inj_b, inj_f, and3, and9, b2a = (
        [[s[i][j] for s in shares] for j in range(len(shares[0][i]))] for i in range(6)
    )
    # cmp: r, m2, m3, rho | therm, layer2, layer3, rho_a, r*rho
    r = sum_all(cmp_[0])
    m2 = xor_all(cmp_[1]).view(torch.uint8).view(2, N, 4).long()
    m3 = xor_all(cmp_[2]).view(torch.uint8).view(2, N).long() & 0x7F
    rho = unpack_bits(xor_all(cmp_[3]))
    therm = xor_all(cmp_[4]).view(torch.int16).view(N, 16).long() & 0xFFFF
    digits = (r.unsqueeze(1) >> (4 * torch.arange(16))) & 15
    digits[:, 15] &= 7
    assert torch.equal(therm, (0xFFFF << (15 - digits)) & 0xFFFF)
    layer2 = xor_all(cmp_[5]).view(2, N, 3)
    g = products(m2, CMP_L2_G)
    e = products(m2, CMP_L2_E)
    assert torch.equal(layer2[..., 0], g[..., 0] | (g[..., 1] << 32))
    assert torch.equal(layer2[..., 1], g[..., 2] | (g[..., 3] << 32))
    assert torch.equal(layer2[..., 2], (e[..., 1] << 16) | (e[..., 2] << 32) | (e[..., 3] << 48))
    a3 = xor_all(cmp_[6]).view(torch.int32).view(2, N).long() & 0xFFFFFFFF
    assert torch.equal(a3, products(m3, CMP_L3_G) | (((r >> 63) & 1) << 31))
    assert torch.equal(sum_all(cmp_[7]), rho)
    assert torch.equal(sum_all(cmp_[8]), rho * r)
    # inject, block and full
    for parts, mode in ((inj_b, "block"), (inj_f, "full")):
        bits = unpack_bits(xor_all(parts[0]))
        alpha = sum_all(parts[1])
        assert torch.equal(sum_all(parts[2]), bits)
        k = bits.shape[0]
        expect = (
            bits.unsqueeze(1) * alpha.view(k, -1, N)
            if mode == "block"
            else bits.unsqueeze(1) * alpha.unsqueeze(0)
        )
        assert torch.equal(sum_all(parts[3]), expect)
    # and_node
    for parts, k in ((and3, 3), (and9, 9)):
        narrow = torch.uint8 if k <= 8 else torch.int16
        masks = xor_all(parts[0]).view(narrow).long() & ((1 << k) - 1)
        assert torch.equal(xor_all(parts[1]), and_node_products(k)[masks])
    # b2a_words
    word = xor_all(b2a[0])
    assert torch.equal(sum_all(b2a[1]), (word.unsqueeze(-1) >> torch.arange(64)) & 1)
