"""The CT protocol file (workflows/dose/protocol.py): parsing, bad input, the helical source and
tube-current modulation.

Truths used: the helix geometry written out here (source angle = 360° · (z − z_start) /
table feed, focal spot at distance R from the axis); the z distribution of a modulated
scan against the CDF of the relative tube current integrated here independently (fine
trapezoid rule over ``np.interp`` of the profile), by a Kolmogorov–Smirnov and a χ² test;
the exact mean of a piecewise-linear profile; tube load = mA × rotation time.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from physics.transport import CTFanBeam, VoxelPhantom
from workflows.dose.protocol import (BOWTIE_MATERIALS, BOWTIE_PRESETS, ModulatedCTFanBeam, Protocol, ProtocolError,
                                parse_protocol, read_protocol)

EXAMPLE = Path(__file__).resolve().parents[2] / "workflows" / "data" / "protocol_example.toml"


def _data(**over):
    """A minimal valid protocol as a dict; ``over={"scan": {"pitch": 0}}`` overrides (None removes)."""
    d = {"tube": {"kvp": 120.0, "filtration_mm": {"Al": 6.0}},
         "scan": {"collimation_mm": 40.0, "pitch": 1.0, "z_start_mm": -100.0, "z_end_mm": 100.0}}
    for sec, keys in over.items():
        if keys is None:
            d.pop(sec, None)
            continue
        t = d.setdefault(sec, {})
        for k, v in keys.items():
            if v is None:
                t.pop(k, None)
            else:
                t[k] = v
    return d


def test_example_file_parses():
    p = read_protocol(EXAMPLE)
    assert p.kvp == 120.0 and p.collimation_mm == 40.0 and p.pitch == 1.0
    assert p.bowtie["name"] == "body" and p.bowtie["material"].name == "aluminium"
    assert p.n_rotations == pytest.approx(7.5)
    # exact mean of the piecewise-linear profile (-150, .8), (-50, .6), (50, 1.1), (150, 1.2)
    mean = (100 * 0.7 + 100 * 0.85 + 100 * 1.15) / 300
    assert p.mean_relative_mA == pytest.approx(mean, rel=1e-12)
    assert p.scan_mAs == pytest.approx(200.0 * 7.5 * mean)
    json.dumps(p.to_dict())  # JSON-ready


def test_defaults_and_tube_load():
    p = parse_protocol(_data())
    assert p.source_to_isocentre_mm == 570.0 and p.fan_width_mm == 500.0 and p.bowtie is None
    assert p.anode_angle_deg == 12.0 and p.mAs_per_rotation is None and p.scan_mAs is None
    assert p.table_feed_mm == 40.0 and p.n_rotations == pytest.approx(5.0)
    q = parse_protocol(_data(tube={"tube_current_mA": 400.0}, scan={"rotation_time_s": 0.5}))
    assert q.mAs_per_rotation == pytest.approx(200.0)
    assert q.scan_mAs == pytest.approx(1000.0)
    assert parse_protocol(_data(tube={"filtration_mm": None})).filtration_mm == {"Al": 2.5}


@pytest.mark.parametrize("over, words", [
    ({"scan": {"pitch": 0.0}}, ["[scan] pitch", "> 0"]),
    ({"scan": {"pitch": -1.0}}, ["[scan] pitch", "> 0"]),
    ({"scan": {"z_end_mm": -100.0}}, ["[scan] z_end_mm", "empty"]),
    ({"scan": {"z_end_mm": -200.0}}, ["[scan] z_end_mm"]),
    ({"scan": {"collimation_mm": None}}, ["[scan]", "collimation_mm"]),
    ({"scan": {"collimation_mm": "40"}}, ["[scan] collimation_mm", "number"]),
    ({"tube": {"kvp": None}}, ["[tube]", "kvp"]),
    ({"tube": {"kvp": 200.0}}, ["[tube] kvp", "150"]),
    ({"tube": {"filtration_mm": {"Xx": 1.0}}}, ["filtration_mm", "'Xx'"]),
    ({"tube": {"filtration_mm": {"aluminium": 1.0}}}, ["filtration_mm", "'aluminium'"]),
    ({"tube": {"filtration_mm": {"Al": -1.0}}}, ["filtration_mm.Al", ">= 0"]),
    ({"tube": {"anode_angle_deg": 95.0}}, ["anode_angle_deg"]),
    ({"tube": {"mAs_per_rotation": 100.0, "tube_current_mA": 200.0}}, ["mAs_per_rotation", "tube_current_mA"]),
    ({"tube": {"tube_current_mA": 200.0}}, ["rotation_time_s"]),
    ({"tube": {"ctdivol_mGy_per_100mAs": 7.0}}, ["ctdi_phantom_diameter_cm"]),
    ({"tube": {"ctdivol_mGy_per_100mAs": 7.0, "ctdi_phantom_diameter_cm": 20}}, ["ctdi_phantom_diameter_cm", "16"]),
    ({"tube": {"ctdi_phantom_diameter_cm": 32}}, ["ctdivol_mGy_per_100mAs"]),
    ({"tube": {"ctdivol_mGy_per_100mAs": -7.0, "ctdi_phantom_diameter_cm": 32}}, ["ctdivol_mGy_per_100mAs"]),
    ({"tube": {"voltage": 120}}, ["[tube] unknown key 'voltage'"]),
    ({"extra": {"a": 1}}, ["unknown section [extra]"]),
    ({"scanner": {"fan_width_mm": 0.0}}, ["[scanner] fan_width_mm"]),
    ({"scanner": {"fan_width_mm": 1200.0}}, ["[scanner] fan_width_mm", "180"]),
    ({"scanner": {"source_to_isocentre_mm": -5.0}}, ["source_to_isocentre_mm"]),
    ({"scanner": {"bowtie": "chest"}}, ["[scanner] bowtie", "'body'"]),
    ({"scanner": {"bowtie": {"material": "lead", "ratio": 0.1, "centre_thickness_mm": 0.0,
                             "phantom_radius_mm": 100.0}}}, ["material", "'aluminium'"]),
    ({"scanner": {"bowtie": {"material": "aluminium"}}}, ["[scanner.bowtie]", "profile"]),
    ({"scanner": {"bowtie": {"material": "aluminium", "ratio": 0.1}}}, ["[scanner.bowtie]", "centre_thickness_mm"]),
    ({"scanner": {"bowtie": {"material": "aluminium", "profile": "nope.csv"}}}, ["profile", "does not exist"]),
    ({"scanner": {"bowtie": {"material": {"density_g_cm3": 2.2, "mass_fractions": {"Qq": 1.0}},
                             "centre_thickness_mm": 0.0, "phantom_radius_mm": 100.0, "ratio": 0.1}}},
     ["[scanner.bowtie] material", "Qq"]),
    ({"scanner": {"bowtie": {"material": "ptfe", "centre_thickness_mm": 5.0, "phantom_radius_mm": 100.0,
                             "ratio": 0.1, "max_thickness_mm": 2.0}}}, ["max_thickness_mm", ">="]),
    ({"scan": {"tube_current_modulation": [[0.0, 1.0]]}}, ["tube_current_modulation", "two"]),
    ({"scan": {"tube_current_modulation": [[0.0, 1.0], [0.0, 2.0]]}}, ["tube_current_modulation", "increasing"]),
    ({"scan": {"tube_current_modulation": [[0.0, 1.0], [10.0, -2.0]]}}, ["tube_current_modulation", ">= 0"]),
    ({"scan": {"tube_current_modulation": [[-300.0, 0.0], [300.0, 0.0]]}}, ["tube_current_modulation", "zero"]),
    ({"scan": None}, ["missing section [scan]"]),
])
def test_bad_input_names_the_key(over, words):
    with pytest.raises(ProtocolError) as exc:
        parse_protocol(_data(**over))
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_read_protocol_errors(tmp_path):
    with pytest.raises(ProtocolError, match="does not exist"):
        read_protocol(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[scan\npitch = 1")
    with pytest.raises(ProtocolError, match="not valid TOML"):
        read_protocol(tmp_path / "bad.toml")
    (tmp_path / "p.toml").write_text(EXAMPLE.read_text().replace("pitch = 1.0", "pitch = 0.0"))
    with pytest.raises(ProtocolError, match=r"p\.toml: \[scan\] pitch"):
        read_protocol(tmp_path / "p.toml")


def test_scan_range_missing_the_phantom():
    """The irradiated range [z_start − H/2, z_end + H/2] must overlap the phantom's z extent."""
    ph = VoxelPhantom(np.zeros((10, 4, 4), dtype=np.uint8), spacing_mm=(10.0, 10.0, 10.0),
                      origin_xyz_mm=(-15.0, -15.0, 300.0))  # z from 295 to 395 mm
    p = parse_protocol(_data())  # focal spot -100..100 mm, beam reaches 120 mm
    with pytest.raises(ProtocolError, match=r"\[scan\] z_start_mm.*misses the phantom"):
        p.source(phantom=ph)
    q = parse_protocol(_data(scan={"z_end_mm": 280.0}))  # beam reaches 300 mm > 295 mm
    assert isinstance(q.source(phantom=ph), CTFanBeam)
    assert isinstance(p.source(isocentre_xyz_mm=(0.0, 0.0, 300.0), phantom=ph), CTFanBeam)


