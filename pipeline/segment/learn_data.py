"""Training data for the learned segmenter: dataset folders, fingerprint and plan, normalisation,
synthetic angiograms with known truth, and augmentation.

* **Dataset folder** in nnU-Net's layout (Isensee et al. 2021): ``imagesTr/<case>_0000.nii.gz``,
  ``labelsTr/<case>.nii.gz`` (0 background, 1 lumen) and ``dataset.json`` (``channel_names``,
  ``labels``, ``numTraining``, ``file_ending``).
* **Fingerprint**: the cases' spacings and the intensities inside the foreground (percentiles
  0.5 / 99.5, mean, standard deviation), from which the **plan** fixes the target spacing (the
  median), the patch size and the normalisation.
* **Normalisation**: ``"ct"`` clips to the foreground's 0.5-99.5 percentiles and z-scores with
  the dataset's foreground mean and deviation (absolute HU keep their meaning: robust to noise
  but not to a scanner's calibration shift); ``"zscore"`` z-scores each volume by its own mean
  and deviation (MR, whose scale is arbitrary: robust to shifts, blind to absolute level).
* **Synthetic angiograms** (:func:`synthetic_case`): :func:`phantoms.vessels.make_angiogram`
  with randomised geometry (straight, curved, bifurcation; radius, stenosis, calcium), contrast,
  noise and blur, plus the distractors real scans have: a bone-like slab brighter than the
  lumen and a second, separate vessel (labelled lumen too: the segmenter finds lumen, the
  pipeline picks the vessel).
* **Augmentation**: a smooth invertible warp (:func:`random_diffeomorphism`: a smoothed random
  velocity field integrated by scaling and squaring, its Jacobian determinant checked
  positive) applied to image and labels alike; photometric changes (noise, gamma, contrast,
  blur) to the image only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.image import Volume

__all__ = ["Fingerprint", "Plan", "fingerprint", "make_plan", "normalise", "write_dataset", "read_dataset",
           "synthetic_case", "random_diffeomorphism", "warp", "jacobian_determinant", "photometric"]

NORMALISATIONS = ("ct", "zscore")


class DatasetError(ValueError):
    """A dataset folder or case that cannot be used (the message says what is wrong)."""


# ----------------------------------------------------------------------------- dataset folder
def write_dataset(folder, cases, *, channel_name: str = "CT", description: str = "") -> Path:
    """Write ``cases`` ((name, image Volume, label Volume), ...) as an nnU-Net dataset folder."""
    from pipeline.image import write_image

    folder = Path(folder)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    n = 0
    for name, image, label in cases:
        write_image(image, folder / "imagesTr" / f"{name}_0000.nii.gz")
        write_image(label.with_array(np.asarray(label.array, np.uint8)), folder / "labelsTr" / f"{name}.nii.gz")
        n += 1
    meta = {"channel_names": {"0": channel_name}, "labels": {"background": 0, "lumen": 1},
            "numTraining": n, "file_ending": ".nii.gz", "description": description}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


def read_dataset(folder) -> tuple[dict, list[tuple[str, Path, Path]]]:
    """``(dataset.json, [(case, image path, label path), ...])`` of an nnU-Net dataset folder."""
    folder = Path(folder)
    meta_path = folder / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"{folder} is not a dataset folder: no dataset.json (nnU-Net layout: imagesTr/, "
                           "labelsTr/, dataset.json)")
    meta = json.loads(meta_path.read_text())
    ending = meta.get("file_ending", ".nii.gz")
    cases = []
    for lab in sorted((folder / "labelsTr").glob(f"*{ending}")):
        name = lab.name[: -len(ending)]
        img = folder / "imagesTr" / f"{name}_0000{ending}"
        if not img.is_file():
            raise DatasetError(f"case {name!r} has a label but no image {img}")
        cases.append((name, img, lab))
    if not cases:
        raise DatasetError(f"{folder / 'labelsTr'} holds no labels ending in {ending!r}")
    return meta, cases


# ----------------------------------------------------------------------------- fingerprint and plan
@dataclass
class Fingerprint:
    """What the dataset is: per-case spacings (mm, z y x) and the foreground's intensities."""

    spacings: list
    shapes: list
    fg_percentile_00_5: float
    fg_percentile_99_5: float
    fg_mean: float
    fg_std: float
    n_cases: int

    def to_json_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    """How the network sees the data: target spacing (mm, z y x), patch size (voxels) and the
    normalisation (``"ct"`` or ``"zscore"``) with the dataset's clip range and statistics."""

    spacing_mm: tuple
    patch: tuple
    normalisation: str
    clip: tuple
    mean: float
    std: float
    resample: bool = False

    def to_json_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json_dict(cls, d: dict) -> "Plan":
        return cls(tuple(d["spacing_mm"]), tuple(d["patch"]), d["normalisation"], tuple(d["clip"]),
                   float(d["mean"]), float(d["std"]), bool(d.get("resample", False)))


