"""Classical lumen segmentation on synthetic CTA with known geometry.

Images are built here (not from phantoms/): an exact partial-volume rendering of the
structure, blurred with a Gaussian point-spread function and given Gaussian noise from a
fixed seed. The truth is the geometry itself (pi r^2 per slice, which voxels are calcium,
which blob is which).
"""

import math

import numpy as np
import pytest
from scipy import ndimage

from pipeline.metrics import dice
from pipeline.segment.classical import (
    LumenSegmentation,
    SegmentationError,
    estimate_lumen_levels,
    fill_holes,
    largest_component,
    otsu_threshold,
    region_grow,
    segment_lumen,
    threshold,
)

TISSUE_HU, LUMEN_HU, CALCIUM_HU = 40.0, 400.0, 1500.0


def _disc_fraction(ny, nx, cy, cx, r, ss=8):
    """Fraction of each pixel inside the disc (centre (cy, cx), radius r, pixel units)."""
    o = (np.arange(ss) + 0.5) / ss - 0.5
    yy = np.arange(ny)[:, None, None, None] + o[None, None, :, None]
    xx = np.arange(nx)[None, :, None, None] + o[None, None, None, :]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).mean(axis=(2, 3))


def _ball(shape, centre, r):
    zz, yy, xx = np.indices(shape, dtype=float)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= r * r


def _scan(fraction_lumen, extra=None, psf_vox=1.0, noise_hu=15.0, seed=0):
    """HU image of a lumen fraction map (+ optional calcium map), blurred and noisy."""
    img = TISSUE_HU + (LUMEN_HU - TISSUE_HU) * fraction_lumen
    if extra is not None:
        img = np.where(extra, CALCIUM_HU, img)
    img = ndimage.gaussian_filter(img, psf_vox, mode="nearest")
    return img + np.random.default_rng(seed).normal(0.0, noise_hu, img.shape)


def _tube_z(shape=(16, 40, 40), r=6.0, centre=(19.3, 20.6)):
    return np.broadcast_to(_disc_fraction(shape[1], shape[2], *centre, r), shape).astype(float)


# ------------------------------------------------------------------ half maximum
def test_auto_area_per_slice_matches_pi_r2():
    r = 6.0
    img = _scan(_tube_z(r=r))
    seg = segment_lumen(img, spacing_mm=(1.0, 1.0, 1.0))
    assert isinstance(seg, LumenSegmentation) and seg.method == "otsu"
    area = seg.mask.sum(axis=(1, 2))
    exact = math.pi * r * r  # 113.1 voxels
    assert abs(area.mean() / exact - 1) < 0.03
    assert np.all(np.abs(area / exact - 1) < 0.05)
    # the level is the half maximum between the true tissue and lumen values
    assert seg.level_hu == pytest.approx(0.5 * (TISSUE_HU + LUMEN_HU), abs=10.0)
    assert seg.tissue_hu == pytest.approx(TISSUE_HU, abs=10.0)
    assert seg.lumen_hu == pytest.approx(LUMEN_HU, abs=10.0)


def test_half_maximum_beats_otsu_when_the_vessel_is_a_small_fraction():
    r = 6.0
    shape = (8, 72, 72)  # vessel: 2 % of the voxels
    img = _scan(_tube_z(shape, r=r, centre=(35.3, 36.6)), psf_vox=1.2)
    exact = math.pi * r * r
    seg = segment_lumen(img, spacing_mm=(1.0, 1.0, 1.0))
    err_half_max = abs(seg.mask.sum(axis=(1, 2)).mean() / exact - 1)
    t = otsu_threshold(img)
    err_otsu = abs(largest_component(img > t).sum(axis=(1, 2)).mean() / exact - 1)
    assert err_half_max < 0.03
    assert err_half_max < err_otsu


def test_anisotropic_spacing_gives_volume_in_mm3():
    # radius 3 mm on 0.5 mm pixels (6 voxels), 2 mm slices, 12 slices = 24 mm long
    spacing = (2.0, 0.5, 0.5)
    img = _scan(_tube_z((12, 40, 40), r=6.0))
    seg = segment_lumen(img, spacing_mm=spacing)
    assert seg.volume_mm3 == pytest.approx(math.pi * 3.0**2 * 24.0, rel=0.03)


