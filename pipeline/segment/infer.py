"""Applying a trained U-Net to a whole image: sliding windows with Gaussian blending, on the CPU.

The image is resampled to the plan's spacing when the plan says so (else the network works on
the image's own voxels, as in training), normalised as in training, and covered by
patches with 50 % overlap (nnU-Net's default step of half a patch). Each patch's softmax is
weighted by a Gaussian centred on the patch (sigma = patch / 8 per axis: the border, where a
convolution sees padding, counts little) and the weighted sum is divided by the summed
weights. ``mirror`` averages the prediction over the 2^d flips of each patch (test-time
augmentation). The probability of the lumen, on the image's grid (resampled back, linear,
when it was resampled), is thresholded at 0.5. A window that is constant after normalisation
(CT clips everything below the lumen's 0.5th percentile to one value: air, fat, most tissue) is
the same input every time, so the network runs on it once and its answer is reused: exact,
and most of a large CT's windows are such.
"""

from __future__ import annotations

import itertools
import sys
import time

import numpy as np
from scipy import ndimage

from pipeline.image import Volume
from pipeline.segment.learn_data import Plan, normalise

__all__ = ["gaussian_importance", "window_starts", "predict_probability", "predict_volume"]


def gaussian_importance(patch, sigma_scale: float = 1.0 / 8.0) -> np.ndarray:
    """Gaussian weights over a patch (sigma = ``sigma_scale`` x size per axis), max 1, floor at the
    smallest positive value (so every voxel has a weight)."""
    grids = np.meshgrid(*[np.arange(p, dtype=np.float64) for p in patch], indexing="ij")
    w = np.exp(-sum(((g - (p - 1) / 2) / (sigma_scale * p)) ** 2 for g, p in zip(grids, patch)) / 2)
    w /= w.max()
    w[w == 0] = w[w > 0].min()
    return w.astype(np.float32)


