"""AES-CTR PRG and X25519/HKDF seed agreement."""

from __future__ import annotations

import pytest
import torch

from crypten_lite.runtime.prg import PRG, SEED_BYTES, KeyPair, derive_seed, fresh_seed


def test_stream_is_stable_per_seed_and_differs_across_seeds() -> None:
    seed = bytes(range(32))
    a, b = PRG(seed), PRG(seed)
    assert torch.equal(a.random_int64((100,)), b.random_int64((100,)))
    # draws continue the same stream regardless of how they are split
    first = a.random_int64((7,))
    second = torch.cat([b.random_int64((3,)), b.random_int64((4,))])
    assert torch.equal(first, second)
    other = PRG(bytes(range(1, 33))).random_int64((100,))
    assert not torch.equal(PRG(seed).random_int64((100,)), other)


def test_known_answer_is_fixed() -> None:
    # AES-128-CTR keystream of an all-zero key and counter, read as little-endian int64:
    # the first block is AES_0(0) = 66e94bd4ef8a2c3b884cfa59ca342b2e.
    x = PRG(bytes(SEED_BYTES)).random_int64((2,))
    expect = torch.frombuffer(
        bytearray.fromhex("66e94bd4ef8a2c3b884cfa59ca342b2e"), dtype=torch.int64
    )
    assert torch.equal(x, expect)


def test_shapes_bits_and_uniformity() -> None:
    g = PRG(fresh_seed())
    assert g.random_int64((0, 3)).shape == (0, 3)
    x = g.random_int64((4, 5, 6))
    assert x.shape == (4, 5, 6) and x.dtype == torch.int64
    bits = g.random_bits((10_000,))
    assert set(bits.unique().tolist()) == {0, 1}
    assert 4500 < int(bits.sum()) < 5500
    words = g.random_int64((10_000,))
    ones = sum(int(((words >> k) & 1).sum()) for k in range(64)) / (64 * 10_000)
    assert 0.49 < ones < 0.51
    assert "seed" in repr(g) and "hidden" in repr(g)


def test_bad_seed_length() -> None:
    with pytest.raises(ValueError):
        PRG(b"short")


def test_key_agreement_and_derived_seeds_per_pair_and_label() -> None:
    a, b, c = KeyPair(), KeyPair(), KeyPair()
    ab, ba = a.shared_secret(b.public), b.shared_secret(a.public)
    assert ab == ba
    assert ab != a.shared_secret(c.public)
    s1, s2 = derive_seed(ab, "pair/0-1"), derive_seed(ab, "pair/0-2")
    assert len(s1) == SEED_BYTES and s1 != s2
    assert derive_seed(ab, "pair/0-1", b"ctx") != s1
    assert derive_seed(ba, "pair/0-1") == s1
    with pytest.raises(ValueError):
        a.shared_secret(b"x" * 31)
    assert fresh_seed() != fresh_seed()


def test_fork_and_skip_read_the_same_stream() -> None:
    seed = bytes(range(32))
    whole = PRG(seed).random_int64((1000,))
    g = PRG(seed)
    g.random_int64((3,))
    assert g.position == 24
    f = g.fork(8 * 100)
    assert torch.equal(f.random_int64((50,)), whole[103:153])
    assert g.position == 24  # the fork did not move the stream
    g.skip(8 * 7)
    assert torch.equal(g.random_int64((5,)), whole[10:15])
    odd = PRG(seed)
    odd.random_bytes(5)  # positions inside a 16-byte block
    tail = bytes(odd.fork(3).random_bytes(20))[:20]
    assert tail == bytes(PRG(seed).random_bytes(28))[8:28]
    big = PRG(seed).fork(8 * 10).random_int64((70_000,))  # several cipher chunks
    assert torch.equal(big[:990], whole[10:])
    with pytest.raises(ValueError):
        g.skip(-1)
    with pytest.raises(ValueError):
        g.fork(-1)
