"""``digipat topology MASK``: topology of a binary mask and of the tree it holds (airway, vessel).

Prints the Betti numbers (components, tunnels, cavities; :func:`pipeline.topology.betti_numbers`),
the skeleton graph's end points, branch points, cycles and total length in mm
(:func:`pipeline.topology.skeleton_graph`), and with

* ``--cldice OTHER_MASK``: clDice of MASK (prediction) against OTHER_MASK (reference),
  :func:`pipeline.topology.cldice`;
* ``--repair OUT``: the mask made one component without loops
  (:func:`pipeline.topology.repair_tree`), written to OUT (NIfTI, NRRD or MHA);
* ``--report FILE.json``: everything, with the node and edge lists, bridges and cuts, in
  world coordinates (x, y, z) mm as well as voxel indices (z, y, x).

Every input is read and every result computed before anything is written, so bad input
leaves no file behind.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["register", "TopologyCliError", "load_mask", "topology_summary"]

SCHEMA_VERSION = "1.0"
_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


class TopologyCliError(ValueError):
    """Bad input to ``digipat topology``."""


def register(sub) -> None:
    """Add ``topology`` to the ``digipat`` subparsers."""
    p = sub.add_parser(
        "topology", help="topology of a mask: Betti numbers, skeleton graph, clDice, tree repair",
        description="Betti numbers b0 (components), b1 (tunnels/loops), b2 (cavities) of a binary mask, its "
                    "skeleton graph (end points, branch points, cycles, length in mm); optionally clDice against "
                    "another mask and a repair of a tree (airway, vessel) into one component without loops.")
    p.add_argument("mask", help="binary mask (0 = background, one other value = foreground): NIfTI, NRRD, MHA "
                                "or a DICOM series folder")
    p.add_argument("--connectivity", type=int, choices=(26, 6), default=26,
                   help="foreground connectivity for the Betti numbers; the background takes the other one "
                        "(26/6 or 6/26; default 26). The skeleton and the repair always use 26/6")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--cldice", metavar="OTHER_MASK",
                   help="also clDice of MASK (prediction) against OTHER_MASK (reference, same grid)")
    p.add_argument("--repair", metavar="OUT", help="write the repaired tree (one component, no loops) to OUT "
                                                   "(.nii.gz, .nii, .nrrd or .mha)")
    p.add_argument("--report", metavar="FILE.json", help="write the full report (node and edge lists, bridges, "
                                                         "cuts) as JSON")
    p.add_argument("--max-gap-mm", type=float, default=5.0,
                   help="repair: largest gap bridged, distance between the nearest voxels in mm (default 5)")
    p.add_argument("--far-components", choices=("drop", "keep"), default="drop",
                   help="repair: what to do with components farther than --max-gap-mm (default drop)")
    p.set_defaults(func=cmd_topology)


def load_mask(path, name: str = "MASK"):
    """Read a binary mask: ``(Volume, bool array)``; refuses label maps, grey images and empty masks."""
    import numpy as np

    from pipeline.image import read_image

    vol = read_image(path)
    a = vol.array
    values = np.unique(a)
    if values.size > 2 or (values.size == 2 and values[0] != 0) or not np.all(np.isfinite(values)):
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise TopologyCliError(f"{name} {path} is not a binary mask: it holds {values.size} values ({shown}); give "
                               "a mask with 0 for background and one other value for the structure (threshold or "
                               "select one label first)")
    mask = a != 0
    if not mask.any():
        raise TopologyCliError(f"{name} {path} is empty (no foreground voxel): there is no structure to analyse")
    return vol, mask


def _world(vol, index_zyx) -> list[float]:
    return [round(float(c), 4) for c in vol.index_to_world(index_zyx)]


def topology_summary(vol, mask, *, connectivity: int = 26) -> tuple[dict, object]:
    """Betti numbers and the skeleton graph's counts of a mask; returns ``(summary, graph)``."""
    from pipeline.topology import betti_numbers, skeleton_graph

    b = betti_numbers(mask, connectivity=connectivity)
    g = skeleton_graph(mask, spacing_mm=vol.spacing_mm)
    return {"betti": b.as_dict(), "skeleton": g.summary()}, g


def _check_output(path: str | None, what: str, suffixes: tuple[str, ...], inputs: list[Path]) -> None:
    if path is None:
        return
    p = Path(path)
    if not p.name.lower().endswith(suffixes):
        raise TopologyCliError(f"{what} {path}: the file name must end with one of {', '.join(suffixes)}")
    if p.is_dir():
        raise TopologyCliError(f"{what} {path} is a folder: give a file name")
    if any(p.resolve() == q.resolve() for q in inputs):
        raise TopologyCliError(f"{what} {path} is an input file: choose another name, the input is kept as it is")


