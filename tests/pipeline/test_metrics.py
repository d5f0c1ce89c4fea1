"""Segmentation metrics against exact and analytic values (boxes, spheres, shifted masks)."""

import json
import math

import numpy as np
import pytest

from pipeline.metrics import (
    MetricError,
    assd,
    confusion,
    dice,
    hausdorff,
    precision,
    segmentation_report,
    sensitivity,
    specificity,
    surface_voxels,
)


def _box(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def _sphere(shape, centre, radius):
    zz, yy, xx = np.indices(shape, dtype=float)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2


def _lens_volume(r, d):
    """Intersection volume of two spheres of equal radius r whose centres are d apart."""
    return math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12.0


def test_confusion_and_ratios_of_two_boxes_are_exact():
    shape = (10, 10, 10)
    truth = _box(shape, (0, 0, 0), (4, 5, 5))  # 100 voxels
    pred = _box(shape, (2, 0, 0), (6, 5, 5))  # 100 voxels, 50 shared
    c = confusion(pred, truth)
    assert c == dict(tp=50, fp=50, tn=850, fn=50)
    assert dice(pred, truth) == pytest.approx(0.5)
    assert sensitivity(pred, truth) == pytest.approx(0.5)
    assert precision(pred, truth) == pytest.approx(0.5)
    assert specificity(pred, truth) == pytest.approx(850 / 900)
    assert dice(truth, truth) == 1.0
    assert dice(truth, ~truth) == 0.0


def test_dice_of_overlapping_spheres_matches_lens_volume():
    r, d = 10.0, 8.0
    shape = (30, 30, 42)
    a = _sphere(shape, (14.5, 14.5, 16.5), r)
    b = _sphere(shape, (14.5, 14.5, 16.5 + d), r)
    exact = 2 * _lens_volume(r, d) / (2 * 4 / 3 * math.pi * r**3)  # = 0.432
    measured = dice(a, b)
    assert measured == pytest.approx(exact, rel=0.01)


def test_hausdorff_of_concentric_spheres_is_radius_difference():
    shape = (32, 32, 32)
    c = (15.5, 15.5, 15.5)
    inner, outer = _sphere(shape, c, 8.0), _sphere(shape, c, 12.0)
    hd = hausdorff(inner, outer, spacing_mm=(1, 1, 1), percentile=100)
    assert abs(hd - 4.0) < 1.0
    hd95 = hausdorff(inner, outer, spacing_mm=(1, 1, 1))
    assert abs(hd95 - 4.0) < 1.0 and hd95 <= hd
    assert abs(assd(inner, outer, spacing_mm=(1, 1, 1)) - 4.0) < 1.0
    # doubling the spacing doubles every distance
    assert hausdorff(inner, outer, spacing_mm=(2, 2, 2), percentile=100) == pytest.approx(2 * hd)


@pytest.mark.parametrize("axis, expected_mm", [(0, 4.0), (1, 2.0), (2, 2.0)])
def test_shifted_box_distance_respects_anisotropic_spacing(axis, expected_mm):
    shape = (24, 24, 24)
    lo, hi = [6, 6, 6], [14, 14, 14]
    a = _box(shape, lo, hi)
    lo[axis] += 2
    hi[axis] += 2
    b = _box(shape, lo, hi)
    spacing = (2.0, 1.0, 1.0)
    assert hausdorff(a, b, spacing_mm=spacing, percentile=100) == pytest.approx(expected_mm)
    assert hausdorff(b, a, spacing_mm=spacing, percentile=100) == pytest.approx(expected_mm)
    # most surface voxels on the side faces are shared: ASSD is well below the maximum
    assert 0 < assd(a, b, spacing_mm=spacing) < expected_mm


def test_identical_masks_have_zero_distance():
    m = _sphere((20, 20, 20), (9.5, 9.5, 9.5), 6.0)
    assert hausdorff(m, m, spacing_mm=(1, 1, 1)) == 0.0
    assert assd(m, m, spacing_mm=(0.5, 1, 2)) == 0.0


def test_surface_voxels_of_a_box_are_its_faces():
    m = _box((10, 10, 10), (2, 2, 2), (7, 7, 7))  # 5^3 box: 125 - 3^3 interior
    assert surface_voxels(m).sum() == 125 - 27


def test_empty_structures_give_nan_not_errors():
    empty = np.zeros((6, 6, 6), dtype=bool)
    full = np.ones((6, 6, 6), dtype=bool)
    some = _box((6, 6, 6), (1, 1, 1), (3, 3, 3))
    assert math.isnan(dice(empty, empty))
    assert dice(some, empty) == 0.0
    assert math.isnan(sensitivity(some, empty))
    assert math.isnan(precision(empty, some))
    assert math.isnan(specificity(some, full))
    assert math.isnan(hausdorff(empty, some, spacing_mm=(1, 1, 1)))
    assert math.isnan(assd(some, empty, spacing_mm=(1, 1, 1)))
    rep = segmentation_report(empty, some, spacing_mm=(1, 1, 1))
    assert math.isnan(rep["hd95_mm"]) and rep["dice"] == 0.0 and rep["fn"] == 8


def test_report_is_json_friendly_and_consistent():
    a = _sphere((24, 24, 24), (11.5, 11.5, 11.5), 7.0)
    b = _sphere((24, 24, 24), (11.5, 11.5, 12.5), 7.0)
    sp = (1.5, 0.8, 0.8)
    rep = segmentation_report(a, b, spacing_mm=sp)
    json.dumps(rep)
    assert rep["dice"] == pytest.approx(dice(a, b))
    assert rep["hd95_mm"] == pytest.approx(hausdorff(a, b, spacing_mm=sp))
    assert rep["hausdorff_mm"] == pytest.approx(hausdorff(a, b, spacing_mm=sp, percentile=100))
    assert rep["assd_mm"] == pytest.approx(assd(a, b, spacing_mm=sp))
    assert rep["volume_pred_mm3"] == pytest.approx(a.sum() * 1.5 * 0.64)
    assert rep["tp"] + rep["fp"] + rep["tn"] + rep["fn"] == a.size
    assert all(isinstance(v, (int, float)) for v in rep.values())


def test_bad_input_is_rejected_with_a_named_parameter():
    a = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(MetricError, match="shape"):
        dice(a, np.zeros((4, 4, 5), dtype=bool))
    with pytest.raises(MetricError, match="pred"):
        confusion(np.full((4, 4, 4), 2), a)
    with pytest.raises(MetricError, match="spacing_mm"):
        hausdorff(a, a, spacing_mm=(1, 1))
    with pytest.raises(MetricError, match="spacing_mm"):
        assd(a, a, spacing_mm=(1, 0, 1))
    with pytest.raises(MetricError, match="percentile"):
        hausdorff(a, a, spacing_mm=(1, 1, 1), percentile=120)
    assert issubclass(MetricError, ValueError)
    # 0/1 integer masks are accepted
    assert dice(np.ones((2, 2, 2), dtype=np.uint8), np.ones((2, 2, 2), dtype=int)) == 1.0