def test_helical_source_follows_the_helix():
    p = parse_protocol(_data(scanner={"source_to_isocentre_mm": 600.0}))
    src = p.source()
    assert type(src) is CTFanBeam and src.rotation == "continuous"
    assert src.pitch == 1.0 and src.n_rotations == pytest.approx(5.0)
    assert src.z_start_mm == -100.0 and src.z_end_mm == pytest.approx(100.0)
    b = src.sample(20000, np.random.default_rng(3))
    x, y, z = b.position_mm.T
    np.testing.assert_allclose(np.hypot(x, y), 600.0, rtol=1e-12)
    assert z.min() >= -100.0 and z.max() <= 100.0
    # θ = 360° (z − z0) / feed, source at −R (cos θ, sin θ)
    theta = np.degrees(np.arctan2(-y, -x)) % 360.0
    expect = (360.0 * (z + 100.0) / 40.0) % 360.0
    d = (theta - expect + 180.0) % 360.0 - 180.0
    assert np.max(np.abs(d)) < 1e-6
    # uniform in z without modulation (KS)
    assert stats.kstest(z, stats.uniform(loc=-100.0, scale=200.0).cdf).pvalue > 1e-3


def _profile_cdf(points, z0, z1):
    """CDF of the density ∝ interp(points) on [z0, z1], by a fine trapezoid rule."""
    zz = np.linspace(z0, z1, 200_001)
    t = np.asarray(points, float)
    m = np.interp(zz, t[:, 0], t[:, 1])
    c = np.concatenate([[0.0], np.cumsum(0.5 * (m[1:] + m[:-1]) * np.diff(zz))])
    c /= c[-1]
    return lambda z: np.interp(z, zz, c)


