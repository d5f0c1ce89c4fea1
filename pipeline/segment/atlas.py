"""Atlas segmentation: register a labelled image to a patient's image and carry its labels over.

The atlas (an image with its label map, e.g. a reference phantom rendered as a CT,
:func:`phantoms.render.render_ct`) is registered to the patient's image with SimpleITK
(Mattes mutual information, so the two need not share intensity scales):

1. **z alignment** (optional, for a scan that covers part of the body): the patient's slab
   slid along the atlas in 10 mm steps at 8 mm resolution, each placement scored by mutual
   information; the best one says where the patient's slices lie in the atlas, which is then
   cropped to them with a margin;
2. **affine**: initialised at the centres of the two bodies, then optimised at three
   resolutions (shrink 4, 2, 1; smoothing 2, 1, 0 voxels);
3. **deformable**: diffeomorphic demons on the affinely aligned images after histogram
   matching (``"demons"``, the default: a smooth invertible field, Gaussian regularisation of
   ``demons_sigma_mm``), or a cubic B-spline over a control grid of about
   ``bspline_spacing_mm`` optimised by L-BFGS-B at three resolutions (``"bspline"``; about ten
   times slower here for a worse match on the synthetic check), or none.

The labels are carried over with nearest-neighbour interpolation. Several atlases are fused
by majority vote (:func:`pipeline.segment.raters`'s SimpleITK label voting) or by multi-label
STAPLE. Each registration reports its similarity (mutual information, negative: lower is
better, before and after), the Jacobian determinant of the deformable part on the patient's
grid (range, and the fraction of voxels where it is <= 0: folding) and its run time.
Random sampling of the metric is seeded and its sums run on one thread, so a rerun gives the
same transform.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipeline.image import Volume, from_sitk, to_sitk

__all__ = ["AtlasError", "Registration", "register", "warp_labels", "fuse_labels", "z_alignment",
           "DEFORMABLE"]

DEFORMABLE = ("bspline", "demons", "none")


class AtlasError(ValueError):
    """Bad input to atlas segmentation (the message names it and what to do)."""


@dataclass
class Registration:
    """A registration's result: ``transform`` maps patient (fixed) points to atlas (moving) points."""

    transform: object
    report: dict = field(default_factory=dict)


#: CT numbers above this are clipped for the similarity (bone's CT numbers differ most between a
#: scanner and a rendered atlas; its shape is what counts).
WINDOW_HU = 600.0


def _body_centre_xy(v: Volume, k0: int = 0, k1: int | None = None) -> np.ndarray:
    a = np.asarray(v.array)[k0:k1] > -500
    if not a.any():
        raise AtlasError("no tissue (above -500 HU) in the image or the atlas slab")
    kk, jj, ii = np.nonzero(a)
    return np.asarray(v.index_to_world([float(kk.mean()) + k0, float(jj.mean()), float(ii.mean())]), float)


def lung_base_z(v: Volume, min_area_cm2: float = 5.0, min_volume_cm3: float = 20.0) -> float | None:
    """World z (mm) of the lowest slice where the lungs show (None without lungs).

    Lungs: voxels of -950 to -600 HU inside the body, opened by one voxel (the partial-volume
    rims of bowel gas and skin go), in connected pieces of at least ``min_volume_cm3``; the base
    is the lowest slice where they cover ``min_area_cm2``.
    """
    hu = np.asarray(v.array, np.float32)
    body = np.stack([ndimage.binary_fill_holes(s) for s in (hu > -500)])
    lung = ndimage.binary_opening(body & (hu > -950) & (hu < -600), iterations=1)
    lab, n = ndimage.label(lung)
    if not n:
        return None
    vox_cm3 = float(np.prod(v.spacing_mm)) / 1000.0
    sizes = ndimage.sum_labels(lung, lab, index=np.arange(1, n + 1)) * vox_cm3
    keep = np.isin(lab, 1 + np.nonzero(sizes >= min_volume_cm3)[0])
    area = keep.sum(axis=(1, 2)) * v.spacing_mm[1] * v.spacing_mm[2] / 100.0
    ks = np.nonzero(area >= min_area_cm2)[0]
    if not ks.size:
        return None
    zs = [v.index_to_world([float(k), 0, 0])[2] for k in ks]
    return float(min(zs))


