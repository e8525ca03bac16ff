"""Training the full-precision base model when no checkpoint exists.

Recipe (our choice; the paper starts from pretrained ImageNet models): SGD with Nesterov momentum
and a one-cycle learning-rate schedule, label smoothing, random-shift + horizontal-flip
augmentation done on uint8 batches, channels-last layout (2x faster on CPU for the depthwise
convolutions of MobileNetV2). One-cycle is what makes a few epochs enough.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from aqgan_ray.data import normalize


@dataclass(frozen=True)
class TrainSpec:
    """How the base model is trained; part of the checkpoint's cache key."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.2  # peak of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 4e-5  # MobileNetV2 paper's value
    label_smoothing: float = 0.1
    augment: bool = True  # random shift by up to `shift` pixels, and horizontal flips
    shift: int = 2


def augment_batch(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random per-image translation (zero padded) and horizontal flip of a uint8 NCHW batch."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # n x h x 1
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # n x 1 x w
    batch = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # n x h x w x c
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(2)
    return out.permute(0, 3, 1, 2)


def train_model(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    spec: TrainSpec,
    seed: int,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` in place on uint8 images; seeded, so a re-run gives the same weights."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = model.to(memory_format=torch.channels_last).train()
    steps_per_epoch = -(-len(train_x) // spec.batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=spec.lr,
        momentum=spec.momentum,
        nesterov=True,
        weight_decay=spec.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch, pct_start=0.25
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
    for epoch in range(spec.epochs):
        order = torch.randperm(len(train_x), generator=gen)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"train base model, epoch {epoch + 1}/{spec.epochs}",
            disable=not progress,
            unit="batch",
            leave=False,
        )
        correct = seen = 0
        for step in bar:
            idx = order[step * spec.batch_size : (step + 1) * spec.batch_size]
            x = train_x[idx]
            if spec.augment:
                x = augment_batch(x, spec.shift, gen)
            x = normalize(x, mean, std).contiguous(memory_format=torch.channels_last)
            y = train_y[idx]
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", train_acc=f"{correct / seen:.3f}")
    return model.to(memory_format=torch.contiguous_format).eval()


@torch.no_grad()
def accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 500,
) -> float:
    """Top-1 accuracy of ``model`` on uint8 images (normalized batch by batch)."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(normalize(x[start : start + batch_size], mean, std))
        correct += (logits.argmax(1) == y[start : start + batch_size]).sum().item()
    return correct / max(1, len(x))
