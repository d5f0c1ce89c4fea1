"""Geometric perturbations on the vessel-flow path (issue 5): segmentation -> perturbed surface -> flow.

Independent truth: the synthetic patient's generator (its centreline, radii, scanner blur and
contrast in ``patient.json``), the edge profile of a blurred step (where an iso-contour
lies), the operators' own displacement fields (the wall must move by exactly what was asked),
and Poiseuille scaling (a narrower throat gives a larger pressure drop).

Most tests build only the surface (``build_surface``, the workflow's own stage-2 code);
two run the full solve (Stokes, small patient).
"""

import json
import math

import numpy as np
import pytest
import trimesh
from scipy.optimize import brentq
from scipy.spatial import cKDTree
from scipy.stats import norm

from pipeline.image import read_image
from pipeline.segment.classical import segment_lumen
from workflows.common import hash_file, hash_params
from phantoms.synthetic_patient import write_synthetic_patient
from workflows.flow.vessel_flow import VesselFlowConfig, WorkflowError, build_surface, run_vessel_flow

Q_ML_S = 0.5


# ----------------------------------------------------------------------------- helpers
class Patient:
    """A synthetic patient segmented as the workflow's stage 1 does it."""

    def __init__(self, root, stenosis):
        self.info = write_synthetic_patient(root, geometry="straight", stenosis=stenosis, size="small")
        self.image = read_image(self.info["image"])
        self.seg = segment_lumen(self.image.array.astype(np.float32), spacing_mm=self.image.spacing_mm)
        self.mask = self.image.with_array(self.seg.mask.astype(np.uint8))
        cl = np.asarray(self.info["centrelines_xyz_mm"][0])
        rad = np.asarray(self.info["radii_mm"][0])
        self.throat_xyz_mm = cl[int(np.argmin(rad))]
        self.gp = self.info["generator_params"]

    def surface(self, **kw):
        surf, si = build_surface(self.image, self.mask, self.seg.level_hu, self.seg.upper_hu,
                                 VesselFlowConfig(**kw))
        return surf, si


@pytest.fixture(scope="module")
def stenosed(tmp_path_factory):
    return Patient(tmp_path_factory.mktemp("stenosed"), stenosis=0.5)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return Patient(tmp_path_factory.mktemp("straight"), stenosis=0.0)


@pytest.fixture(scope="module")
def stenosed_base(stenosed):
    return stenosed.surface()[0]


def _wall_vertices(surf, z_lo=3.0, z_hi=28.0):
    """Wall (tag 1) vertices away from the caps, world mm."""
    v = surf.vertices_xyz_mm[np.unique(surf.faces[surf.face_tags == 1].ravel())]
    return v[(v[:, 2] > z_lo) & (v[:, 2] < z_hi)]


def _signed_distance_to(surf, pts, k=16):
    """Exact signed distance (mm, positive outside) from points to a closed surface.

    Closest point over the k triangles with the nearest centroids; sign from that
    triangle's outward normal.
    """
    m = surf.to_trimesh()
    tri = m.triangles
    nrm = m.face_normals
    _, nn = cKDTree(tri.mean(axis=1)).query(pts, k=k)
    best = np.full(len(pts), np.inf)
    sign = np.ones(len(pts))
    for j in range(k):
        cp = trimesh.triangles.closest_point(tri[nn[:, j]], pts)
        d = np.linalg.norm(pts - cp, axis=1)
        s = np.where(np.einsum("ij,ij->i", pts - cp, nrm[nn[:, j]]) < 0, -1.0, 1.0)
        better = d < best
        best[better], sign[better] = d[better], s[better]
    return best * sign


def _section_radius(surf, z):
    """Equivalent radius sqrt(A / pi) of the cross-section at height z (mm)."""
    sec = surf.to_trimesh().section(plane_origin=[0.0, 0.0, z], plane_normal=[0.0, 0.0, 1.0])
    poly = sec.to_2D()[0] if hasattr(sec, "to_2D") else sec.to_planar()[0]
    return math.sqrt(poly.area / math.pi)


