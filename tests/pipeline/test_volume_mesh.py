"""Tests for pipeline.volume_mesh: tet volume vs enclosed surface volume, tags, dolfinx loading."""

import json

import numpy as np
import pytest
from scipy.special import erf

from pipeline.image import Volume
from pipeline.surface import make_tagged_surface
from pipeline.volume_mesh import MESH_FILES, MeshingError, mesh_volume

RADIUS_MM = 6.0


def _tube_surface():
    shape, r = (40, 36, 36), RADIUS_MM
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d = np.hypot(j - 17.5 - 0.3, i - 17.5 + 0.2)
    mask = Volume((d <= r).astype(np.uint8), origin_xyz_mm=(10.0, -5.0, 3.0))
    img = mask.with_array(200.0 * (1.0 - erf((d - r) / (np.sqrt(2.0) * 0.8))))
    return make_tagged_surface(mask, intensity=img, level=200.0)


@pytest.fixture(scope="module")
def surface():
    return _tube_surface()


@pytest.fixture(scope="module")
def mesh(surface, tmp_path_factory):
    return mesh_volume(surface, tmp_path_factory.mktemp("mesh"), cells_per_radius=4.0)


def test_volume_and_caps(surface, mesh):
    st = mesh.stats
    # straight-sided tets inscribe the faceted surface: within 1 % of the enclosed volume
    assert st["volume_mm3"] == pytest.approx(surface.volume_mm3, rel=0.01)
    assert st["volume_mm3"] <= surface.volume_mm3 * 1.001
    assert set(st["n_facets"]) == {"wall", "inlet", "outlet1"}
    assert all(n > 0 for n in st["n_facets"].values())
    for c in surface.caps:
        assert st["facet_area_mm2"][c.name] == pytest.approx(c.area_mm2, rel=0.02)
        assert c.area_mm2 == pytest.approx(np.pi * RADIUS_MM**2, rel=0.015)
    assert st["quality_gamma"]["min"] > 0.02
    assert st["quality_gamma"]["p5"] > 0.4
    assert st["n_inverted"] == 0
    # element size ~ r / cells_per_radius = 1.5 mm
    assert 1.0 < st["edge_length_mm"]["mean"] < 2.5


def test_files_and_info(mesh):
    out = mesh.msh_path.parent
    for name in MESH_FILES:
        assert (out / name).is_file(), name
    assert not list(out.glob(".tmp*"))
    info = json.loads(mesh.info_path.read_text())
    assert info["boundaries"]["wall"] == 1
    assert info["boundaries"]["inlet"] == 2
    assert info["boundaries"]["outlet1"] == 3
    assert info["boundaries"]["cell_tags"] == {"fluid": 1}
    assert [c["name"] for c in info["boundaries"]["caps"]] == ["inlet", "outlet1"]
    assert info["stats"]["n_tetrahedra"] == mesh.stats["n_tetrahedra"]


def test_meshio_exports(mesh):
    import meshio

    vol = meshio.read(mesh.xdmf_path)
    fac = meshio.read(mesh.facets_xdmf_path)
    assert len(vol.cells_dict["tetra"]) == mesh.stats["n_tetrahedra"]
    assert set(np.unique(vol.cell_data["cell_tags"][0])) == {1}
    tags = fac.cell_data["facet_tags"][0]
    assert np.count_nonzero(tags == 2) == mesh.stats["n_facets"]["inlet"]
    assert np.count_nonzero(tags == 1) == mesh.stats["n_facets"]["wall"]


def _read_dolfinx(path):
    import dolfinx_solver  # noqa: F401  (must precede dolfinx)
    from mpi4py import MPI

    from dolfinx.io import gmsh as gmshio

    return gmshio.read_from_msh(path, MPI.COMM_WORLD, 0, gdim=3)


def _facet_areas(mesh_data):
    import dolfinx_solver  # noqa: F401
    import ufl
    from dolfinx import fem

    ds = ufl.Measure("ds", domain=mesh_data.mesh, subdomain_data=mesh_data.facet_tags)
    return {t: fem.assemble_scalar(fem.form(1.0 * ds(t), dtype=np.float64)) for t in (1, 2, 3)}


def test_dolfinx_reads_msh(surface, mesh):
    md = _read_dolfinx(mesh.msh_path)
    ft = md.facet_tags
    assert set(np.unique(ft.values)) == {1, 2, 3}
    assert set(np.unique(md.cell_tags.values)) == {1}
    assert md.mesh.topology.index_map(3).size_global == mesh.stats["n_tetrahedra"]
    areas = _facet_areas(md)
    assert areas[2] == pytest.approx(mesh.stats["facet_area_mm2"]["inlet"], rel=1e-9)
    assert areas[3] == pytest.approx(surface.caps[1].area_mm2, rel=0.02)
    # every boundary facet is tagged
    md.mesh.topology.create_connectivity(2, 3)
    from dolfinx.mesh import exterior_facet_indices

    assert len(exterior_facet_indices(md.mesh.topology)) == len(ft.values)


