"""Tests for pipeline.surface against analytic geometry (tube cross-sections, volumes)."""

import json

import numpy as np
import pytest
import trimesh
from scipy.special import erf

from pipeline.image import Volume
from pipeline.surface import (
    INLET, OUTLET_FIRST, WALL, SurfaceError, TaggedSurface, check_watertight, make_tagged_surface,
    surface_from_mesh_file,
)

ORIGIN = (10.0, -5.0, 3.0)


def tube_distance(shape=(48, 40, 40), spacing=(1.0, 1.0, 1.0)):
    """Distance (mm) from a z-parallel axis slightly off the voxel grid, on the array grid."""
    nz, ny, nx = shape
    dz, dy, dx = spacing
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    cy, cx = (ny - 1) / 2 * dy + 0.3, (nx - 1) / 2 * dx - 0.2
    return np.hypot(j * dy - cy, i * dx - cx)


def tube_volumes(radius_mm, spacing=(1.0, 1.0, 1.0), shape=(48, 40, 40), psf_mm=0.8):
    """Binary mask and a CT-like image of a tube: lumen 400 HU with partial-volume edge voxels,
    blurred by a 3-D Gaussian point-spread function of standard deviation psf_mm (so the
    half-maximum contour shows the curvature bias a real scanner gives)."""
    from scipy import ndimage

    d = tube_distance(shape, spacing)
    mask = Volume((d <= radius_mm).astype(np.uint8), spacing_mm=spacing, origin_xyz_mm=ORIGIN)
    h = float(np.mean(spacing))
    occupancy = np.clip(0.5 - (d - radius_mm) / h, 0.0, 1.0)
    img = ndimage.gaussian_filter(400.0 * occupancy, sigma=[psf_mm / s for s in spacing], mode="nearest")
    return mask, mask.with_array(img)


