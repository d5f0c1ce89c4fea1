"""Training the U-Net on a dataset folder: seeded, resumable, on the CPU.

``train(dataset, out)`` reads an nnU-Net-layout folder (:func:`pipeline.segment.learn_data.read_dataset`),
fingerprints it, plans the patch and normalisation, and trains a :class:`~pipeline.segment.unet.UNet`
with soft Dice + cross-entropy (:func:`~pipeline.segment.losses.dice_ce_loss`) by Adam with
polynomial learning-rate decay (nnU-Net's schedule, exponent 0.9). Patches are drawn at random,
a third of them centred on lumen (nnU-Net's foreground over-sampling), mirrored along random
axes, warped by a smooth invertible deformation (:func:`~pipeline.segment.learn_data.random_diffeomorphism`,
image and labels alike) and changed photometrically (image only).

Everything random comes from ``seed``: with ``torch.use_deterministic_algorithms`` the same
seed gives the same weights. A checkpoint (weights, optimiser, step, random states) is written
atomically every ``checkpoint_every`` steps; a rerun with the same settings resumes from it.

The model folder holds ``model.pt`` (weights), ``model.json`` (network, plan, fingerprint,
training settings, loss history, the command and seed that made it) and, while training,
``checkpoint.pt``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.segment.learn_data import (Plan, fingerprint, make_plan, normalise, photometric,
                                         random_diffeomorphism, read_dataset, warp)

__all__ = ["TrainConfig", "train", "load_model", "model_fingerprint", "TrainingError", "SHIPPED_MODEL"]

MODEL_SCHEMA = 1
#: The vessel model that ships with digipat (trained by ``benchmarks/train_unet.py``, see its MODEL_CARD.md).
SHIPPED_MODEL = Path(__file__).resolve().parent / "models" / "unet_vessel"


class TrainingError(ValueError):
    """Training settings or data that cannot be used (the message names them)."""


@dataclass
class TrainConfig:
    """Training settings (see the module docstring). ``patch`` None: from the plan."""

    steps: int = 200
    batch: int = 2
    learning_rate: float = 2e-3
    seed: int = 0
    width: int = 8
    depth: int = 3
    dims: int = 3
    normalisation: str = "ct"
    patch: tuple | None = None
    foreground_fraction: float = 0.33
    warp_probability: float = 0.3
    deep_supervision: bool = True
    checkpoint_every: int = 50
    threads: int = 2
    command: str = ""

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "width", "depth", "checkpoint_every", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TrainingError(f"{name} must be a positive integer, got {v!r}")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise TrainingError(f"learning_rate must be > 0, got {self.learning_rate!r}")

    def key(self) -> dict:
        """The settings that define the result (a checkpoint resumes only under the same key)."""
        d = asdict(self)
        for k in ("steps", "checkpoint_every", "threads", "command"):
            d.pop(k)
        return d


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _load_cases(cases, quiet: bool):
    from pipeline.image import read_image

    out = []
    for name, img_path, lab_path in cases:
        image, label = read_image(img_path), read_image(lab_path)
        if np.asarray(image.array).shape != np.asarray(label.array).shape:
            raise TrainingError(f"case {name!r}: image {np.asarray(image.array).shape} and label "
                                f"{np.asarray(label.array).shape} differ in shape")
        out.append((name, image, np.asarray(label.array)))
    _say(f"dataset: {len(out)} cases", quiet)
    return out


def _sample_patch(image: np.ndarray, label: np.ndarray, patch, rng, fg_fraction: float):
    """A patch (padded with the image's minimum where it leaves the volume)."""
    shape = np.asarray(image.shape)
    p = np.asarray(patch)
    if rng.random() < fg_fraction and label.any():
        fg = np.argwhere(label > 0)
        centre = fg[rng.integers(len(fg))]
        lo = centre - p // 2
    else:
        lo = np.array([rng.integers(min(0, s - q), max(0, s - q) + 1) for s, q in zip(shape, p)])
    img = np.full(tuple(p), float(image.min()), np.float32)
    lab = np.zeros(tuple(p), label.dtype)
    src = tuple(slice(max(a, 0), min(a + q, s)) for a, q, s in zip(lo, p, shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    img[dst] = image[src]
    lab[dst] = label[src]
    return img, lab


def _augment(img, lab, rng, warp_probability: float):
    for ax in range(img.ndim):
        if rng.random() < 0.5:
            img, lab = np.flip(img, ax), np.flip(lab, ax)
    if len(set(img.shape)) == 1:  # a cubic (square) patch: the axes exchanged too (vessels run every way)
        order = tuple(int(a) for a in rng.permutation(img.ndim))
        img, lab = np.transpose(img, order), np.transpose(lab, order)
    if rng.random() < warp_probability:
        u = random_diffeomorphism(img.shape, rng, sigma_voxels=max(2.0, min(img.shape) / 8),
                                  max_displacement_voxels=max(1.0, min(img.shape) / 16))
        # (soft labels are probabilities: interpolated like the image; hard labels by nearest voxel)
        img = warp(np.ascontiguousarray(img), u, order=1)
        lab = warp(np.ascontiguousarray(lab), u, order=1 if lab.dtype.kind == "f" else 0)
    return photometric(img, rng), np.ascontiguousarray(lab)


def train(dataset, out, cfg: TrainConfig | None = None, *, quiet: bool = False, soft_labels=None) -> dict:
    """Train on ``dataset`` (folder) into ``out`` (model folder); returns ``model.json``'s content.

    ``soft_labels``: optional {case name: probability array of the lumen} used instead of the
    label files (soft consensus of several raters); the loss then takes probabilities.
    """
    import torch

    from pipeline.segment.losses import dice_ce_loss
    from pipeline.segment.unet import UNet, UNetConfig
    from physics.atomic import atomic_path

    cfg = cfg or TrainConfig()
    out = Path(out)
    meta, cases = read_dataset(dataset)
    data = _load_cases(cases, quiet)
    fp = fingerprint([(im, lab) for _, im, lab in data], seed=cfg.seed)
    net_cfg = UNetConfig(dims=cfg.dims, width=cfg.width, depth=cfg.depth, deep_supervision=cfg.deep_supervision)
    plan = make_plan(fp, normalisation=cfg.normalisation, divisor=net_cfg.divisor, patch=cfg.patch)
    arrays = []
    for name, im, lab in data:
        y = lab.astype(np.int64)
        if soft_labels is not None:
            if name not in soft_labels:
                raise TrainingError(f"no soft labels for case {name!r}")
            y = np.asarray(soft_labels[name], np.float32)
        arrays.append((normalise(np.asarray(im.array), plan), y))

    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    model = UNet(net_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    history: list[float] = []
    start = 0
    ckpt = out / "checkpoint.pt"
    key = {"train": cfg.key(), "plan": plan.to_json_dict(), "soft": soft_labels is not None}
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            rng.bit_generator.state = state["numpy_rng"]
            torch.set_rng_state(state["torch_rng"])
            history, start = list(state["history"]), int(state["step"])
            _say(f"resuming from step {start} ({ckpt})", quiet)
        else:
            _say(f"{ckpt} was made with other settings: starting again", quiet)
    model.train()
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.learning_rate * (1 - step / cfg.steps) ** 0.9
        xs, ys = [], []
        for _ in range(cfg.batch):
            image, label = arrays[int(rng.integers(len(arrays)))]
            img, lab = _sample_patch(image, label, plan.patch, rng, cfg.foreground_fraction)
            img, lab = _augment(img, lab, rng, cfg.warp_probability)
            xs.append(img[None])
            ys.append(lab)
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys))
        if y.dtype.is_floating_point:
            y = torch.stack([1 - y, y], dim=1)
        loss = dice_ce_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
        done = step + 1
        if not quiet and (done % 10 == 0 or done == cfg.steps):
            el = time.perf_counter() - t0
            rate = el / max(done - start, 1)
            bar = "#" * int(30 * done / cfg.steps)
            print(f"\rtrain [{bar:<30}] step {done}/{cfg.steps} loss {np.mean(history[-10:]):.4f} "
                  f"{el:.0f} s elapsed, {rate * (cfg.steps - done):.0f} s left", end="", file=sys.stderr, flush=True)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            out.mkdir(parents=True, exist_ok=True)
            with atomic_path(ckpt) as tmp:
                torch.save({"key": key, "model": model.state_dict(), "optimizer": opt.state_dict(), "step": done,
                            "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                            "history": history}, tmp)
    if not quiet:
        print(file=sys.stderr)
    info = {"schema_version": MODEL_SCHEMA, "network": net_cfg.to_json_dict(), "plan": plan.to_json_dict(),
            "fingerprint": fp.to_json_dict(), "training": {**asdict(cfg), "soft_labels": soft_labels is not None},
            "dataset": {"folder": str(dataset), "cases": [c[0] for c in cases],
                        "description": meta.get("description", "")},
            "loss_history": history, "torch": torch.__version__}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    with atomic_path(out / "model.json") as tmp:
        tmp.write_text(json.dumps(info, indent=1, default=float))
    return info


def load_model(folder):
    """``(model in eval mode, plan, model.json)`` of a model folder written by :func:`train`."""
    import torch

    from pipeline.segment.unet import UNet, UNetConfig

    folder = Path(folder)
    if not (folder / "model.json").is_file() or not (folder / "model.pt").is_file():
        raise TrainingError(f"{folder} is not a model folder: it needs model.json and model.pt (made by "
                            "'digipat segment train')")
    info = json.loads((folder / "model.json").read_text())
    net = info["network"]
    model = UNet(UNetConfig(**{**net, "deep_supervision": False}))
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    model.eval()
    return model, Plan.from_json_dict(info["plan"]), info


def model_fingerprint(folder=None) -> str:
    """SHA-256 of a model folder's weights and description (None: the shipped model)."""
    import hashlib

    folder = Path(folder) if folder is not None else SHIPPED_MODEL
    h = hashlib.sha256()
    for name in ("model.json", "model.pt"):
        f = folder / name
        if not f.is_file():
            raise TrainingError(f"{folder} is not a model folder: it needs model.json and model.pt (made by "
                                "'digipat segment train')")
        h.update(f.read_bytes())
    return h.hexdigest()
