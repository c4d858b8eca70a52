"""Collectives over real processes and real ZeroMQ, through ``crypten_lite.launch``.

Every party can compute every other party's tensors (they are seeded by rank and case), so
each party checks what it received itself; the test process checks the returned summaries.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import crypten_lite
from crypten_lite.config import Config
from crypten_lite.launcher.api import launch
from crypten_lite.runtime.wire import tensor_payload

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.filterwarnings("ignore:launch\\(dealer=False\\):RuntimeWarning"),
]

DTYPES = [
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
]
# 0-d, empty, multi-dimensional, and one shape above ZeroMQ's 64 KiB zero-copy threshold for
# the 8-byte dtypes (the large-message path on both ends).
SHAPES = [(), (0,), (3, 0, 2), (7,), (2, 3, 4), (9000,)]


def _tensor(rank: int, case: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7919 * rank + case)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=gen, dtype=torch.int64).to(dtype)


def _same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    tensor_payload(got)  # whatever arrives can be sent on (e.g. no zero strides)
    if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
        raise AssertionError(
            f"{what}: got {got.dtype}{tuple(got.shape)}, want {want.dtype}{tuple(want.shape)}"
        )


def collectives(seed: int) -> dict[str, object]:
    """Party body: every collective on every dtype and shape; returns a summary."""
    party = crypten_lite.get_party()
    comm, rank, n = party.comm, party.rank, party.world_size
    checks = 0
    for index, (dtype, shape) in enumerate(itertools.product(DTYPES, SHAPES)):
        case = seed + index
        want = [_tensor(r, case, dtype, shape) for r in range(n)]
        mine = want[rank]
        # exchange, one tensor to everybody
        for peer, got in comm.exchange(mine, f"exchange.{case}").items():
            _same(got, want[peer], f"exchange {case} from {peer}")
            checks += 1
        # exchange, a different tensor per peer
        pair = {p: _tensor(100 + rank * n + p, case, dtype, shape) for p in comm.peers}
        for peer, got in comm.exchange(pair, f"pairwise.{case}").items():
            _same(got, _tensor(100 + peer * n + rank, case, dtype, shape), f"pairwise {case}")
            checks += 1
        # all_gather
        for r, got in enumerate(comm.all_gather(mine, f"all_gather.{case}")):
            _same(got, want[r], f"all_gather {case} rank {r}")
            checks += 1
        # broadcast and gather, rotating the root
        root = case % n
        got = comm.broadcast(mine if rank == root else None, root, f"broadcast.{case}")
        _same(got, want[root], f"broadcast {case}")
        gathered = comm.gather(mine, root, f"gather.{case}")
        if rank == root:
            assert gathered is not None
            for r, got in enumerate(gathered):
                _same(got, want[r], f"gather {case} rank {r}")
        checks += 2
        # all_reduce adds in rank order (this party's own tensor first), like the communicator
        total = comm.all_reduce(mine, f"all_reduce.{case}")
        expected = mine.clone()
        for r in range(n):
            if r != rank:
                expected += want[r]
        _same(total, expected, f"all_reduce {case}")
        checks += 1
    comm.barrier()
    return {"rank": rank, "checks": checks, "last": mine, "nested": [(1, 2.5, None, True, "x")]}


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_collectives_on_every_dtype_and_shape(world_size: int, transport: str) -> None:
    config = Config(timeout_s=20.0, rendezvous_timeout_s=30.0)
    results = launch(
        collectives,
        world_size,
        args=(11,),
        dealer=False,
        transport=transport,
        config=config,
        timeout_s=100.0,
        quiet=True,
    )
    cases = len(DTYPES) * len(SHAPES)
    per_case = 2 * (world_size - 1) + world_size + 3
    assert [r["rank"] for r in results] == list(range(world_size))
    assert all(r["checks"] == cases * per_case for r in results)
    # Results cross the process boundary intact (tensors by value, tuples stay tuples).
    last_case = 11 + cases - 1
    for rank, result in enumerate(results):
        assert torch.equal(result["last"], _tensor(rank, last_case, DTYPES[-1], SHAPES[-1]))
        assert result["nested"] == [(1, 2.5, None, True, "x")]


def big_exchange(numel: int) -> int:
    """Party body: exchange one ``8 * numel``-byte tensor with the other party."""
    party = crypten_lite.get_party()
    mine = torch.arange(numel, dtype=torch.int64) * (party.rank + 1)
    theirs = party.comm.exchange(mine, "big")[1 - party.rank]
    expected = torch.arange(numel, dtype=torch.int64) * (2 - party.rank)
    if not torch.equal(theirs, expected):
        raise AssertionError("the 100 MB tensor arrived corrupted")
    return int(theirs[-1])


def test_one_100_mb_tensor_over_curve_tcp() -> None:
    numel = 100_000_000 // 8
    results = launch(
        big_exchange,
        2,
        args=(numel,),
        dealer=False,
        transport="tcp",
        config=Config(timeout_s=60.0),
        timeout_s=100.0,
        quiet=True,
    )
    assert results == [(numel - 1) * 2, numel - 1]
