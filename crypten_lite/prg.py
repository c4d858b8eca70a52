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


class PRG:
    """A stream of uniform ring elements from AES-128-CTR.

    Args:
        seed: 32 bytes; bytes 0-15 are the AES key, bytes 16-31 the initial counter block.
    """

    __slots__ = ("_encryptor", "_zeros")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
        cipher = Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:]))
        self._encryptor = cipher.encryptor()
        self._zeros = b""

    def __repr__(self) -> str:
        return "PRG(<seed hidden>)"

    def random_bytes(self, n: int) -> bytearray:
        """The next ``n`` keystream bytes (plus up to 15 spare bytes of room at the end)."""
        if len(self._zeros) < n:
            self._zeros = bytes(max(n, 2 * len(self._zeros)))
        out = bytearray(n + _BLOCK - 1)
        written = self._encryptor.update_into(memoryview(self._zeros)[:n], out)
        assert written == n
        return out

    def random_int64(self, shape: tuple[int, ...] | torch.Size | list[int]) -> torch.Tensor:
        """A tensor of independent uniform ring elements (int64)."""
        shape = tuple(shape)
        numel = 1
        for d in shape:
            numel *= d
        if numel == 0:
            return torch.empty(shape, dtype=torch.int64)
        buf = self.random_bytes(8 * numel)
        return torch.frombuffer(buf, dtype=torch.int64, count=numel).reshape(shape)

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