def test_region_grow_from_seed_agrees_with_component_selection():
    img = _scan(_tube_z())
    seed = (8, 19, 21)
    grown = segment_lumen(img, spacing_mm=(1, 1, 1), seed_index_zyx=seed)
    assert grown.method == "region-grow" and grown.seed_index_zyx == seed
    picked = segment_lumen(img, spacing_mm=(1, 1, 1), method="otsu")
    assert dice(grown.mask, picked.mask) > 0.99


# ------------------------------------------------------------------ calcium
def test_calcified_spot_next_to_lumen_is_excluded():
    shape, r = (20, 40, 40), 6.0
    cy, cx = 19.3, 20.6
    calc_centre = (10.0, cy, cx + r + 1.5)  # touching the outer lumen wall
    calc = _ball(shape, calc_centre, 2.0)
    img = _scan(_tube_z(shape, r, (cy, cx)), extra=calc)
    seg = segment_lumen(img, spacing_mm=(1, 1, 1))
    assert seg.upper_hu is not None and LUMEN_HU + 100 < seg.upper_hu < CALCIUM_HU
    core = _ball(shape, calc_centre, 1.0)  # 7 voxels that are surely calcium
    assert not np.any(seg.mask & core)
    # slices away from the calcium keep their pi r^2 area
    far = seg.mask[:4].sum(axis=(1, 2))
    assert np.all(np.abs(far / (math.pi * r * r) - 1) < 0.05)
    # without an upper bound the same level takes the calcium in (the check above can fail)
    no_upper = segment_lumen(img, spacing_mm=(1, 1, 1), method="threshold", lower_hu=seg.level_hu)
    assert np.all(no_upper.mask[core])


# ------------------------------------------------------------------ which component
def _tube_and_blob(shape=(30, 40, 40)):
    """A thin tube along x crossing the image (radius 3) and a bigger ball (radius 7) inside."""
    tube = np.zeros(shape)
    frac = _disc_fraction(shape[0], shape[1], 8.0, 10.0, 3.0)  # in the (z, y) plane
    tube[:] = frac[:, :, None]
    ball = _ball(shape, (19.5, 26.5, 20.5), 7.0)
    return np.maximum(tube, ball), tube > 0.5, ball


def test_without_seed_the_component_crossing_the_image_is_the_vessel():
    lumen, tube, ball = _tube_and_blob()
    img = _scan(lumen, psf_vox=0.7)
    seg = segment_lumen(img, spacing_mm=(1, 1, 1))
    assert ball.sum() > tube.sum()  # the ball is the larger bright component
    assert seg.n_candidate_components >= 2
    assert dice(seg.mask, tube) > 0.9
    assert not np.any(seg.mask & ball)


@pytest.mark.parametrize("method", ["auto", "otsu", "region-grow"])
def test_seed_selects_the_other_component(method):
    lumen, tube, ball = _tube_and_blob()
    img = _scan(lumen, psf_vox=0.7)
    seg = segment_lumen(img, spacing_mm=(1, 1, 1), method=method, seed_index_zyx=(19, 26, 20))
    assert dice(seg.mask, ball) > 0.9
    assert not np.any(seg.mask & tube)
    assert seg.notes == []


def test_seed_outside_the_lumen_uses_the_nearest_component_and_says_so():
    lumen, tube, ball = _tube_and_blob()
    img = _scan(lumen, psf_vox=0.7)
    with pytest.warns(UserWarning, match="nearest"):
        seg = segment_lumen(img, spacing_mm=(1, 1, 1), seed_index_zyx=(19, 26, 30))  # 2.5 voxels off the ball
    assert dice(seg.mask, ball) > 0.9
    assert len(seg.notes) == 1 and "not in the lumen" in seg.notes[0]


# ------------------------------------------------------------------ primitives
def test_primitives_on_small_exact_arrays():
    img = np.zeros((5, 6, 7))
    img[1:4, 1:4, 1:4] = 10.0
    img[2, 2, 2] = 0.0  # a hole
    img[0, 5, 6] = 10.0  # a separate speck
    m = threshold(img, 5.0)
    assert m.sum() == 27 - 1 + 1
    assert threshold(img, 5.0, 9.0).sum() == 0
    big = largest_component(m)
    assert big.sum() == 26 and not big[0, 5, 6]
    assert largest_component(m, must_touch_faces=2).sum() == 1  # the corner speck touches 3 faces
    assert not largest_component(m, must_touch_faces=4).any()
    assert fill_holes(big).sum() == 27
    grown = region_grow(img, (1, 1, 1), lower=5.0)
    np.testing.assert_array_equal(grown, big)
    # sitk seeds are (x, y, z): an index that is valid only in [z, y, x] order must work
    grown2 = region_grow(img, [(0, 5, 6)], lower=5.0)
    assert grown2.sum() == 1 and grown2[0, 5, 6]
    two_level = np.concatenate([np.zeros(50), np.full(50, 100.0)]).reshape(2, 5, 10)
    assert 0.0 <= otsu_threshold(two_level) < 100.0