def test_refinement_increases_tets(surface, mesh, tmp_path):
    fine = mesh_volume(surface, tmp_path, cells_per_radius=5.5)
    assert fine.stats["n_tetrahedra"] > 1.5 * mesh.stats["n_tetrahedra"]
    # finer wall: closer to the enclosed volume
    err = lambda m: abs(m.stats["volume_mm3"] / surface.volume_mm3 - 1)  # noqa: E731
    assert err(fine) < err(mesh)


def test_second_order(surface, tmp_path):
    m2 = mesh_volume(surface, tmp_path, cells_per_radius=3.0, order=2)
    assert m2.stats["order"] == 2
    md = _read_dolfinx(m2.msh_path)
    assert md.mesh.geometry.cmaps[0].degree == 2
    areas = _facet_areas(md)
    # curved rim nodes recover the faceted cap area (P1: -0.9 %, P2: -0.02 % measured)
    assert areas[2] == pytest.approx(surface.caps[0].area_mm2, rel=0.003)


def test_bad_inputs(surface, tmp_path):
    with pytest.raises(MeshingError, match="TaggedSurface"):
        mesh_volume("surface.stl", tmp_path)
    with pytest.raises(MeshingError, match="cells_per_radius"):
        mesh_volume(surface, tmp_path, cells_per_radius=0)
    with pytest.raises(MeshingError, match="order must be 1 or 2"):
        mesh_volume(surface, tmp_path, order=3)
    with pytest.raises(MeshingError, match="exceeds max_size_mm"):
        mesh_volume(surface, tmp_path, min_size_mm=2.0, max_size_mm=1.0)
    bad = _tube_surface()
    bad.face_tags[:] = 1
    with pytest.raises(MeshingError, match="lack a wall"):
        mesh_volume(bad, tmp_path)


def _with_centreline(surface, radii):
    """The tube surface with a straight sizing centreline from its inlet cap to its outlet cap."""
    import dataclasses

    a = np.asarray(surface.caps[0].centre_xyz_mm, float)
    b = np.asarray(surface.caps[1].centre_xyz_mm, float)
    t = np.linspace(0.0, 1.0, len(radii))
    return dataclasses.replace(surface, centreline_xyz_mm=a + t[:, None] * (b - a),
                               centreline_radius_mm=np.asarray(radii, float)), np.linalg.norm(b - a) * t


def test_jet_sizing_radius_widens_downstream_only(surface):
    from pipeline.volume_mesh import jet_sizing_radius

    n, throat = 41, 20
    radii = np.full(n, RADIUS_MM)
    radii[throat] = 2.0
    surf, s = _with_centreline(surface, radii)
    spread = 0.25
    env = jet_sizing_radius(surf, spread)
    expect = np.minimum(RADIUS_MM, 2.0 + spread * (s - s[throat]))
    assert np.allclose(env[:throat], RADIUS_MM)  # upstream of the throat: its own radius
    assert np.allclose(env[throat:], expect[throat:])  # downstream: the throat's, widening linearly
    assert env[throat + 1] < RADIUS_MM and env[-1] == RADIUS_MM
    # the same centreline walked from the other end: the jet is on the other side
    import dataclasses

    flipped = dataclasses.replace(surf, caps=[dataclasses.replace(surf.caps[0], centre_xyz_mm=surf.caps[1].centre_xyz_mm),
                                              surf.caps[1]])
    env2 = jet_sizing_radius(flipped, spread)
    assert np.allclose(env2[throat + 1:], RADIUS_MM) and env2[throat - 1] < RADIUS_MM


def test_jet_spread_refines_the_mesh_downstream(surface, mesh, tmp_path):
    radii = np.full(41, RADIUS_MM)
    radii[10] = 3.0
    surf, _ = _with_centreline(surface, radii)
    plain = mesh_volume(surf, tmp_path / "plain", cells_per_radius=4.0)
    jet = mesh_volume(surf, tmp_path / "jet", cells_per_radius=4.0, jet_spread=0.3)
    assert jet.stats["jet_spread"] == 0.3 and plain.stats["jet_spread"] is None
    assert jet.stats["n_tetrahedra"] > 1.2 * plain.stats["n_tetrahedra"]
    with pytest.raises(MeshingError, match="jet_spread"):
        mesh_volume(surf, tmp_path / "bad", jet_spread=-0.1)