# ----------------------------------------------------------------------------- local offset
def test_local_offset_narrows_only_the_stenosis(stenosed, stenosed_base):
    c = stenosed.throat_xyz_mm
    cfg = dict(local_offset_mm=-0.2, local_centre_xyz_mm=tuple(c), local_radius_mm=3.0, local_blend_mm=1.0)
    surf, si = stenosed.surface(**cfg)
    zs = np.arange(c[2] - 2.0, c[2] + 2.01, 0.25)
    r_base = min(_section_radius(stenosed_base, z) for z in zs)
    r_new = min(_section_radius(surf, z) for z in zs)
    # the generator's throat radius is what the unperturbed wall recovers ...
    assert r_base == pytest.approx(float(np.min(stenosed.info["radii_mm"][0])), abs=0.05)
    # ... and the minimum lumen radius drops by the offset (sub-voxel: 0.4 voxel)
    assert r_new - r_base == pytest.approx(-0.2, abs=0.03)
    # far from the region (beyond radius + blend) the wall does not move
    v = _wall_vertices(surf, z_lo=-1e9, z_hi=1e9)
    far = np.linalg.norm(v - c, axis=1) > 3.0 + 1.0
    assert far.sum() > 1000
    assert np.abs(_signed_distance_to(stenosed_base, v[far])).max() < 0.02
    # the operator's report
    (rep,) = si.reports
    assert rep["operator"] == "local_offset" and rep["delta_mm"] == -0.2
    assert rep["volume_change_mm3"] < 0
    assert rep["centre_xyz_mm"] == pytest.approx(list(c))


def test_local_offset_is_sub_voxel(stenosed, stenosed_base):
    """A 0.05 mm (0.1 voxel) offset moves the wall near the centre by 0.05 mm, not 0 or a voxel."""
    c = stenosed.throat_xyz_mm
    surf, _ = stenosed.surface(local_offset_mm=0.05, local_centre_xyz_mm=tuple(c))
    v = _wall_vertices(surf, z_lo=-1e9, z_hi=1e9)
    near = np.linalg.norm(v - c, axis=1) < 2.0
    d = _signed_distance_to(stenosed_base, v[near])
    assert d.mean() == pytest.approx(0.05, abs=0.01)


# ----------------------------------------------------------------------------- boundary noise
def test_boundary_noise_zero_amplitude_is_no_perturbation(stenosed, stenosed_base):
    surf, si = stenosed.surface(boundary_noise_mm=0.0, boundary_noise_seed=7)
    assert si.reports == []
    np.testing.assert_array_equal(surf.vertices_xyz_mm, stenosed_base.vertices_xyz_mm)
    np.testing.assert_array_equal(surf.faces, stenosed_base.faces)


def test_boundary_noise_seeded_and_sized(stenosed, stenosed_base):
    amp = 0.1
    means, rmss = [], []
    first = None
    for seed in range(5):
        surf, si = stenosed.surface(boundary_noise_mm=amp, boundary_noise_correlation_mm=1.0,
                                    boundary_noise_seed=seed)
        if seed == 0:
            first = surf
            # the same seed gives the identical surface
            again, _ = stenosed.surface(boundary_noise_mm=amp, boundary_noise_correlation_mm=1.0,
                                        boundary_noise_seed=0)
            np.testing.assert_array_equal(again.vertices_xyz_mm, surf.vertices_xyz_mm)
        else:  # a different seed a different one
            assert len(surf.vertices_xyz_mm) != len(first.vertices_xyz_mm) or \
                not np.allclose(surf.vertices_xyz_mm, first.vertices_xyz_mm)
        d = _signed_distance_to(stenosed_base, _wall_vertices(surf))
        means.append(d.mean())
        rmss.append(math.sqrt(np.mean(d**2)))
        assert si.reports[0]["operator"] == "correlated_noise_boundary"
        assert si.reports[0]["noise_rms_on_surface_mm"] == pytest.approx(amp)
    # each realisation: RMS wall displacement about the amplitude
    assert all(amp / 1.5 < r < amp * 1.5 for r in rmss), rmss
    # zero-mean noise: the mean displacement over realisations is ~0 (each one's mean is
    # the average of a few correlated patches, so it scatters by ~amp/3)
    assert abs(np.mean(means)) < 0.3 * amp, means


# ----------------------------------------------------------------------------- threshold shift
def _edge_position_mm(fraction, sigma_mm, voxel_mm):
    """Where a step edge, averaged over a voxel (box of width voxel_mm) and blurred by a Gaussian
    (sigma_mm), reaches ``fraction`` of its height, measured outwards from the step (mm)."""
    u = np.linspace(-voxel_mm / 2, voxel_mm / 2, 2001)

    def profile(x):  # fraction of the lumen value at distance x outside the step
        return norm.cdf((-x - u) / sigma_mm).mean()

    return brentq(lambda x: profile(x) - fraction, -5 * sigma_mm - voxel_mm, 5 * sigma_mm + voxel_mm)