def z_alignment(patient: Volume, atlas: Volume, step_mm: float = 10.0, resolution_mm: float = 8.0) -> dict:
    """Where the patient's slices lie along the atlas's z axis, for a CT that covers part of the body.

    Where both show the base of the lungs (:func:`lung_base_z`; the diaphragm is the trunk's
    clearest landmark along z) the two bases are put together. Otherwise every placement of
    the patient's first slice along the atlas (steps of ``step_mm``) is scored by the Mattes
    mutual information of the two images, both resampled to ``resolution_mm`` and clipped at
    :data:`WINDOW_HU`, with the bodies' centres aligned in x and y, and the best placement
    wins (a weak guide: the body's outline dominates it). Returns
    ``{"atlas_z_of_first_slice_mm", "method", "patient_extent_mm", ...}``.
    """
    import SimpleITK as sitk

    zs_p = [patient.index_to_world([float(k), 0, 0])[2] for k in (0, patient.shape[0] - 1)]
    extent = abs(zs_p[1] - zs_p[0])
    base_p, base_a = lung_base_z(patient), lung_base_z(atlas)
    if base_p is not None and base_a is not None and base_p - min(zs_p) > 2 * resolution_mm:
        return {"atlas_z_of_first_slice_mm": float(base_a - (base_p - min(zs_p))), "method": "lung base",
                "patient_lung_base_mm": base_p, "atlas_lung_base_mm": base_a, "patient_extent_mm": float(extent)}

    def coarse(v: Volume):
        img = to_sitk(v.with_array(np.asarray(v.array, np.float32)))
        size = [max(4, int(round(sz * sp / resolution_mm))) for sz, sp in zip(img.GetSize(), img.GetSpacing())]
        spacing = [sz * sp / n for sz, sp, n in zip(img.GetSize(), img.GetSpacing(), size)]
        return sitk.Resample(sitk.SmoothingRecursiveGaussian(img, resolution_mm / 2), size, sitk.Transform(),
                             sitk.sitkLinear, img.GetOrigin(), spacing, img.GetDirection(), -1000.0, sitk.sitkFloat32)

    fx, mv = (sitk.Clamp(coarse(v), sitk.sitkFloat32, -1000.0, WINDOW_HU) + 1000.0 for v in (patient, atlas))
    body = np.nonzero((np.asarray(atlas.array) > -500).any(axis=(1, 2)))[0]
    za = sorted(atlas.index_to_world([float(k), 0, 0])[2] for k in (body[0], body[-1]))
    if extent > za[1] - za[0]:
        raise AtlasError(f"the patient image ({extent:.0f} mm along z) is longer than the atlas's body "
                         f"({za[1] - za[0]:.0f} mm)")
    c_p = _body_centre_xy(patient)
    R = sitk.ImageRegistrationMethod()
    R.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    R.SetInterpolator(sitk.sitkLinear)
    best = (np.inf, za[0])
    zlow = min(zs_p)
    for z0 in np.arange(za[0], za[1] - extent + 1e-6, step_mm):
        ks = [int(round(atlas.world_to_index([0.0, 0.0, z])[0])) for z in (z0, z0 + extent)]
        c_a = _body_centre_xy(atlas, max(0, min(ks)), max(ks) + 1)
        shift = (float(c_a[0] - c_p[0]), float(c_a[1] - c_p[1]), float(z0 - zlow))
        R.SetInitialTransform(sitk.TranslationTransform(3, shift))
        try:
            mi = R.MetricEvaluate(fx, mv)
        except RuntimeError:  # (too little overlap at this placement)
            continue
        if mi < best[0]:
            best = (mi, float(z0))
    return {"atlas_z_of_first_slice_mm": best[1], "method": "mutual information",
            "mutual_information": float(best[0]), "patient_extent_mm": float(extent)}


#: Voxels the metric samples at each resolution (at most; a random, seeded subset).
METRIC_SAMPLES = 40000


def _fraction(img) -> float:
    n = float(np.prod(img.GetSize()))
    return float(min(0.5, METRIC_SAMPLES / n))


def _mi_registration(fx, seed: int):
    """A registration method on Mattes MI with seeded random sampling, its sums on one thread (the
    same transform on every run; SimpleITK's seed 0 would be the wall clock, hence seed + 1)."""
    import SimpleITK as sitk

    R = sitk.ImageRegistrationMethod()
    R.SetNumberOfThreads(1)
    R.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    R.SetMetricSamplingStrategy(R.RANDOM)
    R.SetMetricSamplingPercentage(_fraction(fx), seed + 1)
    R.SetInterpolator(sitk.sitkLinear)
    return R


