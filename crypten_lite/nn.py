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
from crypten_lite.encrypted import (
    FoldedBatchNorm,
    decrypt_module,
    encrypt_module,
    set_mask_reuse,
)
from crypten_lite.errors import UnsupportedOperationError
from crypten_lite.tensor import is_encrypted

__all__ = [
    "EncryptedModule",
    "FoldedBatchNorm",
    "decrypt_module",
    "encrypt_module",
    "from_pytorch",
    "is_encrypted_module",
    "reuse_weight_masks",
]


def reuse_weight_masks(module: torch.nn.Module, enable: bool | None = True) -> torch.nn.Module:
    """Choose whether encrypted weights open their Beaver mask once and reuse it.

    A matrix product or convolution with a weight whose mask is reused opens only the
    activation's masked value (SecureML's reused weight masks,
    ``protocols.beaver.prepare_fixed``): the first product with each weight (per view: ``W``
    and ``W.T`` count apart) opens ``W - b`` once, every later one sends nothing for ``W``.
    The first product with each weight view pays one round of its own for that opening
    (ResNet-18 at batch 1, BatchNorms folded: first pass 136 rounds, later ones 115 and 3.6 MB
    sent by party 1 instead of about 93 MB).
    A weight that changes (an optimiser step, ``load_state_dict``, a write through ``.share``)
    gets a fresh mask on its next use.

    The default, set by :func:`crypten_lite.encrypt_module`, is automatic (``enable=None``):
    each submodule's weights reuse their masks at a forward run under ``torch.no_grad()`` or
    in eval mode, and not while they are trained (grad enabled, train mode, the weight
    requiring grad: each step changes them, so a stored mask would cost one extra round per
    use and be released at once).

    Memory: each reused mask keeps, on every party, the mask share and the opened value
    (``16`` bytes per weight element and view: twice the weights' share memory), and the
    dealer keeps the mask (``8`` bytes per element). ``enable=False`` releases them.

    Args:
        enable: ``True``: reuse always (also while training); ``False``: never (the
            opt-out; stored masks are released); ``None``: automatic (the default).
    """
    mode = {True: "on", False: "off", None: "auto"}[enable]
    return set_mask_reuse(module, mode)


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

    def encrypt(self, src: int = 0, **options: Any) -> EncryptedModule:
        """Secret-share party ``src``'s parameters and buffers in place (every party calls it).

        ``options`` are those of :func:`crypten_lite.encrypt_module` (``public``,
        ``nonpersistent_public``, ``fold_batchnorm``, ``reuse_weight_masks``).
        """
        encrypt_module(self.module, src, **options)
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
