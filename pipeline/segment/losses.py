"""Segmentation losses: soft Dice, cross-entropy (hard and soft labels), and their sum.

All take logits of shape (N, C, *spatial) and a target that is either class indices
(N, *spatial), integer, or class probabilities (N, C, *spatial) summing to 1 over C (soft
labels, e.g. a consensus of several annotators).

* **Soft Dice** (Milletari et al. 2016, the batch form nnU-Net uses): per class c,
  ``D_c = (2 sum p t + eps) / (sum p + sum t + eps)`` summed over the batch and the voxels, with
  ``p`` the softmax and ``t`` the (one-hot or soft) target; the loss is ``1 - mean_c D_c``
  (macro average), over the foreground classes only when ``include_background`` is False.
* **Cross-entropy** ``-mean over voxels of sum_c t_c log p_c``: with one-hot targets the usual
  cross-entropy, with soft targets the cross-entropy against the label distribution (its
  minimum is the labels' entropy, reached at p = t).
* **Dice + CE**: their sum, nnU-Net's default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["as_probabilities", "soft_dice_loss", "cross_entropy", "dice_ce_loss", "deep_supervision_weights"]


def as_probabilities(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Targets as (N, C, *spatial) float probabilities: one-hot from indices, or soft labels checked."""
    if target.dtype in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.bool):
        t = target.long()
        if t.min() < 0 or t.max() >= n_classes:
            raise ValueError(f"label values must lie in 0..{n_classes - 1}, got {int(t.min())}..{int(t.max())}")
        return F.one_hot(t, n_classes).movedim(-1, 1).float()
    if target.shape[1] != n_classes:
        raise ValueError(f"soft labels need {n_classes} channels (one per class), got shape {tuple(target.shape)}")
    if not torch.allclose(target.sum(dim=1), torch.ones((), dtype=target.dtype), atol=1e-4):
        raise ValueError("soft labels must sum to 1 over the class channel at every voxel")
    return target.float()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, include_background: bool = False,
                   eps: float = 1e-5) -> torch.Tensor:
    """``1 - mean_c D_c`` (see the module docstring); the mean is over the foreground classes
    unless ``include_background``."""
    n_classes = logits.shape[1]
    p = torch.softmax(logits, dim=1)
    t = as_probabilities(target, n_classes)
    if p.shape != t.shape:
        raise ValueError(f"logits {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    axes = [0] + list(range(2, p.ndim))
    inter = (p * t).sum(dim=axes)
    denom = p.sum(dim=axes) + t.sum(dim=axes)
    dice = (2.0 * inter + eps) / (denom + eps)
    if not include_background:
        dice = dice[1:]
    return 1.0 - dice.mean()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of ``-sum_c t_c log softmax(logits)_c`` (hard or soft targets)."""
    t = as_probabilities(target, logits.shape[1])
    return -(t * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def dice_ce_loss(logits, target, *, include_background: bool = False, dice_weight: float = 1.0,
                 ce_weight: float = 1.0) -> torch.Tensor:
    """``dice_weight * soft_dice_loss + ce_weight * cross_entropy``; with deep supervision
    (``logits`` a list, finest first) the weighted sum over the stages, each against the target
    down-sampled to its size (area averaging of the probabilities), weights
    :func:`deep_supervision_weights`."""
    if isinstance(logits, (list, tuple)):
        n_classes = logits[0].shape[1]
        t = as_probabilities(target, n_classes)
        total = 0.0
        for w, lg in zip(deep_supervision_weights(len(logits)), logits):
            tt = t if lg.shape[2:] == t.shape[2:] else F.adaptive_avg_pool3d(t, lg.shape[2:]) if t.ndim == 5 \
                else F.adaptive_avg_pool2d(t, lg.shape[2:])
            total = total + w * dice_ce_loss(lg, tt, include_background=include_background,
                                             dice_weight=dice_weight, ce_weight=ce_weight)
        return total
    return (dice_weight * soft_dice_loss(logits, target, include_background=include_background)
            + ce_weight * cross_entropy(logits, target))


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's weights: 1, 1/2, 1/4, ... for the stages finest first, normalised to sum 1."""
    w = [0.5 ** k for k in range(n)]
    s = sum(w)
    return [x / s for x in w]
