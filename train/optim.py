"""SGD over exactly the elements a trainable mode trains.

Whole trainable tensors go in a group with SGD's own weight decay. Tensors trained only in part (the
`random` mode's masks) go in a group with weight_decay=0; before each step their gradient becomes
g <- mask * (g + wd * w), so a frozen element's gradient, and hence its momentum buffer (which starts at
0: b <- mu * b + g) and its update (w <- w - lr * b), stay exactly zero. Frozen tensors never enter the
optimiser at all (no gradient, no decay, no momentum).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rfprobe.trainable import Trainable


class MaskedSGD:
    """`torch.optim.SGD` plus the per-element masking above; `state_dict` is the SGD's."""

    def __init__(self, model: nn.Module, trainable: Trainable, *, lr: float, momentum: float, weight_decay: float):
        params = dict(model.named_parameters())
        whole = [params[n] for n in trainable.tensors if n not in trainable.masks]
        parted = [n for n in trainable.tensors if n in trainable.masks]
        self.masked = [(params[n], trainable.element_mask(n, params[n])) for n in parted]
        self.weight_decay = weight_decay
        groups = []
        if whole:
            groups.append({"params": whole, "weight_decay": weight_decay})
        if parted:
            groups.append({"params": [params[n] for n in parted], "weight_decay": 0.0})
        self.sgd = torch.optim.SGD(groups, lr=lr, momentum=momentum) if groups else None

    def set_lr(self, lr: float) -> None:
        for group in self.sgd.param_groups if self.sgd else ():
            group["lr"] = lr

    def zero_grad(self) -> None:
        if self.sgd:
            self.sgd.zero_grad(set_to_none=True)

    def step(self) -> None:
        with torch.no_grad():
            for param, mask in self.masked:
                if param.grad is not None:
                    param.grad.copy_(torch.where(mask, param.grad + self.weight_decay * param, 0.0))
        if self.sgd:
            self.sgd.step()

    def state_dict(self) -> dict:
        return self.sgd.state_dict() if self.sgd else {}

    def load_state_dict(self, state: dict) -> None:
        if self.sgd and state:
            self.sgd.load_state_dict(state)