@pytest.mark.parametrize("shift_hu", [54.0, -54.0])
def test_threshold_shift_moves_wall_as_the_edge_profile_predicts(straight, shift_hu):
    gp = straight.gp
    cx, cy = gp["derived"]["centre_x_mm"], gp["derived"]["centre_y_mm"]

    def mean_radius(surf):
        v = _wall_vertices(surf, 4.0, 27.0)
        return float(np.linalg.norm(v[:, :2] - [cx, cy], axis=1).mean())

    base, _ = straight.surface()
    surf, si = straight.surface(threshold_shift_hu=shift_hu)
    dr = mean_radius(surf) - mean_radius(base)
    # prediction from the generator: Gaussian PSF (FWHM) on the voxel-averaged step
    sigma = gp["psf_fwhm_mm"] / math.sqrt(8 * math.log(2))
    contrast = gp["lumen_hu"] - gp["tissue_hu"]
    f0 = (straight.seg.level_hu - gp["tissue_hu"]) / contrast
    f1 = (straight.seg.level_hu + shift_hu - gp["tissue_hu"]) / contrast
    voxel = gp["spacing_mm"][2]
    predicted = _edge_position_mm(f1, sigma, voxel) - _edge_position_mm(f0, sigma, voxel)
    assert np.sign(dr) == -np.sign(shift_hu)  # a higher threshold shrinks the lumen
    assert dr == pytest.approx(predicted, rel=0.25), (dr, predicted)
    rep = si.reports[0]
    assert rep["operator"] == "threshold_shift" and rep["delta_hu"] == shift_hu
    assert np.sign(rep["volume_change_mm3"]) == -np.sign(shift_hu)
    # the blur correction still measures the edge from the unshifted half maximum
    b0, b1 = base.report["blur_correction"], surf.report["blur_correction"]
    assert b1["blur_sigma_mm"] == pytest.approx(b0["blur_sigma_mm"], rel=0.1)


# ----------------------------------------------------------------------------- resampling
def test_resample_to_twice_the_voxel_keeps_volume(straight):
    base, _ = straight.surface()
    voxel = straight.image.spacing_mm[0]
    surf, si = straight.surface(resample_voxel_mm=2 * voxel)
    assert surf.volume_mm3 == pytest.approx(base.volume_mm3, rel=0.03)
    # the cut planes (vessel length) stay where they were
    for a, b in zip(sorted(c.centre_xyz_mm[2] for c in base.caps), sorted(c.centre_xyz_mm[2] for c in surf.caps)):
        assert b == pytest.approx(a, abs=0.05)
    rep = si.reports[0]
    assert rep["operator"] == "resample_coarse" and rep["new_spacing_mm"] == [2 * voxel] * 3
    # the true lumen is a tube of the generator's radius: the coarse wall still finds it
    gp = straight.gp
    v = _wall_vertices(surf, 4.0, 27.0)
    r = np.linalg.norm(v[:, :2] - [gp["derived"]["centre_x_mm"], gp["derived"]["centre_y_mm"]], axis=1)
    assert r.mean() == pytest.approx(gp["radius_mm"], abs=0.1)


def test_resample_at_the_image_voxel_is_the_unperturbed_surface(straight):
    base, _ = straight.surface()
    surf, _ = straight.surface(resample_voxel_mm=straight.image.spacing_mm[0])
    assert surf.volume_mm3 == pytest.approx(base.volume_mm3, rel=1e-6)


# ----------------------------------------------------------------------------- smoothing method
def test_laplacian_smoothing_shrinks_taubin_does_not(straight):
    taubin, _ = straight.surface()
    lap, _ = straight.surface(smoothing_method="laplacian")
    assert abs(taubin.report["smoothing_volume_change_percent"]) < 1.0
    assert lap.report["smoothing_volume_change_percent"] < -2.0
    assert lap.report["smoothing_method"] == "laplacian"