@pytest.mark.parametrize("points", [
    [[-150.0, 0.8], [-50.0, 0.6], [50.0, 1.1], [150.0, 1.2]],          # the example's profile
    [[-300.0, 0.2], [-20.0, 0.2], [0.0, 3.0], [20.0, 0.0], [300.0, 0.0]],  # peaked, zero at the end
    [[-50.0, 1.0], [50.0, 1.0]],                                          # flat (constant beyond the ends)
])
def test_tube_current_modulation_z_distribution(points):
    """The sampled focal-spot z follows m(z) / ∫m (KS and χ² on 30 bins)."""
    p = parse_protocol(_data(scan={"z_start_mm": -150.0, "z_end_mm": 150.0, "tube_current_modulation": points}))
    src = p.source()
    assert isinstance(src, ModulatedCTFanBeam)
    rng = np.random.default_rng(11)
    n = 200_000
    z = src.sample(n, rng).position_mm[:, 2]
    cdf = _profile_cdf(points, -150.0, 150.0)
    assert stats.kstest(z, cdf).pvalue > 1e-3
    edges = np.linspace(-150.0, 150.0, 31)
    expected = n * np.diff(cdf(edges))
    observed = np.histogram(z, edges)[0]
    keep = expected > 0
    assert np.all(observed[~keep] == 0)
    chi2 = np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep])
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3
    # the angle still follows the helix
    x, y = src.sample(1000, rng).position_mm[:, :2].T
    assert np.allclose(np.hypot(x, y), p.source_to_isocentre_mm)
    # mean relative mA: exact trapezoid vs numeric integral
    zz = np.linspace(-150.0, 150.0, 300_001)
    t = np.asarray(points, float)
    assert p.mean_relative_mA == pytest.approx(np.trapezoid(np.interp(zz, t[:, 0], t[:, 1]), zz) / 300.0, rel=1e-6)
    assert src.mean_relative_mA == pytest.approx(p.mean_relative_mA, rel=1e-12)


