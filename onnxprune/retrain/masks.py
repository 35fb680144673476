"""Keep a sparse model's zeros at zero while it trains (masked fine-tuning, seed 000's retraining).

Masks come from the zero pattern of the weights the trainer is given: every parameter of at
least two dimensions (Conv/Gemm/MatMul weights, never biases or BN scales) that has zeros —
all such tensors when asked (``keep=True``), automatically those at least ``AUTO_ZERO_SHARE``
zero (a dense trained tensor has next to no exact zeros), none with ``keep=False``. Each mask
multiplies its parameter's gradient (a hook), so momentum, Adam's moments and SGD's weight decay
see zeros there, and again the parameter after every optimizer step, so nothing (AdamW's
decoupled decay included) can revive a pruned weight.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

AUTO_ZERO_SHARE = 0.25


class WeightMasks:
    """The masks of one module's parameters, hooked onto their gradients."""

    def __init__(self, parameters: dict[str, nn.Parameter], keep: bool | None = None) -> None:
        self.masks: dict[str, tuple[nn.Parameter, Tensor]] = {}
        if keep is False:
            return
        for name, parameter in parameters.items():
            zero = parameter.detach() == 0
            if parameter.dim() < 2 or not zero.any():
                continue
            if keep is None and float(zero.float().mean()) < AUTO_ZERO_SHARE:
                continue
            mask = (~zero).to(parameter.dtype)
            parameter.register_hook(functools.partial(torch.mul, mask))
            self.masks[name] = (parameter, mask)
        if self.masks:
            zeros = sum(int((mask == 0).sum()) for _, mask in self.masks.values())
            log.info("keeping %d zero weights of %d tensor(s) at zero", zeros, len(self.masks))

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the masked weights again (after an optimizer step)."""
        for parameter, mask in self.masks.values():
            parameter.mul_(mask)