# ----------------------------------------------------------------------------- full runs
@pytest.fixture(scope="module")
def base_run(stenosed, tmp_path_factory):
    out = tmp_path_factory.mktemp("base_run")
    cfg = VesselFlowConfig(error_estimate="off", flow_rate_ml_s=Q_ML_S, model="stokes", write_fields=True)
    return out, run_vessel_flow(stenosed.info["image"], out, cfg, quiet=True)


def test_wall_pressure_samples(base_run, stenosed):
    out, res = base_run
    data = np.load(out / "fields" / "wall_pressure.npz")
    xyz, p = data["xyz_mm"], data["pressure_Pa"]
    assert xyz.ndim == 2 and xyz.shape[1] == 3 and p.shape == (len(xyz),) and len(p) > 500
    # world mm: the nodes lie on the wall, i.e. on surface.stl
    surf = trimesh.load_mesh(out / "surface.stl")
    d = np.abs(trimesh.triangles.closest_point(surf.triangles[cKDTree(surf.triangles_center).query(xyz)[1]], xyz)
               - xyz).max()
    assert d < 0.5
    # pressure falls from the inlet end to the outlet end
    caps = {c["name"]: np.asarray(c["centre_xyz_mm"]) for c in res["surface"]["caps"]}
    axis = caps["outlet1"] - caps["inlet"]
    s = (xyz - caps["inlet"]) @ axis / (axis @ axis)  # 0 at the inlet, 1 at the outlet
    p_in, p_out = p[s < 0.15].mean(), p[s > 0.85].mean()
    assert p_in > p_out
    assert p_in - p_out == pytest.approx(res["pressure_drop_Pa"], rel=0.3)
    assert np.corrcoef(s, p)[0, 1] < -0.8
    assert res["perturbation"] == []


def test_default_config_keeps_the_cache_keys(base_run, stenosed):
    """Unperturbed runs hash exactly the parameters they did before perturbations existed."""
    out, _ = base_run
    cfg = VesselFlowConfig()
    assert cfg.perturbation_params() == {}
    seg_key = hash_params(hash_file(stenosed.info["image"]), None,
                          {"segmentation_method": "auto", "seed_xyz_mm": None, "lower_hu": None, "upper_hu": None})
    geo_key = hash_params(seg_key, {"inlet_xyz_mm": None, "smoothing_iterations": 20, "cells_per_radius": 4.0,
                                    "mesh_order": 1})
    assert json.loads((out / "stages" / "geometry.json").read_text())["inputs_sha256"] == geo_key


def test_local_offset_raises_pressure_drop(base_run, stenosed, tmp_path):
    _, base = base_run
    c = tuple(float(v) for v in stenosed.throat_xyz_mm)
    cfg = VesselFlowConfig(error_estimate="off", flow_rate_ml_s=Q_ML_S, model="stokes", write_fields=False,
                           local_offset_mm=-0.2, local_centre_xyz_mm=c)
    res = run_vessel_flow(stenosed.info["image"], tmp_path / "flow", cfg, quiet=True)
    assert res["pressure_drop_Pa"] > base["pressure_drop_Pa"] * 1.1
    # Poiseuille through the throat: dP_throat ~ r^-4, so narrowing the throat by 0.2 mm
    # raises dP by at most the throat's share times ((r - 0.2) / r)^-4 - 1
    r = float(np.min(stenosed.info["radii_mm"][0]))
    assert res["pressure_drop_Pa"] / base["pressure_drop_Pa"] < ((r - 0.2) / r) ** -4
    assert [p["operator"] for p in res["perturbation"]] == ["local_offset"]
    assert res["parameters"]["local_offset_mm"] == -0.2
    assert res["parameters"]["local_centre_xyz_mm"] == pytest.approx(list(c))
    assert (tmp_path / "flow" / "segmentation_perturbed.nii.gz").exists()
    geo = json.loads((tmp_path / "flow" / "stages" / "geometry.json").read_text())
    assert geo["perturbation"][0]["delta_mm"] == -0.2