def fingerprint(cases: list[tuple[Volume, np.ndarray]], *, samples_per_case: int = 20000, seed: int = 0) -> Fingerprint:
    """The fingerprint of ``(image, label array)`` pairs (foreground intensities subsampled)."""
    rng = np.random.default_rng(seed)
    values = []
    for image, label in cases:
        fg = np.asarray(image.array, np.float64)[np.asarray(label) > 0]
        if len(fg) == 0:
            raise DatasetError("a case has no foreground voxels: every training label needs some lumen")
        values.append(rng.choice(fg, size=min(samples_per_case, len(fg)), replace=False))
    v = np.concatenate(values)
    return Fingerprint(spacings=[list(map(float, im.spacing_mm)) for im, _ in cases],
                       shapes=[list(map(int, np.asarray(im.array).shape)) for im, _ in cases],
                       fg_percentile_00_5=float(np.percentile(v, 0.5)), fg_percentile_99_5=float(np.percentile(v, 99.5)),
                       fg_mean=float(v.mean()), fg_std=float(v.std()), n_cases=len(cases))


def make_plan(fp: Fingerprint, *, normalisation: str = "ct", divisor: int = 8, max_patch_voxels: int = 48 ** 3,
              patch=None, resample: bool = False) -> Plan:
    """The plan from a fingerprint: the median spacing, the largest patch (a multiple of
    ``divisor`` per axis, at most the median shape and ``max_patch_voxels`` in all, kept near
    isotropic in mm) unless ``patch`` is given, and the normalisation's constants.

    ``resample`` (nnU-Net's choice) brings every image to the median spacing; by default the
    network works on the images' own voxels, as vessels come at every size and a wide one
    resampled to a fine grid would exceed every patch.
    """
    if normalisation not in NORMALISATIONS:
        raise DatasetError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    spacing = tuple(float(s) for s in np.median(np.asarray(fp.spacings, float), axis=0))
    if patch is None:
        shape = np.median(np.asarray(fp.shapes, float), axis=0)
        # equal extent in mm, then shrink the largest axis until the voxel budget is met
        size = np.minimum(shape, np.max(spacing) / np.asarray(spacing) * 64)
        while np.prod(size) > max_patch_voxels:
            size[np.argmax(size * spacing)] *= 0.9
        patch = tuple(int(max(divisor, divisor * (s // divisor))) for s in size)
    patch = tuple(int(p) for p in patch)
    if any(p % divisor for p in patch):
        raise DatasetError(f"patch {patch} must be a multiple of {divisor} on every axis")
    return Plan(spacing_mm=spacing, patch=patch, normalisation=normalisation,
                clip=(fp.fg_percentile_00_5, fp.fg_percentile_99_5), mean=fp.fg_mean, std=max(fp.fg_std, 1e-6),
                resample=bool(resample))


def normalise(array: np.ndarray, plan: Plan) -> np.ndarray:
    """The image as the network sees it (float32): see the module docstring."""
    a = np.asarray(array, np.float32)
    if plan.normalisation == "ct":
        a = np.clip(a, plan.clip[0], plan.clip[1])
        return ((a - plan.mean) / plan.std).astype(np.float32)
    sd = float(a.std())
    return ((a - float(a.mean())) / (sd if sd > 0 else 1.0)).astype(np.float32)


# ----------------------------------------------------------------------------- synthetic training cases
#: The held-out difficulty levels of :func:`synthetic_case` beside training's own draw:
#: (radius in voxels, lumen-tissue contrast in HU, noise sigma in HU), each drawn uniformly.
#: Training draws radius 2-10 voxels, contrast 200-550 HU, noise 5-30 HU.
DIFFICULTY = {
    False: ((2.0, 10.0), (200.0, 550.0), (5.0, 30.0)),
    # thinner, lower contrast, noisier than training, yet wide enough that the truth can be meshed:
    # the set for the pressure-drop check
    "moderate": ((1.8, 3.0), (150.0, 250.0), (30.0, 45.0)),
    # beyond: vessels 1.3-2.2 voxels with noise about equal to their contrast (segmentation check)
    True: ((1.3, 2.2), (120.0, 250.0), (25.0, 45.0)),
}


def synthetic_case(seed: int, *, shape_zyx=(48, 48, 48), spacing_mm=None, hard: bool | str = False,
                   clean: bool = False):
    """One randomised synthetic angiogram with its truth: ``(image Volume, label Volume, params)``.

    The vessel's radius is drawn in voxels (2 to 10; the network works on voxels, and real
    vessels come at every size) on an isotropic grid of 0.4 to 1.0 mm unless ``spacing_mm`` is
    given; some cases get a contrast-filled chamber the vessel comes out of (lumen too) or a
    corner of lung or air. ``hard`` draws a harder case than training sees (lower contrast, more noise,
    thinner vessels: 1.3 to 2.2 voxels; ``"moderate"``: 1.8 to 3 voxels, see :data:`DIFFICULTY`), for
    checking generalisation with seeds training never used. ``clean`` gives the same case's vessel alone, unblurred and noise-free (its
    partial-volume image has the wall at the half-maximum: the truth geometry for the physics;
    chambers and the other distractors are left out, ``params["chamber"]`` says whether the
    full case has one).
    """
    from phantoms.vessels import Calcification, Stenosis, VesselGeometryError, make_angiogram

    rng = np.random.default_rng(seed)
    geometry = str(rng.choice(["straight", "curved", "bifurcation"]))
    if spacing_mm is None:
        spacing_mm = (float(rng.uniform(0.4, 1.0)),) * 3
    if hard not in DIFFICULTY:
        raise ValueError(f"unknown difficulty {hard!r}: use one of {sorted(map(str, DIFFICULTY))}")
    r_range, contrast_range, noise_range = DIFFICULTY[hard]
    r_vox = float(rng.uniform(*r_range))
    radius = r_vox * float(min(spacing_mm[1:]))
    stenosis = Stenosis(area_reduction=float(rng.uniform(0.2, 0.75)), length_mm=float(rng.uniform(3, 8)) * radius,
                        position=float(rng.uniform(0.3, 0.7)),
                        eccentricity=float(rng.uniform(0, 1))) if rng.random() < 0.6 else None
    calc = Calcification(position=float(rng.uniform(0.3, 0.7)), length_mm=float(rng.uniform(1, 2.5)) * radius,
                         thickness_mm=float(rng.uniform(0.2, 0.5)) * radius, hu=float(rng.uniform(700, 1400))) \
        if rng.random() < 0.3 else None
    tissue = float(rng.uniform(0, 80))
    lumen = tissue + float(rng.uniform(*contrast_range))
    noise = float(rng.uniform(*noise_range))
    psf = float(rng.uniform(0.4, 1.0))
    angle = float(rng.uniform(30, 80))
    while True:
        try:
            ang = make_angiogram(geometry, shape_zyx=tuple(shape_zyx), spacing_mm=tuple(spacing_mm),
                                 radius_mm=radius, stenosis=stenosis, calcification=calc, lumen_hu=lumen,
                                 tissue_hu=tissue, psf_fwhm_mm=0.0 if clean else psf, noise_hu=0.0, seed=seed,
                                 bifurcation_angle_deg=angle)
            break
        except VesselGeometryError:
            if radius < 0.5:
                raise
            radius *= 0.85  # (a bifurcation that does not fit the field of view: thinner vessels)
    params = {"seed": seed, "geometry": geometry, "radius_mm": radius, "spacing_mm": float(spacing_mm[0]),
              "lumen_hu": lumen, "tissue_hu": tissue, "noise_hu": noise, "psf_fwhm_mm": psf,
              "stenosis": stenosis is not None, "calcium": calc is not None, "hard": hard,
              # a point in the vessel of interest, 15 % along it (before any stenosis): a user's seed
              "seed_xyz_mm": [float(v) for v in ang.centrelines_xyz_mm[0][int(0.15 * (len(ang.centrelines_xyz_mm[0]) - 1))]]}
    img = np.asarray(ang.image.array, np.float32).copy()
    lab = np.asarray(ang.lumen.array, np.uint8).copy()
    # distractors: a bone-like slab along one x face, a separate vessel near the other
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape_zyx], indexing="ij")
    if rng.random() < 0.6:
        depth = int(rng.integers(2, 5))
        slab = i < depth if rng.random() < 0.5 else i >= shape_zyx[2] - depth
        img[slab] = float(rng.uniform(600, 1300))
    grid = (k, j, i)
    if rng.random() < 0.5:  # a second vessel along any axis, anywhere clear of the first
        r2 = float(rng.uniform(1.5, 3.0))  # voxels
        axis = int(rng.integers(3))
        a, b = [ax for ax in range(3) if ax != axis]
        ca, cb = (float(rng.uniform(0.1, 0.9) * shape_zyx[a]), float(rng.uniform(0.1, 0.9) * shape_zyx[b]))
        tube = (grid[a] - ca) ** 2 + (grid[b] - cb) ** 2 <= r2 ** 2
        tube &= ~ndimage.binary_dilation(lab > 0, iterations=3)
        lab[tube] = 1
        img[tube] = lumen
    if rng.random() < 0.4:  # bone inside the field (ribs, a vertebra's edge): ellipsoids clear of the lumen
        clear = ~ndimage.binary_dilation(lab > 0, iterations=2)
        for _ in range(int(rng.integers(1, 4))):
            c = rng.uniform(0.0, 1.0, 3) * np.asarray(shape_zyx)
            ax3 = rng.uniform(1.5, 6.0, 3)
            blob = sum(((g - cc) / aa) ** 2 for g, cc, aa in zip(grid, c, ax3)) <= 1.0
            img[blob & clear] = float(rng.uniform(600, 1300))
    pool = rng.random()
    params["chamber"] = bool(pool < 0.6)
    if clean:
        return ang.image, ang.lumen, params
    start = np.asarray(ang.image.world_to_index(np.asarray(ang.centrelines_xyz_mm[0][0], float)), float)
    if pool < 0.3:  # a chamber the vessel comes out of (contrast-filled: lumen too)
        rc = min(float(rng.uniform(1.5, 3.0)) * r_vox, 0.3 * min(shape_zyx))
        ball = (k - start[0]) ** 2 + (j - start[1]) ** 2 + (i - start[2]) ** 2 <= rc ** 2
        lab[ball] = 1
        img[ball] = lumen * float(rng.uniform(0.9, 1.1))
    elif pool < 0.6:  # a blood pool larger than a patch (a heart chamber, the aortic root at 1.5 mm)
        line = np.asarray(ang.image.world_to_index(np.asarray(ang.centrelines_xyz_mm[0], float)), float)
        at = int(rng.uniform(0.25, 0.55) * (len(line) - 1))  # the vessel leaves the pool here
        _blood_pool(img, lab, (k, j, i), line[at], line[min(at + 3, len(line) - 1)], lumen, tissue, rng)
    if rng.random() < 0.3:  # lung or air in one corner
        corner = (j > shape_zyx[1] * float(rng.uniform(0.75, 0.9))) & (i > shape_zyx[2] * float(rng.uniform(0.75, 0.9)))
        corner &= ~ndimage.binary_dilation(lab > 0, iterations=2)
        img[corner] = float(rng.uniform(-900, -600))
    if psf > 0:
        img = ndimage.gaussian_filter(img, psf / 2.3548 / np.asarray(spacing_mm))
    img += np.random.default_rng(seed + 1).normal(0.0, noise, img.shape).astype(np.float32)
    return ang.image.with_array(img), ang.lumen.with_array(lab), params


def _blood_pool(img, lab, kji, start, ahead, lumen: float, tissue: float, rng) -> None:
    """Add a contrast-filled pool larger than a training patch that the vessel leaves, in place.

    On a chest CTA at 1.5 mm the heart's chambers and the aortic root are 20 to 60 voxels
    across: a patch lies wholly inside blood, where no edge is in view. The pool is an
    ellipsoid of semi-axes 0.4 to 1.1 of the grid, its surface through ``start`` (a point a
    quarter to half way along the vessel) and its centre behind it (against the vessel's
    direction, towards ``ahead``), with the uneven contrast of mixing
    (a smooth field of +-15 %, and in half the cases streaks of undiluted contrast up to 1.6
    times as bright) and, in half the cases, a septum of tissue 2 to 4 voxels thick across it.
    """
    k, j, i = kji
    shape = img.shape
    back = start - ahead
    back = back / max(float(np.linalg.norm(back)), 1e-9)
    axes = np.asarray(rng.uniform(0.4, 1.1, 3)) * min(shape)
    centre = start + back * float(axes.min()) * 0.95
    inside = ((k - centre[0]) / axes[0]) ** 2 + ((j - centre[1]) / axes[1]) ** 2 + ((i - centre[2]) / axes[2]) ** 2 <= 1.0
    field = ndimage.gaussian_filter(rng.standard_normal(shape), float(rng.uniform(3, 8)))
    field /= max(float(np.abs(field).max()), 1e-12)
    level = tissue + (lumen - tissue) * (1.0 + 0.15 * field)
    if rng.random() < 0.5:
        streak = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
        streak = np.clip(streak / max(float(streak.std()), 1e-12) - 1.5, 0, None)
        level += (lumen - tissue) * np.minimum(streak, 1.0) * float(rng.uniform(0.3, 0.6))
    septum = np.zeros(shape, bool)
    if rng.random() < 0.5:
        n = rng.standard_normal(3)
        n /= np.linalg.norm(n)
        offset = (k - centre[0]) * n[0] + (j - centre[1]) * n[1] + (i - centre[2]) * n[2]
        septum = np.abs(offset - float(rng.uniform(-0.3, 0.3)) * float(axes.min())) <= float(rng.uniform(1.0, 2.0))
        septum &= ~ndimage.binary_dilation(lab > 0, iterations=2)  # (not across the vessel itself)
    pool = inside & ~septum & (img > tissue - 1.0)  # (not into air or lung already drawn)
    lab[pool] = 1
    img[pool] = level[pool].astype(img.dtype)
    img[inside & septum] = tissue


# ----------------------------------------------------------------------------- augmentation
def random_diffeomorphism(shape, rng: np.random.Generator, *, sigma_voxels: float = 6.0,
                          max_displacement_voxels: float = 3.0, squarings: int = 6) -> np.ndarray:
    """A smooth invertible displacement field (3, *shape), voxels, array axes.

    A random velocity field (white noise smoothed by a Gaussian of ``sigma_voxels``, scaled to a
    largest displacement of about ``max_displacement_voxels``) is integrated by scaling and
    squaring (Arsigny et al. 2006): ``phi = exp(v)``, starting from ``v / 2**N`` and composing the
    map with itself N times. Its inverse is ``exp(-v)``. The Jacobian determinant is checked
    positive everywhere (a fold would tear the labels).
    """
    v = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma_voxels) for _ in shape])
    v *= max_displacement_voxels / max(float(np.abs(v).max()), 1e-12)
    u = v / 2 ** squarings
    grid = np.indices(shape, dtype=np.float64)
    for _ in range(squarings):
        u = u + np.stack([ndimage.map_coordinates(c, grid + u, order=1, mode="nearest") for c in u])
    det = jacobian_determinant(u)
    if det.min() <= 0:
        raise ValueError(f"the warp folds (Jacobian determinant {det.min():.3g} <= 0): use a smoother or "
                         "smaller velocity field")
    return u