def _classes(img):
    """CT numbers as tissue classes (air 0, lung 1, fat 2, soft tissue 3, bone 4), x 100, for the
    linear stage: each class then weighs alike in the similarity, whatever the scanner's numbers."""
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(img)
    c = np.digitize(a, [-950.0, -400.0, -50.0, 250.0]).astype(np.float32) * 100.0
    out = sitk.GetImageFromArray(c)
    out.CopyInformation(img)
    return sitk.SmoothingRecursiveGaussian(out, float(max(img.GetSpacing())))


def _register_affine(fixed, moving, seed: int, iterations: int, linear: str = "affine", initial_shift=None,
                     centre=None):
    import SimpleITK as sitk

    fx, mv = _classes(fixed), _classes(moving)
    if initial_shift is not None:
        init = sitk.AffineTransform(3) if linear == "affine" else sitk.Similarity3DTransform()
        init.SetCenter(tuple(float(v) for v in centre))
        init.SetTranslation(tuple(float(v) for v in initial_shift))
    else:
        init = sitk.CenteredTransformInitializer(sitk.Threshold(fx, 150.0, 1e9, 0.0), sitk.Threshold(mv, 150.0, 1e9, 0.0),
                                                 sitk.AffineTransform(3) if linear == "affine"
                                                 else sitk.Similarity3DTransform(),
                                                 sitk.CenteredTransformInitializerFilter.MOMENTS)
    R = _mi_registration(fx, seed)
    R.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=iterations,
                                               gradientMagnitudeTolerance=1e-6)
    R.SetOptimizerScalesFromPhysicalShift()
    R.SetShrinkFactorsPerLevel([4, 2, 1])
    R.SetSmoothingSigmasPerLevel([2, 1, 0])
    R.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    R.SetInitialTransform(init, inPlace=False)
    before = R.MetricEvaluate(fx, mv)
    tx = R.Execute(fx, mv)
    return tx, before, R.GetMetricValue()


def _register_bspline(fixed, moving, affine, spacing_mm: float, seed: int, iterations: int):
    import SimpleITK as sitk

    fx = sitk.Cast(fixed, sitk.sitkFloat32) + 1000.0
    mv = sitk.Resample(sitk.Cast(moving, sitk.sitkFloat32) + 1000.0, fixed, affine, sitk.sitkLinear, 0.0)
    size_mm = [sz * sp for sz, sp in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [max(1, int(round(s / spacing_mm))) for s in size_mm]
    bs = sitk.BSplineTransformInitializer(fx, mesh, order=3)
    R = _mi_registration(fx, seed)
    R.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=iterations,
                           maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * iterations)
    R.SetShrinkFactorsPerLevel([4, 2, 1])
    R.SetSmoothingSigmasPerLevel([2, 1, 0])
    R.SetInitialTransform(bs, inPlace=True)
    before = R.MetricEvaluate(fx, mv)
    R.Execute(fx, mv)
    return bs, before, R.GetMetricValue()


def _register_demons(fixed, moving, affine, iterations: int, sigma_mm: float):
    import SimpleITK as sitk

    fx = sitk.Cast(fixed, sitk.sitkFloat32)
    mv = sitk.Resample(sitk.Cast(moving, sitk.sitkFloat32), fixed, affine, sitk.sitkLinear, -1000.0)
    mv = sitk.HistogramMatching(mv, fx, numberOfHistogramLevels=256, numberOfMatchPoints=16)
    d = sitk.DiffeomorphicDemonsRegistrationFilter()
    d.SetNumberOfThreads(1)  # (its global statistics in one order: the same field on every run)
    d.SetNumberOfIterations(iterations)
    d.SetSmoothDisplacementField(True)
    d.SetStandardDeviations(sigma_mm / min(fixed.GetSpacing()))
    field_img = d.Execute(fx, mv)
    return sitk.DisplacementFieldTransform(sitk.Cast(field_img, sitk.sitkVectorFloat64)), d.GetMetric()


def _jacobian(transform, fixed) -> dict:
    import SimpleITK as sitk

    disp = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(),
                                             fixed.GetSpacing(), fixed.GetDirection())
    jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(disp))
    return {"jacobian_min": float(jac.min()), "jacobian_max": float(jac.max()),
            "folding_fraction": float(np.mean(jac <= 0.0))}


