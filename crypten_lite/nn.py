"""Layer L5: module helpers — CrypTen's ``crypten.nn`` entry points over unmodified ``torch.nn``.

Encrypted tensors are torch tensors, so models stay ``torch.nn`` modules: there is no second
module library. This module offers CrypTen's workflow on top of them::

    model = crypten_lite.nn.from_pytorch(net, dummy_input)   # checks every op first
    model.encrypt(src=0)                                      # parameters -> MPCTensors
    loss = torch.nn.functional.cross_entropy(model(x_enc), labels)
    loss.backward(); optimizer.step()
    model.decrypt()

``crypten_lite.nn.Linear`` and the other ``torch.nn`` names resolve to ``torch.nn`` itself.
"""

from __future__ import annotations

from typing import Any

import torch

from crypten_lite.check import check_model
from crypten_lite.encrypted import decrypt_module, encrypt_module
from crypten_lite.errors import UnsupportedOperationError
from crypten_lite.ops._fixed import release_fixed_operands
from crypten_lite.tensor import MPCTensor, is_encrypted

__all__ = [
    "EncryptedModule",
    "decrypt_module",
    "encrypt_module",
    "from_pytorch",
    "is_encrypted_module",
    "reuse_weight_masks",
]


def reuse_weight_masks(module: torch.nn.Module, enable: bool = True) -> torch.nn.Module:
    """Open each encrypted weight's Beaver mask once and reuse it for every later product.

    For inference over many batches: a matrix product or convolution with a weight then opens
    only the activation's masked value (SecureML's reused weight masks,
    ``protocols.beaver.prepare_fixed``). A weight that changes (an optimiser step) gets a
    fresh mask on its next use. ``enable=False`` releases the stored masks.
    """
    for p in module.parameters():
        if isinstance(p, MPCTensor):
            if enable:
                if p._alias.fixed is None:
                    p._alias.fixed = {}
            else:
                release_fixed_operands(p, p.party)
    return module


def is_encrypted_module(module: torch.nn.Module) -> bool:
    """Whether any parameter or buffer of ``module`` is encrypted."""
    return any(is_encrypted(t) for t in [*module.parameters(), *module.buffers()])


class EncryptedModule(torch.nn.Module):
    """A ``torch.nn.Module`` with CrypTen's ``encrypt``/``decrypt`` methods.

    It wraps the module unchanged (``self.module``) and forwards calls to it; the wrapped module
    works on encrypted and plain inputs alike.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @property
    def encrypted(self) -> bool:
        """Whether the parameters are encrypted (CrypTen's attribute)."""
        return is_encrypted_module(self.module)

    def encrypt(
        self, src: int = 0, *, public: Any = None, nonpersistent_public: bool = True
    ) -> EncryptedModule:
        """Secret-share party ``src``'s parameters and buffers in place (every party calls it).

        ``public`` and ``nonpersistent_public`` choose tensors that stay public, as for
        :func:`crypten_lite.encrypt_module`.
        """
        encrypt_module(self.module, src, public=public, nonpersistent_public=nonpersistent_public)
        return self

    def decrypt(self, dst: int | None = None) -> EncryptedModule:
        """Open the parameters (to ``dst`` only, when given)."""
        decrypt_module(self.module, dst)
        return self


def from_pytorch(
    model: torch.nn.Module, dummy_input: Any = None, *, check: bool = True
) -> EncryptedModule:
    """Wrap a PyTorch model for encrypted use (CrypTen's name; no ONNX export involved).

    With ``dummy_input`` and ``check``, the model is first run on fake encrypted tensors
    (:func:`crypten_lite.check_model`, forward and backward) and every unsupported op is
    reported at once.

    Raises:
        UnsupportedOperationError: the model uses ops encrypted tensors do not support; the
            message lists all of them.
    """
    if dummy_input is not None and check:
        report = check_model(model, dummy_input)
        if not report.ok:
            raise UnsupportedOperationError(str(report))
    return EncryptedModule(model)


def __getattr__(name: str) -> Any:
    """``crypten_lite.nn.Linear`` is ``torch.nn.Linear`` (and so on for every torch.nn name)."""
    try:
        return getattr(torch.nn, name)
    except AttributeError:
        raise AttributeError(f"module 'crypten_lite.nn' has no attribute {name!r}") from None
