"""Layer L1: cryptographic randomness — AES-CTR generators and X25519 seed agreement.

Secret randomness never comes from ``torch.randint`` or ``torch.Generator``. Each generator is
AES-128 in counter mode keyed by a 32-byte seed (first 16 bytes the key, last 16 the initial
counter block); its keystream read as little-endian int64 words is uniform over Z_2^64 under the
standard PRF assumption on AES. Two parties that agree on a seed draw identical streams, which
is what pseudo-random zero sharing and seed-compressed dealer material are built on.

Seeds are agreed with X25519 Diffie-Hellman and HKDF-SHA256 (RFC 7748, RFC 5869); the HKDF
``info`` binds each seed to its purpose and to the two ranks, so no two streams coincide.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["PRG", "SEED_BYTES", "KeyPair", "derive_seed", "fresh_seed"]

SEED_BYTES = 32
_BLOCK = 16


def fresh_seed() -> bytes:
    """32 bytes from the operating system's CSPRNG."""
    return os.urandom(SEED_BYTES)


_CHUNK = 1 << 18  # keystream bytes per cipher call: the zero input stays in cache
_ZERO_CHUNK = bytes(_CHUNK)


class PRG:
    """A stream of uniform ring elements from AES-128-CTR.

    The stream is seekable: :attr:`position` counts the bytes drawn so far, :meth:`fork` opens
    an independent reader at any later position of the same stream and :meth:`skip` moves past
    bytes without computing them. A dealer uses this to replay a party's draws piecewise.

    Args:
        seed: 32 bytes; bytes 0-15 are the AES key, bytes 16-31 the initial counter block.
    """

    __slots__ = ("_encryptor", "_key", "_counter0", "_pos")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
        self._key = bytes(seed[:16])
        self._counter0 = int.from_bytes(seed[16:], "big")
        self._pos = 0
        self._encryptor = self._encryptor_at(0)

    def _encryptor_at(self, pos: int) -> Any:
        # CTR mode increments the whole 128-bit counter block, big-endian, once per block.
        block = (self._counter0 + pos // _BLOCK) % (1 << 128)
        enc = Cipher(algorithms.AES(self._key), modes.CTR(block.to_bytes(16, "big"))).encryptor()
        if pos % _BLOCK:
            enc.update(bytes(pos % _BLOCK))
        return enc

    def __repr__(self) -> str:
        return "PRG(<seed hidden>)"

    @property
    def position(self) -> int:
        """Keystream bytes drawn so far."""
        return self._pos

    def fork(self, offset: int = 0) -> PRG:
        """An independent reader of this stream, starting ``offset`` bytes after :attr:`position`.

        Drawing from the fork does not move this stream.
        """
        if offset < 0:
            raise ValueError(f"fork offset must be >= 0, got {offset}")
        other = PRG.__new__(PRG)
        other._key, other._counter0 = self._key, self._counter0
        other._pos = self._pos + offset
        other._encryptor = other._encryptor_at(other._pos)
        return other

    def skip(self, n: int) -> None:
        """Move ``n`` bytes ahead without computing the keystream in between."""
        if n < 0:
            raise ValueError(f"cannot skip {n} bytes")
        if n:
            self._pos += n
            self._encryptor = self._encryptor_at(self._pos)

    def _fill(self, out: memoryview, n: int) -> None:
        """Write the next ``n`` keystream bytes into ``out`` (which has 15 bytes of slack)."""
        update_into = self._encryptor.update_into
        for off in range(0, n, _CHUNK):
            m = min(_CHUNK, n - off)
            written = update_into(memoryview(_ZERO_CHUNK)[:m], out[off:])
            assert written == m
        self._pos += n

    def random_bytes(self, n: int) -> bytearray:
        """The next ``n`` keystream bytes (plus up to 15 spare bytes of room at the end)."""
        out = bytearray(n + _BLOCK - 1)
        self._fill(memoryview(out), n)
        return out

    def random_int64(self, shape: tuple[int, ...] | torch.Size | list[int]) -> torch.Tensor:
        """A tensor of independent uniform ring elements (int64, contiguous, owned).

        The keystream is written straight into the tensor's memory (the cipher encrypts a small
        cached block of zeros, chunk by chunk); two spare words give the cipher the block of
        slack it asks for.
        """
        shape = tuple(shape)
        numel = 1
        for d in shape:
            numel *= d
        if numel == 0:
            return torch.empty(shape, dtype=torch.int64)
        buf = torch.empty(numel + 2, dtype=torch.int64)
        self._fill(memoryview(buf.numpy()).cast("B"), 8 * numel)  # type: ignore[arg-type]
        return buf[:numel].view(shape)

    def random_bits(self, shape: tuple[int, ...] | torch.Size | list[int]) -> torch.Tensor:
        """A tensor of independent uniform bits, as int64 0/1."""
        return self.random_int64(shape) & 1


class KeyPair:
    """An ephemeral X25519 key pair for one session."""

    __slots__ = ("_private", "public")

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        self.public: bytes = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()[:16]}...)"

    def shared_secret(self, peer_public: bytes) -> bytes:
        """The X25519 shared secret with the holder of ``peer_public``."""
        if len(peer_public) != 32:
            raise ValueError(f"X25519 public keys are 32 bytes, got {len(peer_public)}")
        return self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))


def derive_seed(shared_secret: bytes, label: str, context: bytes = b"") -> bytes:
    """Expand a Diffie-Hellman secret into a 32-byte seed bound to ``label`` and ``context``."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=SEED_BYTES,
        salt=context or None,
        info=b"crypten_lite/v1/" + label.encode("utf-8"),
    ).derive(shared_secret)