@pytest.mark.mpi
def test_wall_pressure_on_two_ranks_matches_serial(base_run, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out, res = base_run
    problem = {"flow_rate_m3_s": Q_ML_S * 1e-6, "inlet_tag": 2, "outlet_tags": [3], "wall_tags": [1],
               "model": "stokes"}
    mpiexec = Path(sys.executable).with_name("mpiexec")
    subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "workflows.flow.solve_stage",
                    str(out / "mesh" / "mesh.msh"), json.dumps(problem), str(tmp_path / "flow.json"),
                    str(tmp_path / "fields")], check=True, capture_output=True)
    ser = np.load(out / "fields" / "wall_pressure.npz")
    par = np.load(tmp_path / "fields" / "wall_pressure.npz")
    assert len(par["pressure_Pa"]) == len(ser["pressure_Pa"])  # each node once
    i_ser = np.lexsort(np.round(ser["xyz_mm"], 6).T)
    i_par = np.lexsort(np.round(par["xyz_mm"], 6).T)
    np.testing.assert_allclose(par["xyz_mm"][i_par], ser["xyz_mm"][i_ser], atol=1e-9)
    np.testing.assert_allclose(par["pressure_Pa"][i_par], ser["pressure_Pa"][i_ser], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kw, field", [
    (dict(boundary_noise_mm=-0.1), "boundary_noise_mm"),
    (dict(boundary_noise_correlation_mm=0.0), "boundary_noise_correlation_mm"),
    (dict(boundary_noise_seed=-1), "boundary_noise_seed"),
    (dict(boundary_noise_seed=1.5), "boundary_noise_seed"),
    (dict(local_offset_mm=-0.1), "local_centre_xyz_mm"),
    (dict(local_offset_mm=-0.1, local_centre_xyz_mm=(1.0, 2.0)), "local_centre_xyz_mm"),
    (dict(local_radius_mm=0.0), "local_radius_mm"),
    (dict(local_blend_mm=-1.0), "local_blend_mm"),
    (dict(smoothing_method="gaussian"), "smoothing_method"),
    (dict(threshold_shift_hu=float("nan")), "threshold_shift_hu"),
    (dict(resample_voxel_mm=-1.0), "resample_voxel_mm"),
    (dict(resample_voxel_mm="coarse"), "resample_voxel_mm"),
])
def test_bad_perturbation_values_name_the_field(kw, field):
    with pytest.raises(WorkflowError, match=field):
        VesselFlowConfig(**kw)


def test_perturbations_that_cannot_apply_name_the_field(stenosed):
    with pytest.raises(WorkflowError, match="resample_voxel_mm"):  # finer than the image
        stenosed.surface(resample_voxel_mm=0.25)
    with pytest.raises(WorkflowError, match="local_centre_xyz_mm"):  # nowhere near the vessel
        stenosed.surface(local_offset_mm=-0.1, local_centre_xyz_mm=(0.0, 0.0, 15.0), local_radius_mm=1.0)
    with pytest.raises(WorkflowError, match="threshold_shift_hu"):  # above the lumen
        stenosed.surface(threshold_shift_hu=1000.0)


def test_perturbation_params_only_list_active_operators():
    assert VesselFlowConfig(boundary_noise_seed=3, local_radius_mm=5.0).perturbation_params() == {}
    p = VesselFlowConfig(boundary_noise_mm=0.1, boundary_noise_seed=3).perturbation_params()
    assert p == {"boundary_noise_mm": 0.1, "boundary_noise_correlation_mm": 2.0, "boundary_noise_seed": 3}


def test_surface_stage_checks_its_new_parameters(stenosed):
    from pipeline.surface import SurfaceError, make_tagged_surface

    img, mask, level = stenosed.image, stenosed.mask, stenosed.seg.level_hu
    with pytest.raises(SurfaceError, match="smoothing_method"):
        make_tagged_surface(mask, intensity=img, level=level, smoothing_method="gaussian")
    bad = img.with_array(np.full(img.shape, np.nan))
    with pytest.raises(SurfaceError, match="normal_displacement_mm"):
        make_tagged_surface(mask, intensity=img, level=level, normal_displacement_mm=bad)
    with pytest.raises(SurfaceError, match="half_max_level"):
        make_tagged_surface(mask, half_max_level=200.0)
    with pytest.raises(SurfaceError, match="crop_margin_mm"):
        make_tagged_surface(mask, crop_margin_mm=[1.0, 2.0])
    # a uniform displacement field is the uniform boundary offset
    a = make_tagged_surface(mask, intensity=img, level=level,
                            normal_displacement_mm=img.with_array(np.full(img.shape, 0.1)))
    b = make_tagged_surface(mask, intensity=img, level=level, boundary_offset_mm=0.1)
    np.testing.assert_allclose(a.vertices_xyz_mm, b.vertices_xyz_mm, atol=1e-9)