def test_estimate_lumen_levels_reports_the_half_maximum():
    est = estimate_lumen_levels(_scan(_tube_z()), spacing_mm=(1, 1, 1))
    assert est["level_hu"] == pytest.approx(0.5 * (est["tissue_hu"] + est["lumen_hu"]))
    assert est["upper_hu"] == pytest.approx(est["lumen_hu"] + 0.75 * (est["lumen_hu"] - est["tissue_hu"]))


def test_air_is_left_out_of_the_otsu_split():
    # a body (soft tissue + vessel) in air: the level must still be the tissue/lumen half maximum
    img = _scan(_tube_z((16, 48, 48), r=6.0, centre=(23.3, 24.6)))
    body = _disc_fraction(48, 48, 23.5, 23.5, 20.0) > 0.5
    img = np.where(body[None], img, -1000.0)
    seg = segment_lumen(img, spacing_mm=(1, 1, 1))
    assert seg.level_hu == pytest.approx(0.5 * (TISSUE_HU + LUMEN_HU), abs=15.0)


# ------------------------------------------------------------------ bad input
def test_bad_input_raises_segmentation_error_with_advice():
    good = _scan(_tube_z((8, 24, 24), r=4.0, centre=(11.5, 11.5)))
    sp = (1.0, 1.0, 1.0)
    with pytest.raises(SegmentationError, match="no contrast"):
        segment_lumen(np.full((8, 8, 8), 40.0), spacing_mm=sp)
    with pytest.raises(SegmentationError, match="3-D"):
        segment_lumen(good[0], spacing_mm=sp)
    with pytest.raises(SegmentationError, match="NaN"):
        segment_lumen(np.where(good > 1e9, 0, np.nan), spacing_mm=sp)
    with pytest.raises(SegmentationError, match="outside the image"):
        segment_lumen(good, spacing_mm=sp, seed_index_zyx=(8, 0, 0))
    with pytest.raises(SegmentationError, match="method must be one of"):
        segment_lumen(good, spacing_mm=sp, method="watershed")
    with pytest.raises(SegmentationError, match="needs seed_index_zyx"):
        segment_lumen(good, spacing_mm=sp, method="region-grow")
    with pytest.raises(SegmentationError, match="needs lower_hu"):
        segment_lumen(good, spacing_mm=sp, method="threshold")
    with pytest.raises(SegmentationError, match="upper"):
        segment_lumen(good, spacing_mm=sp, lower_hu=300.0, upper_hu=200.0)
    with pytest.raises(SegmentationError, match="spacing_mm"):
        segment_lumen(good, spacing_mm=(1.0, -1.0, 1.0))
    with pytest.raises(SegmentationError, match="shape"):
        otsu_threshold(good, mask=np.ones((2, 2, 2), dtype=bool))
    with pytest.raises(SegmentationError, match="empty image region"):
        otsu_threshold(good, mask=np.zeros(good.shape, dtype=bool))
    with pytest.raises(SegmentationError, match="must_touch_faces"):
        largest_component(good > 200, must_touch_faces=7)


def test_no_vessel_found_explains_what_to_do():
    # a bright ball that touches no face, and no seed
    img = _scan(_ball((20, 20, 20), (9.5, 9.5, 9.5), 5.0).astype(float))
    with pytest.raises(SegmentationError, match="no vessel found.*--seed-mm"):
        segment_lumen(img, spacing_mm=(1, 1, 1))
    # ... which a seed inside it fixes
    seg = segment_lumen(img, spacing_mm=(1, 1, 1), seed_index_zyx=(10, 10, 10))
    assert seg.volume_mm3 == pytest.approx(4 / 3 * math.pi * 5.0**3, rel=0.06)
    # pure noise is not a vessel
    noise = np.random.default_rng(1).normal(TISSUE_HU, 15.0, (16, 24, 24))
    with pytest.raises(SegmentationError, match="no vessel found"):
        segment_lumen(noise, spacing_mm=(1, 1, 1))
    # a threshold above every voxel
    with pytest.raises(SegmentationError, match="no vessel found"):
        segment_lumen(img, spacing_mm=(1, 1, 1), method="threshold", lower_hu=5000.0)
