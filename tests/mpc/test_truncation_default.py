"""The default truncation is exact for 2 parties too: products at model scale never fail, where
2-party local truncation (the opt-in) fails at its documented rate (|x| / 2**64 per element)."""

from __future__ import annotations

from typing import Any

import torch

import crypten_lite as cl

N = 1 << 16
GEN = torch.Generator().manual_seed(3)
# Activations up to 2e3: products up to 2**22 in real units, 2**54 at scale 2**32, where local
# truncation fails with probability up to 2**-10 per element: ~15 expected failures here.
A = (torch.rand(N, generator=GEN) * 2 - 1) * 2000
B = (torch.rand(N, generator=GEN) * 2 - 1) * 2000


def products(run_parties: Any, n: int, **config: Any) -> torch.Tensor:
    def body(party: Any) -> torch.Tensor:
        with cl.use_party(party):
            return (cl.cryptensor(A, src=0) * cl.cryptensor(B, src=1)).get_plain_text()

    return run_parties(body, n, **config)[0]


def test_default_products_of_large_activations_are_exact(run_parties: Any, world_size: int) -> None:
    got = products(run_parties, world_size).double()
    want = A.double() * B.double()
    # Encoding errors (|a| + |b|) / 2 ulps plus one truncation ulp, and float32 decoding.
    bound = (A.abs() + B.abs()).double() * 2.0**-17 + 2.0**-16 + want.abs() * 2.0**-23
    assert bool(((got - want).abs() <= bound).all())


def test_local_truncation_fails_at_its_documented_rate(run_parties: Any) -> None:
    got = products(run_parties, 2, truncation="local").double()
    wrong = int(((got - A.double() * B.double()).abs() > 1.0).sum())
    expected = float((A.double() * B.double()).abs().sum()) * 2.0**32 / 2.0**64
    assert 10 < expected < 25
    # Poisson(expected): zero failures has probability e**-expected < 1e-4.
    assert 0 < wrong < 3 * expected
