"""Elasticity of the pressure drop to the lumen radius (issue 5: −4 ± 10 % for a straight
tube, Hagen–Poiseuille ΔP ∝ r⁻⁴ at fixed flow), end to end through segmentation, the
surface offset, meshing and the Stokes solve; plus the fitting function on exact data."""

import math

import numpy as np
import pytest

from workflows.demo import write_synthetic_patient
from workflows.sensitivity import elasticity
from workflows.vessel_flow import VesselFlowConfig, WorkflowError, run_vessel_flow


def test_elasticity_fit_exact_power_law_and_errors():
    r = np.array([1.8, 1.9, 2.0, 2.1, 2.2])
    e = elasticity(r, 5.0 * r ** -4)
    assert e["elasticity"] == pytest.approx(-4.0, abs=1e-12)
    assert e["ci_high"] - e["ci_low"] < 1e-9
    noisy = elasticity(r, 5.0 * r ** -4 * (1 + np.array([0.01, -0.01, 0.005, 0.0, -0.008])), q_sigma=0.01 * r ** -4)
    assert noisy["ci_low"] < -4.0 < noisy["ci_high"]
    with pytest.raises(ValueError, match="> 0"):
        elasticity([1, 2], [1, -1])
    with pytest.raises(ValueError, match="length"):
        elasticity([1], [1])


def test_pressure_drop_elasticity_straight_tube(tmp_path):
    info = write_synthetic_patient(tmp_path / "patient", geometry="straight", stenosis=0.0, size="small")
    r0 = info["radius_mm"]
    radii, dps = [], []
    for d in (-0.1, 0.0, 0.1):
        cfg = VesselFlowConfig(flow_rate_ml_s=0.5, model="stokes", write_fields=False, boundary_offset_mm=d)
        res = run_vessel_flow(info["image"], tmp_path / f"flow{d:+.1f}", cfg, quiet=True)
        assert res["surface"]["report"].get("boundary_offset", {"offset_mm": 0.0})["offset_mm"] == d
        # ΔP per unit length between the caps (the caps do not move with the offset)
        caps = {c["name"]: np.asarray(c["centre_xyz_mm"]) for c in res["surface"]["caps"]}
        length = float(np.linalg.norm(caps["inlet"] - caps["outlet1"]))
        radii.append(r0 + d)
        dps.append(res["pressure_drop_Pa"] / length)
    e = elasticity(radii, dps)
    assert abs(e["elasticity"] + 4.0) < 0.4, e
    with pytest.raises(WorkflowError, match="boundary_offset_mm"):
        VesselFlowConfig(boundary_offset_mm=math.nan)