def register(patient: Volume, atlas_image: Volume, *, deformable: str = "demons", bspline_spacing_mm: float = 60.0,
             seed: int = 0, iterations: int = 100, demons_sigma_mm: float = 6.0, linear: str = "affine",
             atlas_z_of_first_slice_mm: float | None = None) -> Registration:
    """Register ``atlas_image`` (moving) to ``patient`` (fixed); both CT-like (HU). Module docstring.

    ``linear``: ``"affine"`` or ``"similarity"`` (rotation, one scale, shift: for a CT of part
    of the body, where an affine's stretch along z is poorly held). With
    ``atlas_z_of_first_slice_mm`` (:func:`z_alignment`) the linear stage starts from that
    placement, the bodies' centres aligned in x and y; else from the bodies' centres of mass.
    """
    import SimpleITK as sitk

    if deformable not in DEFORMABLE:
        raise AtlasError(f"deformable must be one of {DEFORMABLE}, got {deformable!r}")
    for name, v in (("patient", patient), ("atlas", atlas_image)):
        a = np.asarray(v.array)
        if a.ndim != 3 or min(a.shape) < 4:
            raise AtlasError(f"the {name} image must be 3-D with at least 4 voxels per axis, got shape {a.shape}")
        if not np.any(a > -500):
            raise AtlasError(f"the {name} image holds no tissue (nothing above -500 HU): is it a CT in HU?")
    t0 = time.perf_counter()
    fixed, moving = to_sitk(patient.with_array(np.asarray(patient.array, np.float32))), \
        to_sitk(atlas_image.with_array(np.asarray(atlas_image.array, np.float32)))
    shift = centre = None
    if atlas_z_of_first_slice_mm is not None:
        c_p = _body_centre_xy(patient)
        z_first = min(patient.index_to_world([float(k), 0, 0])[2] for k in (0, patient.shape[0] - 1))
        dz = float(atlas_z_of_first_slice_mm) - z_first
        ks = [int(round(atlas_image.world_to_index([0.0, 0.0, c_p[2] + dz])[0]))]
        c_a = _body_centre_xy(atlas_image, max(0, ks[0] - 5), ks[0] + 6)
        shift, centre = (float(c_a[0] - c_p[0]), float(c_a[1] - c_p[1]), dz), c_p
    if linear not in ("affine", "similarity"):
        raise AtlasError(f"linear must be 'affine' or 'similarity', got {linear!r}")
    affine, mi0, mi1 = _register_affine(fixed, moving, seed, iterations, linear, shift, centre)
    report = {"metric": "Mattes mutual information of tissue classes (negative; lower is better)",
              "mi_initial": float(mi0), "mi_affine": float(mi1), "linear": linear, "deformable": deformable}
    transform = affine
    if deformable == "bspline":
        bs, _, mi2 = _register_bspline(fixed, moving, affine, bspline_spacing_mm, seed, iterations)
        transform = sitk.CompositeTransform([affine, bs])
        report.update(mi_deformable=float(mi2), bspline_spacing_mm=bspline_spacing_mm, **_jacobian(bs, fixed))
    elif deformable == "demons":
        dfield, mse = _register_demons(fixed, moving, affine, iterations, demons_sigma_mm)
        transform = sitk.CompositeTransform([affine, dfield])
        report.update(demons_mse=float(mse), demons_sigma_mm=demons_sigma_mm, **_jacobian(dfield, fixed))
    report["seconds"] = time.perf_counter() - t0
    return Registration(transform, report)


def warp_labels(labels: Volume, registration: Registration, reference: Volume) -> Volume:
    """The atlas labels carried onto ``reference``'s grid (nearest neighbour; outside the atlas: 0)."""
    import SimpleITK as sitk

    img = to_sitk(labels.with_array(np.asarray(labels.array).astype(np.int32)))
    ref = to_sitk(reference.with_array(np.zeros(reference.shape, np.int32)))
    out = sitk.Resample(img, ref, registration.transform, sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
    return from_sitk(out)


def fuse_labels(label_maps: list[Volume], method: str = "majority") -> Volume:
    """Fuse label maps on one grid: ``"majority"`` (ties: label 0) or ``"staple"`` (multi-label STAPLE)."""
    import SimpleITK as sitk

    if not label_maps:
        raise AtlasError("no label maps to fuse")
    if len(label_maps) == 1:
        return label_maps[0]
    imgs = [sitk.Cast(to_sitk(v.with_array(np.asarray(v.array).astype(np.uint16))), sitk.sitkUInt16)
            for v in label_maps]
    if method == "majority":
        out = sitk.LabelVoting(imgs, 0)
    elif method == "staple":
        f = sitk.MultiLabelSTAPLEImageFilter()
        f.SetLabelForUndecidedPixels(0)
        out = f.Execute(imgs)
    else:
        raise AtlasError(f"fusion must be 'majority' or 'staple', got {method!r}")
    return from_sitk(sitk.Cast(out, sitk.sitkInt32))