def jacobian_determinant(u: np.ndarray) -> np.ndarray:
    """det(I + grad u) of a displacement field (3, *shape) or (2, *shape) in voxels."""
    n = u.shape[0]
    grads = [np.gradient(u[a]) for a in range(n)]
    jac = np.empty(u.shape[1:] + (n, n))
    for a in range(n):
        for b in range(n):
            jac[..., a, b] = (a == b) + grads[a][b]
    return np.linalg.det(jac)


def warp(array: np.ndarray, u: np.ndarray, *, order: int) -> np.ndarray:
    """``array`` sampled at x + u(x) (``order`` 1 for images, 0 for labels)."""
    grid = np.indices(array.shape, dtype=np.float64)
    return ndimage.map_coordinates(array, grid + u, order=order, mode="nearest").astype(array.dtype)


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Image-only changes (on a normalised image): contrast (x 0.75-1.25), gamma (0.7-1.5 on the
    image rescaled to [0, 1]), Gaussian blur (sigma 0-1 voxel) and extra noise (0-0.1)."""
    a = np.asarray(image, np.float32)
    mean = float(a.mean())
    a = (a - mean) * float(rng.uniform(0.75, 1.25)) + mean
    lo, hi = float(a.min()), float(a.max())
    if hi > lo:
        a = lo + (hi - lo) * ((a - lo) / (hi - lo)) ** float(rng.uniform(0.7, 1.5))
    s = float(rng.uniform(0.0, 1.0))
    if s > 0.1:
        a = ndimage.gaussian_filter(a, s)
    return (a + rng.normal(0.0, float(rng.uniform(0.0, 0.1)), a.shape)).astype(np.float32)
