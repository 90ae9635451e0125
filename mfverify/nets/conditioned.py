"""Class-conditional networks: labels bound to a network's rows (classifier-free guidance)."""

from __future__ import annotations

import torch

NO_LABEL = -1  # the "none" label of classifier-free guidance (label dropout)


def label_inputs(n_classes: int, labels, x) -> list:
    """A network's label inputs: ``[one-hot of n_classes + 1]`` (``NO_LABEL`` and ``None``: the last,
    "none", slot), or ``[]`` for an unconditional network (``n_classes = 0``)."""
    if not n_classes:
        if labels is not None:
            raise ValueError("labels given to an unconditional network (n_classes = 0)")
        return []
    if labels is None:
        labels = torch.full((x.shape[0],), NO_LABEL, dtype=torch.int64, device=x.device)
    if labels.shape != (x.shape[0],) or labels.dtype != torch.int64:
        raise ValueError(f"labels must be an ({x.shape[0]},) int64 tensor, got {tuple(labels.shape)} {labels.dtype}")
    slot = torch.where(labels < 0, n_classes, labels)
    return [torch.nn.functional.one_hot(slot, n_classes + 1).to(x.dtype)]


class Conditioned:
    """A class-conditional model with its labels bound: ``model(x, r, t)`` is
    ``net(x, r, t, labels)``, and ``jvp`` and ``velocity`` likewise, so that any
    objective trains it unchanged (the objective must call it on its whole batch:
    the labels are per row). ``unconditional()`` is the same network with the "none"
    label on every row (MeanFlow's guided target needs both)."""

    def __init__(self, net, labels: torch.Tensor):
        self.net, self.labels = net, labels
        if hasattr(net, "jvp"):
            self.jvp = self._jvp
        if hasattr(net, "velocity"):
            self.velocity = self._velocity

    def _rows(self, x):
        if x.shape[0] != self.labels.shape[0]:
            raise ValueError(f"a conditioned model holds labels for {self.labels.shape[0]} rows, called on "
                             f"{x.shape[0]}: an objective must call the model on its whole batch")
        return self.labels

    def __call__(self, x, r, t):
        return self.net(x, r, t, labels=self._rows(x))

    def _jvp(self, x, r, t, dx, dr, dt, tangent_grad=True):
        return self.net.jvp(x, r, t, dx, dr, dt, tangent_grad=tangent_grad, labels=self._rows(x))

    def _velocity(self, x, t):
        return self.net.velocity(x, t, labels=self._rows(x))

    def unconditional(self) -> "Conditioned":
        return Conditioned(self.net, torch.full_like(self.labels, NO_LABEL))