def cmd_topology(a) -> int:
    """``digipat topology``. Returns 0."""
    import numpy as np

    from physics.atomic import json_text
    from pipeline.image import write_image
    from pipeline.topology import cldice, repair_tree
    from workflows.common import hash_file, provenance, write_json_atomic

    inputs = [Path(a.mask)] + ([Path(a.cldice)] if a.cldice else [])
    _check_output(a.repair, "--repair", _IMAGE_SUFFIXES, inputs)
    _check_output(a.report, "--report", (".json",), inputs)
    if a.repair and a.report and Path(a.repair).resolve() == Path(a.report).resolve():
        raise TopologyCliError("--repair and --report name the same file: give two names")
    if not (np.isfinite(a.max_gap_mm) and a.max_gap_mm >= 0):
        raise TopologyCliError(f"--max-gap-mm must be a distance >= 0 mm, got {a.max_gap_mm}")

    vol, mask = load_mask(a.mask, "MASK")
    other = None
    if a.cldice:
        ovol, other = load_mask(a.cldice, "OTHER_MASK")
        if other.shape != mask.shape:
            raise TopologyCliError(f"OTHER_MASK {a.cldice} has shape {other.shape} (z, y, x) but MASK has "
                                   f"{mask.shape}: clDice needs both masks on the same grid (resample one first)")
        if not np.allclose(ovol.spacing_mm, vol.spacing_mm, rtol=1e-4):
            raise TopologyCliError(f"OTHER_MASK {a.cldice} has spacing {ovol.spacing_mm} mm but MASK has "
                                   f"{vol.spacing_mm} mm: clDice needs both masks on the same grid")

    summary, graph = topology_summary(vol, mask, connectivity=a.connectivity)
    out = {"schema_version": SCHEMA_VERSION, "mask": str(a.mask), "shape_zyx": list(mask.shape),
           "spacing_mm": list(vol.spacing_mm), "foreground_voxels": int(mask.sum()), **summary}
    if other is not None:
        out["cldice"] = {"reference": str(a.cldice), **cldice(mask, other)}
    repaired = None
    if a.repair:
        rep = repair_tree(mask, spacing_mm=vol.spacing_mm, max_gap_mm=a.max_gap_mm,
                          far_components=a.far_components)
        repaired = rep.mask
        r = rep.as_dict()
        for br in r["bridges"]:
            br["from_xyz_mm"] = _world(vol, br["from_index_zyx"])
            br["to_xyz_mm"] = _world(vol, br["to_index_zyx"])
        for c in r["cuts"]:
            c["xyz_mm"] = _world(vol, c["index_zyx"])
        for f in r["far_components"]:
            f["centroid_xyz_mm"] = _world(vol, f["centroid_index_zyx"])
        r["skeleton_after"] = topology_summary(vol, repaired, connectivity=26)[0]["skeleton"] if repaired.any() else {}
        r["output"] = str(a.repair)
        out["repair"] = r

    if a.json:
        print(json_text(out), end="")
    else:
        _print_text(out)

    if a.report:
        full = dict(out)
        g = graph.as_dict()
        for n in g["node_list"]:
            n["xyz_mm"] = _world(vol, n["index_zyx"])
        full["skeleton"] = g
        full["provenance"] = provenance(inputs_sha256={str(p): hash_file(p) for p in inputs if p.is_file()})
    if repaired is not None:
        write_image(vol.with_array(repaired.astype(np.uint8)), a.repair)
    if a.report:
        write_json_atomic(a.report, full)
    return 0


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _print_text(out: dict) -> None:
    b, s = out["betti"], out["skeleton"]
    print(f"mask: {out['mask']} ({' x '.join(map(str, out['shape_zyx']))} voxels, spacing "
          f"{' x '.join(f'{v:g}' for v in out['spacing_mm'])} mm, {out['foreground_voxels']} foreground)")
    print(f"Betti numbers ({b['foreground_connectivity']}-connected foreground, "
          f"{b['background_connectivity']}-connected background): b0 = {b['b0']}, b1 = {b['b1']}, "
          f"b2 = {b['b2']} (Euler characteristic {b['euler_characteristic']})")
    print(f"skeleton: {_n(s['end_points'], 'end point')}, {_n(s['branch_points'], 'branch point')}, "
          f"{_n(s['edges'], 'edge')}, {_n(s['cycles'], 'cycle')}, total length {s['total_length_mm']:.1f} mm")
    if "cldice" in out:
        c = out["cldice"]
        print(f"clDice against {c['reference']}: {c['cldice']:.4f} (topology precision {c['topology_precision']:.4f}, "
              f"topology sensitivity {c['topology_sensitivity']:.4f})")
    if "repair" in out:
        r = out["repair"]
        print(f"repair: components {r['components_before']} -> {r['components_after']}, loops {r['loops_before']} -> "
              f"{r['loops_after']}, cavities {r['cavities_after']}; {_n(len(r['bridges']), 'bridge')}, "
              f"{_n(len(r['cuts']), 'cut')}, {_n(len(r['far_components']), 'far component')}"
              + (f" ({r['far_components'][0]['action']})" if r["far_components"] else "")
              + f"; +{r['voxels_added']} / -{r['voxels_removed']} voxels")
        for br in r["bridges"]:
            print(f"  bridge: gap {br['gap_mm']:.2f} mm, length {br['length_mm']:.2f} mm, "
                  f"radius {br['radius_mm']:.2f} mm, {br['from_xyz_mm']} -> {br['to_xyz_mm']}")
        for c in r["cuts"]:
            state = f"removed {c['voxels_removed']} voxels" if c["severed"] else "not severed, undone"
            print(f"  cut: at {c['xyz_mm']} (radius {c['radius_mm']:.2f} mm, edge mean radius "
                  f"{c['edge_mean_radius_mm']:.2f} mm): {state}")
        if not r["is_tree"]:
            print("  warning: the result is not a single tree without loops (see the report)")
        print(f"wrote {r['output']}")