def seg_distance(P, a, b):
    ab = b - a
    t = np.clip(((P - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(P - (a + t[..., None] * ab), axis=-1)


@pytest.fixture(scope="module")
def tube_surface():
    mask, _ = tube_volumes(6.0)
    return make_tagged_surface(mask)


def _check_tube_caps(surf, radius_mm, rel_tol):
    assert surf.to_trimesh().is_watertight
    assert surf.to_trimesh().is_winding_consistent
    assert surf.volume_mm3 > 0
    assert len(surf.caps) == 2
    assert [c.tag for c in surf.caps] == [INLET, OUTLET_FIRST]
    assert [c.name for c in surf.caps] == ["inlet", "outlet1"]
    normals = np.array([c.normal_xyz for c in surf.caps])
    assert np.allclose(np.abs(normals[:, 2]), 1.0) and normals[:, 2].sum() == pytest.approx(0.0)
    for c in surf.caps:
        # the outward normal points away from the other cap
        other = [o for o in surf.caps if o is not c][0]
        assert np.dot(np.subtract(c.centre_xyz_mm, other.centre_xyz_mm), c.normal_xyz) > 0
        assert c.area_mm2 == pytest.approx(np.pi * radius_mm**2, rel=rel_tol)
        assert c.radius_mm == pytest.approx(np.sqrt(c.area_mm2 / np.pi))
        # cap faces have the cap area
        assert surf.to_trimesh().area_faces[surf.face_tags == c.tag].sum() == pytest.approx(c.area_mm2)
    assert set(np.unique(surf.face_tags)) == {WALL, INLET, OUTLET_FIRST}


def test_tube_from_mask(tube_surface):
    surf = tube_surface
    _check_tube_caps(surf, 6.0, 0.03)
    assert abs(surf.report["smoothing_volume_change_percent"]) < 1.0
    # caps lie 1.5 voxels inside the first/last slice centres (z = 3 + 1.5, 3 + 47 - 1.5)
    zs = sorted(c.centre_xyz_mm[2] for c in surf.caps)
    assert zs == pytest.approx([4.5, 48.5], abs=1e-6)
    # volume of the capped tube ~ pi r^2 L (L = 44 mm)
    assert surf.volume_mm3 == pytest.approx(np.pi * 36 * 44, rel=0.03)
    # cap centres on the tube axis
    assert surf.caps[0].centre_xyz_mm[0] == pytest.approx(ORIGIN[0] + 19.5 - 0.2, abs=0.15)
    assert surf.caps[0].centre_xyz_mm[1] == pytest.approx(ORIGIN[1] + 19.5 + 0.3, abs=0.15)
    # centreline radius ~ r (distance transform of the binary mask: within a voxel)
    assert np.median(surf.centreline_radius_mm) == pytest.approx(6.0, abs=1.0)


def test_tube_intensity_subvoxel_isotropic():
    mask, img = tube_volumes(6.0)
    surf = make_tagged_surface(mask, intensity=img, level=200.0)
    _check_tube_caps(surf, 6.0, 0.015)
    assert abs(surf.report["smoothing_volume_change_percent"]) < 1.0


def test_tube_anisotropic_mask_and_intensity():
    spacing = (1.5, 0.8, 0.8)
    mask, img = tube_volumes(4.8, spacing=spacing)
    _check_tube_caps(make_tagged_surface(mask), 4.8, 0.03)
    surf = make_tagged_surface(mask, intensity=img, level=200.0)
    _check_tube_caps(surf, 4.8, 0.015)
    assert abs(surf.report["smoothing_volume_change_percent"]) < 1.0


def test_small_tube_intensity_upsampled():
    """A 2.5-voxel radius (coronary-sized) keeps its cross-section within 1.5 %."""
    mask, img = tube_volumes(2.5, shape=(24, 20, 20))
    surf = make_tagged_surface(mask, intensity=img, level=200.0)
    assert surf.report["upsample"] == 2
    _check_tube_caps(surf, 2.5, 0.015)
    # without upsampling the inscribed-polygon bias (~ -2.6 %) shows
    coarse = make_tagged_surface(mask, intensity=img, level=200.0, upsample=1)
    assert coarse.caps[0].area_mm2 < surf.caps[0].area_mm2


def test_rotated_direction_matrix():
    """A flipped/permuted direction matrix: caps follow the world direction of the k axis."""
    mask, _ = tube_volumes(6.0)
    direction = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])  # k -> world x
    m = Volume(mask.array, mask.spacing_mm, (0.0, 0.0, 0.0), direction)
    surf = make_tagged_surface(m)
    assert surf.volume_mm3 > 0
    normals = np.array([c.normal_xyz for c in surf.caps])
    assert np.allclose(np.abs(normals[:, 0]), 1.0)
    assert sorted(c.centre_xyz_mm[0] for c in surf.caps) == pytest.approx([1.5, 45.5], abs=1e-6)


def test_closed_blob_raises():
    shape = (30, 30, 30)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    blob = np.sqrt((k - 15) ** 2 + (j - 15) ** 2 + (i - 15) ** 2) <= 8
    with pytest.raises(SurfaceError, match="fewer than two crop planes"):
        make_tagged_surface(Volume(blob.astype(np.uint8)))


def test_one_open_end_raises():
    d = tube_distance((30, 30, 30))
    arr = (d <= 5).astype(np.uint8)
    arr[20:] = 0  # dead end inside the image
    with pytest.raises(SurfaceError, match="fewer than two crop planes"):
        make_tagged_surface(Volume(arr))


@pytest.fixture(scope="module")
def y_mask():
    shape = (48, 40, 40)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    P = np.stack([i, j, k], -1).astype(float)
    trunk = seg_distance(P, np.array([20, 20, -5.0]), np.array([20, 20, 24.0])) <= 6
    b1 = seg_distance(P, np.array([20, 20, 24.0]), np.array([9, 20, 52.0])) <= 4.5
    b2 = seg_distance(P, np.array([20, 20, 24.0]), np.array([31, 20, 52.0])) <= 3.5
    return Volume((trunk | b1 | b2).astype(np.uint8))


def test_y_bifurcation(y_mask):
    surf = make_tagged_surface(y_mask)
    assert len(surf.caps) == 3
    assert surf.to_trimesh().is_watertight
    inlet, o1, o2 = surf.caps
    assert inlet.name == "inlet" and inlet.tag == INLET
    assert inlet.area_mm2 > o1.area_mm2 > o2.area_mm2
    assert (o1.tag, o2.tag) == (3, 4)
    assert inlet.normal_xyz[2] == pytest.approx(-1.0) and o1.normal_xyz[2] == pytest.approx(1.0)
    assert inlet.area_mm2 == pytest.approx(np.pi * 36, rel=0.03)
    # both outlets on the top face; the larger (r = 4.5) is the x < 20 branch
    assert o1.centre_xyz_mm[0] < 20 < o2.centre_xyz_mm[0]
    assert set(np.unique(surf.face_tags)) == {1, 2, 3, 4}
    # choosing the inlet by a world point near the small branch
    surf2 = make_tagged_surface(y_mask, inlet=(30.0, 20.0, 47.0))
    assert surf2.caps[0].area_mm2 == pytest.approx(o2.area_mm2)
    assert [c.name for c in surf2.caps] == ["inlet", "outlet1", "outlet2"]
    assert surf2.caps[1].area_mm2 == pytest.approx(inlet.area_mm2)
    # by index into the caps sorted by area
    assert make_tagged_surface(y_mask, inlet=1).caps[0].area_mm2 == pytest.approx(o1.area_mm2)


def test_write_roundtrip_and_json(tube_surface, tmp_path):
    p = tube_surface.write(tmp_path / "s.vtp")
    back = surface_from_mesh_file(p)
    assert np.array_equal(back.face_tags, tube_surface.face_tags)
    assert np.allclose(back.vertices_xyz_mm, tube_surface.vertices_xyz_mm)
    assert [c.area_mm2 for c in back.caps] == pytest.approx([c.area_mm2 for c in tube_surface.caps])
    stl = tube_surface.write(tmp_path / "s.stl")
    assert trimesh.load_mesh(stl).is_watertight
    d = json.loads(json.dumps(tube_surface.to_json_dict()))
    assert d["boundaries"] == {"wall": 1, "inlet": 2, "outlet1": 3}
    assert len(d["centreline"]["radius_mm"]) == len(tube_surface.centreline_radius_mm)
    with pytest.raises(SurfaceError, match="no face tags"):
        surface_from_mesh_file(stl)


def test_non_watertight_raises(tube_surface):
    m = tube_surface.to_trimesh()
    holed = trimesh.Trimesh(m.vertices, m.faces[:-5], process=False)
    with pytest.raises(SurfaceError, match="not watertight"):
        check_watertight(holed)
    inverted = m.copy()
    inverted.invert()
    with pytest.raises(SurfaceError, match="non-positive volume"):
        check_watertight(inverted)
    check_watertight(m)  # the good one passes


def test_non_watertight_file_raises(tube_surface, tmp_path):
    m = tube_surface.to_trimesh()
    holed = trimesh.Trimesh(m.vertices, m.faces[:-5], process=False)
    path = tmp_path / "holed.stl"
    holed.export(path)
    with pytest.raises(SurfaceError, match="not watertight"):
        surface_from_mesh_file(path, face_tags=tube_surface.face_tags[:-5])


def test_bad_inputs():
    mask, img = tube_volumes(6.0, shape=(16, 20, 20))
    with pytest.raises(SurfaceError, match="mask must be a pipeline.image.Volume"):
        make_tagged_surface(mask.array)
    with pytest.raises(SurfaceError, match="empty"):
        make_tagged_surface(mask.with_array(np.zeros(mask.shape)))
    with pytest.raises(SurfaceError, match="without an intensity"):
        make_tagged_surface(mask, level=200.0)
    with pytest.raises(SurfaceError, match="level must be a finite"):
        make_tagged_surface(mask, intensity=img)
    with pytest.raises(SurfaceError, match="not above level"):
        make_tagged_surface(mask, intensity=img, level=1000.0)
    with pytest.raises(SurfaceError, match="smoothing_iterations"):
        make_tagged_surface(mask, smoothing_iterations=-1)
    with pytest.raises(SurfaceError, match="inlet must be 'largest'"):
        make_tagged_surface(mask, inlet="smallest")
    with pytest.raises(SurfaceError, match="out of range"):
        make_tagged_surface(mask, inlet=5)
    with pytest.raises(SurfaceError, match="crop_margin_mm"):
        make_tagged_surface(mask, crop_margin_mm=-1.0)
    with pytest.raises(SurfaceError, match="too large"):
        make_tagged_surface(mask, crop_margin_mm=50.0)
    with pytest.raises(SurfaceError, match="same grid"):
        make_tagged_surface(mask, intensity=Volume(np.zeros((5, 5, 5))), level=1.0)
    with pytest.raises(SurfaceError, match="face_tags must have one tag per face"):
        TaggedSurface(np.zeros((3, 3)), np.array([[0, 1, 2]]), np.array([1, 2]), [])


def _wavy_tube(r0, amp, wave, h):
    from skimage.measure import marching_cubes

    z = np.arange(-1.0, 13.0 + h, h)
    xy = np.arange(-3.0, 3.0 + h, h)
    Z, Y, X = np.meshgrid(z, xy, xy, indexing="ij")
    f = np.hypot(X, Y) - (r0 + amp * np.cos(2 * np.pi * Z / wave))
    v, faces, _, _ = marching_cubes(f, 0.0, spacing=(h, h, h))
    v = v[:, ::-1] + np.array([xy[0], xy[0], z[0]])  # (x, y, z) mm
    mesh = trimesh.Trimesh(v, faces[:, ::-1], process=False)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def test_axial_curvature_of_a_wavy_tube():
    """The blur correction's curvature along the axis against r(z) = R0 + A cos(2πz/L):
    κ = −r''/(1 + r'²)^1.5, i.e. +A(2π/L)² at a bulge's crest, −A(2π/L)² at a neck."""
    from pipeline.surface import _axial_curvature

    wave = 6.0
    for amp in (0.4, 0.0):
        mesh = _wavy_tube(2.0, amp, wave, 0.1)
        v = mesh.vertices
        kappa = _axial_curvature(mesh, np.tile([0.0, 0.0, 1.0], (len(v), 1)), 0.5)
        peak = amp * (2 * np.pi / wave) ** 2  # 0.439 /mm
        for z0, sign in ((wave, +1), (wave / 2, -1), (1.5 * wave, -1)):
            near = np.abs(v[:, 2] - z0) < 0.1
            print(f"A {amp}, z {z0:4.1f}: kappa {kappa[near].mean():+.3f} /mm, analytic {sign * peak:+.3f}")
            assert kappa[near].mean() == pytest.approx(sign * peak, rel=0.1, abs=0.02)  # measured within 2 %
