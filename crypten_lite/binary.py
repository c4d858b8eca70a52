"""Layer L4: ``BinaryMPCTensor`` — a value XOR-shared over int64 words (CrypTen's binary ptype).

The value is the fixed-point encoding ``round(x * 2**f)`` as a 64-bit word, shared so that
``word = share_0 ^ share_1 ^ ... ^ share_{N-1}``. XOR, NOT, shifts and AND with public words are
local; AND (and OR) of two secrets is one round with a binary triple. Convert with
:meth:`MPCTensor.to_binary` (A2B, 7 rounds) and :meth:`BinaryMPCTensor.to_arithmetic` (B2A, 1
round). It is not a ``torch.Tensor``: bitwise circuits have no gradients; use it for explicit
protocol-level code, as in CrypTen.
"""

from __future__ import annotations

from typing import Any

import torch

from crypten_lite.bridge import pair_call, uses_bridge
from crypten_lite.errors import SecretLeakError
from crypten_lite.protocols import binary, conversion
from crypten_lite.protocols.opening import open_xor_shares
from crypten_lite.runtime.encoding import decode
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import _BINARY_FACTORY, MPCTensor, ptype

__all__ = ["BinaryMPCTensor"]

Operand = Any


class BinaryMPCTensor:
    """XOR shares of 64-bit words holding fixed-point values (``frac_bits`` fractional bits).

    Args:
        share: this party's int64 XOR share.
        party: the party holding it.
        frac_bits: fractional bits of the encoded words (the session's ``f`` by default).
    """

    __slots__ = ("_frac", "_party", "_share")

    def __init__(self, share: torch.Tensor, party: Party, frac_bits: int | None = None) -> None:
        if share.dtype != torch.int64:
            raise TypeError(f"a binary share is an int64 tensor, got {share.dtype}")
        self._share = share
        self._party = party
        self._frac = party.frac_bits if frac_bits is None else frac_bits

    # ------------------------------------------------------------------- basics
    @property
    def share(self) -> torch.Tensor:
        """This party's XOR share (int64 words)."""
        return self._share

    @property
    def shape(self) -> torch.Size:
        return self._share.shape

    @property
    def device(self) -> torch.device:
        """Where the share lives (the CPU, as for :class:`MPCTensor`)."""
        return self._share.device

    @property
    def ptype(self) -> ptype:
        return ptype.binary

    @property
    def frac_bits(self) -> int:
        return self._frac

    def size(self, dim: int | None = None) -> Any:
        return self._share.shape if dim is None else self._share.shape[dim]

    def __len__(self) -> int:
        return len(self._share)

    def __repr__(self) -> str:
        return (
            f"BinaryMPCTensor(shape={tuple(self.shape)}, encoding=XOR words f={self._frac}, "
            f"party {self._party.rank}/{self._party.world_size})"
        )

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        # Shape and encoding only, whatever the format spec: printing never opens a secret.
        return self.__repr__()

    def __bool__(self) -> bool:
        raise SecretLeakError(
            f"party {self._party.rank}: bool() on an encrypted tensor: cannot branch on or read "
            "a secret; call get_plain_text()"
        )

    def __getitem__(self, index: Any) -> BinaryMPCTensor:
        return self._new(self._share[index])

    def _new(self, share: torch.Tensor) -> BinaryMPCTensor:
        return BinaryMPCTensor(share, self._party, self._frac)

    def _public_word(self, value: Operand) -> torch.Tensor | int:
        if isinstance(value, int):
            return value
        return torch.as_tensor(value).to(torch.int64)

    # ------------------------------------------------------------------- bitwise ops
    def __xor__(self, other: Operand) -> BinaryMPCTensor:
        """``x ^ y`` (local)."""
        if isinstance(other, BinaryMPCTensor):
            return self._new(binary.xor(self._share, other._share))
        return self._new(binary.xor_public(self._share, self._public_word(other), self._party))

    __rxor__ = __xor__

    def __and__(self, other: Operand) -> BinaryMPCTensor:
        """``x & y``: local with a public word, one round with a secret one."""
        if isinstance(other, BinaryMPCTensor):
            if uses_bridge(self._party):  # replicated family: parties 0 and 1, party 2 deals
                shares = [self._share, other._share]
                return self._new(pair_call(self._party, _and, xor=shares))
            return self._new(binary.and_(self._share, other._share, self._party))
        return self._new(binary.and_public(self._share, self._public_word(other)))

    __rand__ = __and__

    def __or__(self, other: Operand) -> BinaryMPCTensor:
        """``x | y = x ^ y ^ (x & y)``."""
        either: BinaryMPCTensor = self ^ other
        both: BinaryMPCTensor = self & other
        out: BinaryMPCTensor = either ^ both
        return out

    __ror__ = __or__

    def __invert__(self) -> BinaryMPCTensor:
        return self._new(binary.not_(self._share, self._party))

    def __lshift__(self, k: int) -> BinaryMPCTensor:
        return self._new(binary.lshift(self._share, int(k)))

    def __rshift__(self, k: int) -> BinaryMPCTensor:
        """Logical right shift of the words (zeros enter at the top)."""
        return self._new(binary.rshift(self._share, int(k)))

    # ------------------------------------------------------------------- conversions
    def get_plain_text(self, dst: int | None = None) -> torch.Tensor | None:
        """Open the words and decode them (to ``dst`` only, when given). 1 round."""
        opened = open_xor_shares([self._share], self._party, dst=dst, tag="binary.reveal")
        if opened is None:
            return None
        return decode(opened[0], self._frac)

    def to_arithmetic(self) -> MPCTensor:
        """Arithmetic shares of the same value (B2A: 1 round, 8 bytes per element and peer)."""
        if uses_bridge(self._party):
            share = pair_call(self._party, _b2a, xor=[self._share])
        else:
            share = conversion.b2a(self._share, self._party)
        return MPCTensor(share, self._party)

    @classmethod
    def from_arithmetic(cls, x: MPCTensor) -> BinaryMPCTensor:
        """XOR shares of an arithmetic sharing (A2B: 7 rounds, 184 bytes per element and peer)."""
        if uses_bridge(x.party):
            share = pair_call(x.party, _a2b, arith=[x.share.contiguous()])
            return cls(share, x.party, x.frac_bits)
        return cls(conversion.a2b(x.share.contiguous(), x.party), x.party, x.frac_bits)


def _and(party: Party, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return binary.and_(x, y, party)


def _a2b(party: Party, share: torch.Tensor) -> torch.Tensor:
    return conversion.a2b(share, party)


def _b2a(party: Party, share: torch.Tensor) -> torch.Tensor:
    return conversion.b2a(share, party)


_BINARY_FACTORY["from_arithmetic"] = BinaryMPCTensor.from_arithmetic