def test_modulated_beam_matches_helix_geometry():
    p = parse_protocol(_data(scan={"tube_current_modulation": [[-100.0, 1.0], [100.0, 3.0]]}))
    b = p.source().sample(5000, np.random.default_rng(5))
    x, y, z = b.position_mm.T
    theta = np.degrees(np.arctan2(-y, -x)) % 360.0
    d = (theta - (360.0 * (z + 100.0) / 40.0) % 360.0 + 180.0) % 360.0 - 180.0
    assert np.max(np.abs(d)) < 1e-6
    np.testing.assert_allclose(np.linalg.norm(b.direction, axis=1), 1.0, rtol=1e-12)
    # rising profile 1 → 3: more photons at the end; mean z = ∫z m / ∫m = 100/6 mm
    assert np.mean(z) == pytest.approx(100.0 / 6.0, abs=4 * 200.0 / math.sqrt(12 * 5000))


def test_bowtie_presets_and_custom(tmp_path):
    p = parse_protocol(_data(scanner={"bowtie": "body"}))
    bt = p.bowtie_filter()
    R = p.source_to_isocentre_mm
    assert bt.thickness_mm(0.0, R) == pytest.approx(0.0)
    assert bt.thickness_mm(249.0, R) == pytest.approx(30.0)  # outside the 16 cm cylinder: capped
    # ratio 0.15 mm per mm of missing chord at x where s = 100 mm
    x = 100.0 * R / math.sqrt(R * R - 100.0 ** 2)
    chord = 2 * math.sqrt(160.0 ** 2 - 100.0 ** 2)
    assert bt.thickness_mm(x, R) == pytest.approx(0.15 * (320.0 - chord), rel=1e-9)
    assert parse_protocol(_data(scanner={"bowtie": "head"})).bowtie["phantom_radius_mm"] == 100.0
    assert set(BOWTIE_PRESETS) == {"body", "head"}
    assert parse_protocol(_data(scanner={"bowtie": "none"})).bowtie_filter() is None
    # a tabulated PTFE profile, relative to the protocol folder
    (tmp_path / "bt.csv").write_text("fan_mm,thickness_mm\n-300,20\n0,1\n300,20\n")
    q = parse_protocol(_data(scanner={"bowtie": {"material": "PTFE", "profile": "bt.csv"}}), base_dir=tmp_path)
    assert q.bowtie["material"] is BOWTIE_MATERIALS["ptfe"]
    assert q.bowtie_filter().thickness_mm(150.0, 570.0) == pytest.approx(10.5)
    src = q.source()
    assert src.bowtie is not None and 0 < src.sample(100, np.random.default_rng(0)).weight.max() <= 1
    # an inline material
    r = parse_protocol(_data(scanner={"bowtie": {"material": {"density_g_cm3": 1.7, "mass_fractions": {"C": 1.0}},
                                                 "centre_thickness_mm": 1.0, "phantom_radius_mm": 120.0,
                                                 "ratio": 0.2}}))
    assert r.bowtie_filter().material.density_g_cm3 == 1.7


def test_axial_source_is_one_rotation():
    p = read_protocol(EXAMPLE)
    a = p.axial_source()
    assert a.rotation == "continuous" and a.pitch == 0.0 and a.total_angle_deg == 360.0
    assert a.slice_width_mm == 40.0 and a.bowtie is not None and type(a) is CTFanBeam
    z = a.sample(1000, np.random.default_rng(0)).position_mm[:, 2]
    assert np.all(z == 0.0)
    narrow = p.axial_source(200.0)
    assert narrow.fan_width_mm == 200.0 and narrow.solid_angle_sr < a.solid_angle_sr


def test_protocol_is_a_frozen_record():
    p = parse_protocol(_data())
    assert isinstance(p, Protocol)
    with pytest.raises(AttributeError):
        p.pitch = 2.0
