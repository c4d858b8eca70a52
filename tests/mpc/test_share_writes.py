"""Raw writes through ``x.share`` cannot leave a cached value stale.

``x.share`` hands out this party's int64 ring tensor itself (CrypTen's ``.share``), so a caller
can write into it. Every cache keyed on the buffer's write count — a reused weight mask
(``nn.reuse_weight_masks``), a public value — must notice such a write: torch's own version
counter of the share, which every in-place write through any view or ``detach`` bumps, is part
of the buffer's version. The oracle is plain torch on the same weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import crypten_lite as cl
from crypten_lite.runtime.encoding import encode
from crypten_lite.tensor import MPCTensor

ULP = 2.0**-16
TOL = {"atol": 1024 * ULP, "rtol": 1e-3}  # a 6-term dot product of |x| <= 16 values


def _step(share: torch.Tensor, party, delta: float) -> torch.Tensor:
    """The ring encoding of ``delta`` as an additive sharing: party 0 holds it, others 0."""
    return torch.full_like(share, round(delta * 2**16) if party.rank == 0 else 0)


@pytest.mark.parametrize("explicit", [True, False], ids=["reuse_weight_masks", "default"])
@pytest.mark.parametrize("write", ["add_", "setitem", "detach_copy_", "view_add_"])
def test_a_raw_share_write_refreshes_a_reused_weight_mask(
    run_parties, world_size, write, explicit
) -> None:
    torch.manual_seed(0)
    plain = nn.Linear(6, 4)
    x = torch.randn(3, 6) * 4
    delta = 2.5  # added to every weight through the raw share

    def body(party):
        with cl.use_party(party), torch.no_grad():
            enc = cl.encrypt_module(copy.deepcopy(plain))  # reuses masks under no_grad
            if explicit:
                cl.nn.reuse_weight_masks(enc)
            before = enc(cl.cryptensor(x)).get_plain_text()  # opens and stores the weight mask
            assert enc.weight._alias.fixed
            share = enc.weight.share
            step = _step(share, party, delta)
            if write == "add_":
                share.add_(step)
            elif write == "setitem":
                share[:] = share + step
            elif write == "detach_copy_":
                share.detach().copy_(share + step)
            else:
                share.view(-1).add_(step.view(-1))
            after = enc(cl.cryptensor(x)).get_plain_text()
            cl.nn.reuse_weight_masks(enc, enable=False)
            return before, after

    before, after = run_parties(body, world_size)[0]
    torch.testing.assert_close(before, plain(x).detach(), **TOL)
    shifted = x @ (plain.weight + delta).T + plain.bias
    torch.testing.assert_close(after, shifted.detach(), **TOL)


def test_a_raw_share_write_drops_a_public_value(run_parties, world_size) -> None:
    value = torch.tensor([1.5, -2.5, 100.0, -1000.0])

    def body(party):
        ring = encode(value, party.frac_bits)
        share = ring if party.rank == 0 else torch.zeros_like(ring)
        known = MPCTensor(share, party, dtype=torch.float32, public=value)
        assert known.public_value() is not None
        known.share.add_(_step(known.share, party, 1.0))
        return known.public_value(), known.get_plain_text()

    stale, opened = run_parties(body, world_size)[0]
    assert stale is None
    torch.testing.assert_close(opened, value + 1.0, atol=ULP, rtol=0)