def window_starts(size: int, patch: int, overlap: float = 0.5) -> list[int]:
    """Patch starts covering ``size`` with steps of at most ``(1 - overlap) * patch``, the last flush
    with the end (one window at 0 when the image is not larger than the patch)."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    n = int(np.ceil((size - patch) / step)) + 1
    return [int(round(v)) for v in np.linspace(0, size - patch, n)]


def predict_probability(model, image: np.ndarray, patch, *, overlap: float = 0.5, mirror: bool = False,
                        quiet: bool = True) -> np.ndarray:
    """Lumen probability of a normalised image (on the plan's grid) by sliding windows."""
    import torch

    arr = np.asarray(image, np.float32)
    patch = tuple(int(p) for p in patch)
    pad = [(0, max(0, p - s)) for s, p in zip(arr.shape, patch)]
    arr_p = np.pad(arr, pad, mode="edge")
    acc = np.zeros(arr_p.shape, np.float32)
    wsum = np.zeros(arr_p.shape, np.float32)
    w = gaussian_importance(patch)
    starts = list(itertools.product(*[window_starts(s, p, overlap) for s, p in zip(arr_p.shape, patch)]))
    flips = [()] + ([c for r in range(1, arr.ndim + 1) for c in itertools.combinations(range(2, 2 + arr.ndim), r)]
                    if mirror else [])
    t0 = time.perf_counter()
    constant: dict[float, np.ndarray] = {}  # the network's answer on a constant window, by its value
    with torch.inference_mode():
        for n, st in enumerate(starts):
            sl = tuple(slice(a, a + p) for a, p in zip(st, patch))
            window = arr_p[sl]
            lo = float(window.min())
            if lo == float(window.max()) and lo in constant:
                prob = constant[lo]  # (clipped air and tissue: the same input, the same answer)
            else:
                x = torch.from_numpy(np.ascontiguousarray(window))[None, None]
                prob = 0.0
                for f in flips:
                    xf = torch.flip(x, f) if f else x
                    p = torch.softmax(model(xf), dim=1)
                    prob = prob + (torch.flip(p, f) if f else p)
                prob = (prob / len(flips))[0, 1].numpy()
                if lo == float(window.max()):
                    constant[lo] = prob
            acc[sl] += prob * w
            wsum[sl] += w
            if not quiet and (n + 1) % 10 == 0:
                print(f"\rpredict: window {n + 1}/{len(starts)}, {time.perf_counter() - t0:.0f} s", end="",
                      file=sys.stderr, flush=True)
    if not quiet:
        print(file=sys.stderr)
    out = acc / wsum
    return out[tuple(slice(0, s) for s in arr.shape)]


def predict_volume(model, plan: Plan, image: Volume, *, mirror: bool = False, quiet: bool = True) -> tuple[Volume, Volume]:
    """``(lumen probability, lumen mask)`` on the image's grid (float32 in [0, 1], uint8)."""
    arr = np.asarray(image.array, np.float32)
    zoom = np.asarray(image.spacing_mm, float) / np.asarray(plan.spacing_mm, float)
    resample = plan.resample and not np.allclose(zoom, 1.0, rtol=0.05)
    a = ndimage.zoom(arr, zoom, order=1) if resample else arr
    prob = predict_probability(model, normalise(a, plan), plan.patch, mirror=mirror, quiet=quiet)
    if resample:
        prob = ndimage.zoom(prob, np.asarray(arr.shape) / np.asarray(prob.shape), order=1)
        prob = prob[tuple(slice(0, s) for s in arr.shape)]
        if prob.shape != arr.shape:  # (rounding of the zoomed shape)
            prob = np.pad(prob, [(0, s - q) for s, q in zip(arr.shape, prob.shape)], mode="edge")
    prob = np.clip(prob, 0.0, 1.0).astype(np.float32)
    return image.with_array(prob), image.with_array((prob > 0.5).astype(np.uint8))


#: The CT levels an MR image is mapped onto for a model trained on CT numbers: tissue, and the
#: middle of the training lumen's contrast (200 to 550 HU above tissue).
CT_TISSUE_HU, CT_LUMEN_HU = 40.0, 415.0


def standardise_for_model(image: Volume, plan: Plan, modality: str) -> tuple[Volume, dict | None]:
    """The image on the intensity scale the model was trained on: ``(image, record)``.

    A model normalised as ``"ct"`` reads CT numbers; an MR angiogram's signal has no fixed
    scale. Its two landmarks, the tissue and the lumen levels (as the classical MR segmenter
    measures them, else the image's median and 99.5th percentile), are mapped linearly onto
    CT's tissue (40 HU) and a lumen in the middle of the training contrast (415 HU): the
    two-landmark form of Nyul and Udupa's (1999) histogram standardisation. Other pairings
    are returned unchanged (record None): CT on a CT model, and any image on a ``"zscore"``
    model (normalised per volume anyway).
    """
    if plan.normalisation != "ct" or modality != "mr":
        return image, None
    from pipeline.segment.classical import SegmentationError, segment_lumen

    arr = np.asarray(image.array, np.float32)
    try:
        seg = segment_lumen(arr, spacing_mm=image.spacing_mm, modality="mr")
        tissue, lumen, how = float(seg.tissue_hu), float(seg.lumen_hu), "classical MR levels"
    except SegmentationError:
        tissue, lumen, how = float(np.median(arr)), float(np.percentile(arr, 99.5)), "median, 99.5th percentile"
    if not lumen > tissue:
        raise SegmentationError(f"the MR image's lumen level ({lumen:.4g}) is not above its tissue level "
                                f"({tissue:.4g}): is it a bright-blood angiogram?")
    gain = (CT_LUMEN_HU - CT_TISSUE_HU) / (lumen - tissue)
    record = {"from": "mr", "landmarks": how, "tissue": tissue, "lumen": lumen,
              "to_tissue_hu": CT_TISSUE_HU, "to_lumen_hu": CT_LUMEN_HU}
    return image.with_array((CT_TISSUE_HU + (arr - tissue) * gain).astype(np.float32)), record


def segment_lumen_learned(image: Volume, *, model_dir=None, seed_index_zyx=None, modality: str = "auto",
                          quiet: bool = True):
    """The lumen of the vessel by a trained U-Net, as a :class:`~pipeline.segment.classical.LumenSegmentation`.

    The network decides which voxels are lumen (vessel against bone, calcium and tissue); the
    vessel is the piece holding ``seed_index_zyx`` (or the nearest piece to it), else the largest
    piece (on a chest CTA the heart with the great vessels: the flow path then follows the vessel
    in it, as with the classical segmentation). The wall's level for the sub-voxel surface
    is then measured in the image as for the classical methods: halfway between the lumen (the
    median inside the piece, one voxel in) and the tissue around it (the median of a shell two
    to five voxels out, below that lumen level); on CT the calcium bound is the lumen plus 0.75
    of the contrast. An MR image given to a CT-trained model is first standardised onto its
    scale (:func:`standardise_for_model`). ``model_dir`` None: the model shipped with digipat. ``probability`` (the
    network's lumen probability, float32) is added to the result's attributes.
    """
    from pipeline.segment.classical import (CALCIUM_UPPER_FRACTION, MODALITIES, LumenSegmentation,
                                            SegmentationError, detect_modality, fill_holes)
    from pipeline.segment.train import SHIPPED_MODEL, load_model

    model_dir = SHIPPED_MODEL if model_dir is None else model_dir
    arr = np.asarray(image.array, np.float32)
    if modality not in MODALITIES:
        raise SegmentationError(f"modality must be one of {MODALITIES}, got {modality!r}")
    modality = detect_modality(arr) if modality == "auto" else modality
    model, plan, _ = load_model(model_dir)
    scaled, standardised = standardise_for_model(image, plan, modality)
    prob, mask = predict_volume(model, plan, scaled, quiet=quiet)
    binary = np.asarray(mask.array) > 0
    st = ndimage.generate_binary_structure(3, 1)
    labels, n = ndimage.label(binary, structure=st)
    if n == 0:
        raise SegmentationError(f"the U-Net ({model_dir}) found no lumen in the image: check that it is an "
                                "angiogram of the kind the model was trained on, or use --segmentation auto")
    notes = []
    if seed_index_zyx is not None:
        seed = tuple(int(v) for v in seed_index_zyx)
        lab = int(labels[seed])
        if lab == 0:
            _, idx = ndimage.distance_transform_edt(labels == 0, return_indices=True)
            lab = int(labels[tuple(int(idx[a][seed]) for a in range(3))])
            notes.append(f"seed voxel {seed} is not in the U-Net's lumen; used the nearest piece")
    else:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        sizes[0] = 0
        lab = int(np.argmax(sizes))
    piece = fill_holes(labels == lab)
    core = ndimage.binary_erosion(piece, st)
    lumen = float(np.median(arr[core if core.sum() >= 10 else piece]))
    shell = ndimage.binary_dilation(piece, st, iterations=5) & ~ndimage.binary_dilation(piece, st, iterations=2)
    shell &= arr < lumen
    tissue = float(np.median(arr[shell])) if shell.any() else float(np.percentile(arr, 10))
    level = 0.5 * (lumen + tissue)
    upper = lumen + CALCIUM_UPPER_FRACTION * (lumen - tissue) if modality == "ct" else None
    seg = LumenSegmentation(mask=piece, level_hu=level, lower_hu=level, upper_hu=upper,
                            seed_index_zyx=None if seed_index_zyx is None else tuple(int(v) for v in seed_index_zyx),
                            method="unet", volume_mm3=float(piece.sum()) * float(np.prod(image.spacing_mm)),
                            n_candidate_components=int(n), tissue_hu=tissue, lumen_hu=lumen, notes=notes,
                            modality=modality)
    seg.probability = np.asarray(prob.array, np.float32)
    if standardised is not None:
        seg.notes.append(f"MR signal mapped onto the model's CT scale (tissue {standardised['tissue']:.4g} -> "
                         f"{CT_TISSUE_HU:g}, lumen {standardised['lumen']:.4g} -> {CT_LUMEN_HU:g})")
    return seg

