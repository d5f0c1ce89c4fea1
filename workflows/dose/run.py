"""``digipat dose``: a scenario file → a Monte Carlo photon-transport run → dose outputs.

Composes :mod:`workflows.dose.scenario` (the TOML contract of issue 3) with the engine in
:mod:`physics.transport` (Woodcock tracking, kerma approximation; see its modules for the
physics and references). Outputs in ``OUT`` (fixed names, written atomically; the stage
record ``results.json`` is written last, so it exists only after a complete run):

``dose.nii.gz``
    Dose per voxel per source photon (Gy), float64, on the label map's grid.
``dose_sigma.nii.gz``
    Its 1σ statistical uncertainty from the batch spread (Gy).
``organs.csv``
    Per label: ``label_id, tissue_name, voxel_count, mass_g, edep_eV_per_photon,
    edep_sigma_eV_per_photon, dose_Gy_per_photon, dose_sigma_Gy_per_photon``.
``results.json``
    ``schema_version``, per label the same quantities, energy incident / deposited /
    escaping per photon (eV) and the relative energy-balance error, histories, batches,
    histories per second, and provenance (inputs hash, versions, seed).

Dose is ``D = E_dep / m`` with ``m = ρ V`` (1 eV = 1.602176634e-19 J). A rerun with
the same inputs (scenario content and the files it names) finds ``results.json`` and
skips the run unless ``force=True``.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from workflows.common import SCHEMA_VERSION, ResultCache, hash_file, hash_params, provenance, write_text_atomic
from workflows.dose.patient import run_patient_dose
from workflows.dose.scenario import (CT_CONTINUOUS_KEYS, ProtocolScenario, Scenario, ScenarioError, check_threads,
                                     read_dose_scenario)

__all__ = ["DoseModel", "build_model", "run_dose", "RESULTS_NAME", "DOSE_NAME", "DOSE_SIGMA_NAME",
           "ORGANS_NAME"]

RESULTS_NAME = "results.json"
DOSE_NAME = "dose.nii.gz"
DOSE_SIGMA_NAME = "dose_sigma.nii.gz"
ORGANS_NAME = "organs.csv"
EV_TO_J = 1.602176634e-19


@dataclass
class DoseModel:
    """The engine objects built from a scenario (ready for :func:`physics.transport.run`)."""

    phantom: object
    materials: Mapping[int, object]
    source: object
    physics: object
    settings: object
    volume: object  # the label map's pipeline.image.Volume (grid for the outputs)


def _ray_hits_box(phantom, position_mm, direction) -> bool:
    """Does the ray ``position + t d`` (t >= 0) cross the phantom's grid box (slab test)?"""
    p = phantom.world_to_grid_cm(np.asarray(position_mm, float))
    d = phantom.world_to_grid_dir(np.asarray(direction, float))
    d = d / np.linalg.norm(d)
    box = phantom.box_cm
    t0, t1 = 0.0, np.inf
    for a in range(3):
        if abs(d[a]) < 1e-300:
            if not 0.0 <= p[a] <= box[a]:
                return False
            continue
        ta, tb = sorted(((0.0 - p[a]) / d[a], (box[a] - p[a]) / d[a]))
        t0, t1 = max(t0, ta), min(t1, tb)
    return t0 < t1


def _check_element_columns(path: Path) -> None:
    """Reject element-like column headers that are not chemical symbols (e.g. ``Xx``, ``OO``).

    The engine's reader ignores columns that are not element symbols (so ``voxel_count``,
    ``mass_g`` of the TG-195 table pass); a mistyped symbol would silently drop an element.
    """
    import re

    from physics.transport.materials import ELEMENT_SYMBOLS

    try:
        with path.open(newline="") as fh:
            header = [h.strip() for h in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"[phantom] materials: cannot read {str(path)!r}: {exc}") from None
    for h in header[3:]:
        if re.fullmatch(r"[A-Za-z]{1,2}", h) and h not in ELEMENT_SYMBOLS:
            raise ScenarioError(f"[phantom] materials: {path.name} has column {h!r}, which is not a known "
                                f"element symbol (valid: chemical symbols H..Fm, case-sensitive, e.g. 'O', 'Ca')")


def build_model(scenario: Scenario) -> DoseModel:
    """Read the phantom, materials and spectrum of ``scenario`` and build the engine objects.

    Parameters
    ----------
    scenario : Scenario
        From :func:`workflows.dose.scenario.read_scenario`.

    Returns
    -------
    DoseModel

    Raises
    ------
    ScenarioError
        Unreadable or non-integer label map, negative labels, a label without a material,
        an invalid material (unknown element, density <= 0, fractions not summing to 1),
        an invalid spectrum (negative weights) or SpekPy parameters (kVp out of range,
        unknown filter material), a bowtie or world material without a row in the
        materials table, an invalid scan (e.g. ``z_end_mm`` without ``pitch``), a source
        that misses the phantom, ``world_material`` with an engine that lacks it. The
        message names the scenario key concerned.
    """
    import dataclasses

    from physics.transport import (Bowtie, CTFanBeam, ParallelBeam, PencilBeam, Physics, PointSource, Settings,
                                   TransportError, VoxelPhantom, read_materials_csv, read_spectrum_csv,
                                   spekpy_spectrum)
    from pipeline.image import read_image

    ph = scenario.phantom
    try:
        vol = read_image(ph.labels, allow_singleton_axes=True)
    except (ValueError, RuntimeError) as exc:  # ImageError, SimpleITK read failures
        raise ScenarioError(f"[phantom] labels: cannot read {str(ph.labels)!r}: {exc}") from None
    arr = np.asarray(vol.array)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ScenarioError(f"[phantom] labels: {str(ph.labels)!r} must hold integer labels, "
                                f"found non-integer values (dtype {arr.dtype})")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ScenarioError(f"[phantom] labels: labels must be >= 0, found {int(arr.min())}")
    _check_element_columns(ph.materials)
    try:
        materials = read_materials_csv(ph.materials)
    except TransportError as exc:
        raise ScenarioError(f"[phantom] materials: {exc}") from None
    used = np.unique(arr)
    missing = [int(i) for i in used if int(i) not in materials]
    if missing:
        raise ScenarioError(f"[phantom] materials: labels {missing[:10]} of {ph.labels.name} have no row in "
                            f"{ph.materials.name} (it has label_id {sorted(materials)[:20]})")

    world_kwargs = {}
    if ph.world_material is not None:
        if ph.world_material not in materials:
            raise ScenarioError(f"[phantom] world_material {ph.world_material} has no row in {ph.materials.name} "
                                f"(it has label_id {sorted(materials)[:20]})")
        try:
            have = {f.name for f in dataclasses.fields(VoxelPhantom)}
        except TypeError:  # not a dataclass
            have = set()
        if not {"world_material_id", "world_margin_mm"} <= have:
            raise ScenarioError("[phantom] world_material needs engine support: this physics.transport "
                                "VoxelPhantom has no world_material_id / world_margin_mm")
        world_kwargs = {"world_material_id": ph.world_material, "world_margin_mm": ph.world_margin_mm}

    s = scenario.source
    try:
        if s.kvp is not None:
            energy = spekpy_spectrum(s.kvp, s.anode_angle_deg, s.filtration_mm)
        elif s.spectrum is not None:
            energy = read_spectrum_csv(s.spectrum)
        else:
            energy = s.energy_keV
    except TransportError as exc:
        raise ScenarioError(f"[source] {'spectrum: ' if s.spectrum is not None else ''}{exc}") from None
    g = s.geometry
    bowtie = None
    if "bowtie" in g:
        b = g["bowtie"]
        if b["material_id"] not in materials:
            raise ScenarioError(f"[source.bowtie] material_id {b['material_id']} has no row in {ph.materials.name} "
                                f"(it has label_id {sorted(materials)[:20]})")
        try:
            if "profile" in b:
                bowtie = Bowtie.from_csv(materials[b["material_id"]], b["profile"])
            else:
                bowtie = Bowtie.cylinder_compensator(
                    materials[b["material_id"]], b["centre_thickness_mm"], b["phantom_radius_mm"], b["ratio"],
                    b.get("max_thickness_mm"))
        except TransportError as exc:
            raise ScenarioError(f"[source.bowtie] {'profile: ' if 'profile' in b else ''}{exc}") from None
    try:
        if s.type == "pencil":
            source = PencilBeam(g["position_mm"], g["direction"], energy)
        elif s.type == "parallel":
            source = ParallelBeam(g["position_mm"], g["direction"], g["width_mm"], g["height_mm"], energy,
                                  up=g.get("up"))
        elif s.type == "point":
            source = PointSource(g["position_mm"], energy)
        else:
            source = CTFanBeam(g["source_to_isocentre_mm"], g["fan_width_mm"], g["slice_width_mm"],
                               g.get("angles_deg"), energy, g.get("isocentre_mm", (0.0, 0.0, 0.0)),
                               g.get("axis", (0.0, 0.0, 1.0)), rotation=g.get("rotation", "discrete"),
                               bowtie=bowtie, **{k: g[k] for k in CT_CONTINUOUS_KEYS if k in g})
    except TransportError as exc:
        raise ScenarioError(f"[source] {exc}") from None

    try:
        phantom = VoxelPhantom(arr, vol.spacing_mm, vol.origin_xyz_mm, vol.direction_xyz, **world_kwargs)
        e_max = max(150.0, source.max_energy_keV * 1.001)
        physics = Physics(scenario.physics.compton, scenario.physics.rayleigh, scenario.physics.cutoff_keV,
                          fluorescence=scenario.physics.fluorescence, e_max_keV=e_max)
        r = scenario.run
        settings = Settings(r.histories_per_batch, r.batches, r.seed, r.threads)
    except TransportError as exc:
        raise ScenarioError(str(exc)) from None
    if source.min_energy_keV <= physics.cutoff_keV:
        key = s.energy_key
        raise ScenarioError(f"[source] {key}: photon energies must exceed [physics] cutoff_keV = "
                            f"{physics.cutoff_keV:g} keV, got {source.min_energy_keV:g} keV")
    ray = source.central_ray()
    if ray is not None and not _ray_hits_box(phantom, *ray):
        if s.type == "ct":
            where = (f"at angle {source.angles_deg[0]:g} deg" if source.rotation == "discrete" else
                     f"from {np.round(ray[0], 3).tolist()} mm (middle of the scan)")
            what = (f"isocentre_mm {g.get('isocentre_mm', [0.0, 0.0, 0.0])} and axis "
                    f"{g.get('axis', [0.0, 0.0, 1.0])}: the central ray {where}")
        else:
            what = f"position_mm {g['position_mm']} and direction {g['direction']}: the {s.type} beam"
        raise ScenarioError(f"[source] {what} misses the phantom grid of {ph.labels.name}")
    return DoseModel(phantom, materials, source, physics, settings, vol)


def _organ_rows(result, materials, labels_arr) -> list[dict]:
    counts = dict(zip(*np.unique(labels_arr, return_counts=True)))
    rows = []
    for r in result.label_table():
        lab = r["label"]
        rows.append({
            "label_id": lab,
            "tissue_name": materials[lab].name,
            "voxel_count": int(counts.get(lab, 0)),
            "mass_g": r["mass_g"],
            "edep_eV_per_photon": r["edep_eV_per_photon"],
            "edep_sigma_eV_per_photon": r["edep_sigma_eV_per_photon"],
            "dose_Gy_per_photon": r["dose_Gy_per_photon"],
            "dose_sigma_Gy_per_photon": r["dose_sigma_Gy_per_photon"],
        })
    return rows


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _inputs_hash(scenario: Scenario) -> str:
    """Hash of what determines the result: parameters and file contents (not paths, not threads)."""
    d = scenario.to_dict()
    d["source"].pop("spectrum", None)
    d["source"].get("bowtie", {}).pop("profile", None)  # its content is in input_files
    d["run"].pop("threads", None)
    extra = []
    if scenario.source.kvp is not None:  # the spectrum is computed: its code version matters
        from importlib.metadata import PackageNotFoundError, version
        try:
            extra.append(("spekpy", version("spekpy")))
        except PackageNotFoundError:  # build_model then reports the missing package
            extra.append(("spekpy", None))
    world = {k: v for k, v in d["phantom"].items() if k.startswith("world_")}
    parts = [d["source"], d["physics"], d["run"], [hash_file(f) for f in scenario.input_files()]]
    if world or extra:
        parts.append([world, extra])  # only when used, so older scenarios keep their hash
    return hash_params(*parts)


def _dose_task(scenario_path: str, out_dir: str, task: int, tasks: int, threads: int | None) -> str:
    """One Slurm array task of a split dose run: the batches ``task, task + tasks, ...`` of the
    scenario, written to ``OUT/batches/`` (then ``OUT/batches/task_K.json`` marks it done)."""
    import dataclasses

    from physics.transport import run as transport_run
    from workflows.common import write_json_atomic

    sc = read_dose_scenario(scenario_path)
    model = build_model(sc)
    state = Path(out_dir) / "batches"
    settings = dataclasses.replace(model.settings, state_dir=str(state), threads=threads)
    mine = list(range(task, settings.n_batches, tasks))
    transport_run(model.phantom, model.materials, model.source, model.physics, settings, batches=mine)
    write_json_atomic(state / f"task_{task}.json", {"task": task, "tasks": tasks, "batches": mine})
    return f"task_{task}"


def _dose_on_slurm(scenario_path: Path, sc, out: Path, tasks: int, threads, slurm, wait: bool, poll_s: float,
                   say) -> dict | None:
    """Submit the unfinished shares of a split dose run and wait; None when all are done."""
    from workflows.hpc import HPCError, JobBook, require_slurm, slurm_options, submit_array, wait_for

    if isinstance(tasks, bool) or not isinstance(tasks, int) or not 1 <= tasks <= sc.run.batches:
        raise ScenarioError(f"--tasks must be an integer from 1 to the scenario's {sc.run.batches} batches "
                            f"([run] batches: each task runs whole batches), got {tasks!r}")
    try:
        require_slurm()
        options = slurm_options(None, slurm)
    except HPCError as exc:
        raise ScenarioError(str(exc)) from None
    state = out / "batches"
    marker = {f"task_{k}": state / f"task_{k}.json" for k in range(tasks)}

    def done(item: str) -> bool:
        if not marker[item].is_file():
            return False
        rec = json.loads(marker[item].read_text())
        return rec.get("tasks") == tasks

    book = JobBook(out / "jobs.json")
    active = book.active()
    todo = [i for i in marker if not done(i)]
    new = [i for i in todo if i not in active]
    if new:
        ids = submit_array(_dose_task, [(str(scenario_path.resolve()), str(out.resolve()), int(i.split("_")[1]), tasks,
                                         threads) for i in new], out.resolve() / "slurm", options, name="digipat-dose")
        book.add("dose", new, ids)
        say(f"dose: submitted {len(new)} of {tasks} task(s) as Slurm job array {ids[0].split('_')[0]} "
            f"({sc.run.batches} batches of {sc.run.histories_per_batch} histories); status: digipat jobs {out}")
    if not wait:
        return {"submitted": new, "queued": sorted(set(active) | set(new)), "jobs": str(out / "jobs.json")}
    lost = wait_for(list(marker), done, book, say, "dose: Slurm: tasks", poll_s)
    if lost:
        raise ScenarioError(f"{len(lost)} dose task(s) left the Slurm queue without finishing (cancelled, timed "
                            f"out or preempted: {', '.join(lost)}); run the same command again (finished "
                            f"batches are kept in {state})")
    return None


def run_dose(scenario: Scenario | str | Path, out_dir: str | Path, *, threads: int | None = None,
             force: bool = False, quiet: bool = False, executor: str = "local", tasks: int | None = None,
             slurm: Mapping | None = None, wait: bool = True, poll_s: float = 2.0) -> dict:
    """Run a dose scenario and write its outputs to ``out_dir``.

    Parameters
    ----------
    scenario : Scenario or path
        A validated scenario or the path of its TOML file.
    out_dir : path
        Output folder (created). Any old ``results.json`` is removed before a new run.
    threads : int, optional
        Numba threads; overrides ``[run] threads``.
    force : bool
        Rerun even if ``results.json`` holds a run of the same inputs.
    quiet : bool
        No progress lines on standard error.
    executor, tasks, slurm, wait : optional
        ``executor="slurm"`` splits the scenario's batches into ``tasks`` shares (task k runs
        batches k, k + tasks, ...: the same random streams as the local run), submits them as
        one Slurm job array (``slurm``: the ``--slurm-*`` settings, see :mod:`workflows.hpc`),
        waits (or returns at once with ``wait=False``; a later call merges) and merges the
        batch records exactly as the local run adds its batches: the result equals it.

    Returns
    -------
    dict
        The content of ``results.json``.

    Raises
    ------
    ScenarioError
        Any invalid input (see :func:`workflows.dose.scenario.read_scenario` and :func:`build_model`).
    """
    import sys

    from physics.transport import TransportError
    from physics.transport import run as transport_run
    from pipeline.image import write_image

    out = Path(out_dir)
    try:
        sc = scenario if isinstance(scenario, (Scenario, ProtocolScenario)) else read_dose_scenario(scenario)
        if threads is not None:
            threads = check_threads(threads)
    except ScenarioError:
        (out / RESULTS_NAME).unlink(missing_ok=True)  # no results.json after a failed run
        raise
    if isinstance(sc, ProtocolScenario):
        # a CT protocol on a digital patient: organ doses in mGy, per CTDIvol, effective dose
        if executor != "local":
            raise ScenarioError("--executor slurm splits a Monte Carlo scenario file ([source], [run] batches); a "
                                "CT protocol on a patient runs locally for now (or as cases of a dose study)")
        return run_patient_dose(sc, out, threads=threads, force=force, quiet=quiet)
    if threads is not None:
        import dataclasses

        sc = dataclasses.replace(sc, run=dataclasses.replace(sc.run, threads=threads))
    say = (lambda text: None) if quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    key = _inputs_hash(sc)
    res_path = out / RESULTS_NAME
    cache = ResultCache(res_path, key, artifacts=[out / DOSE_NAME, out / ORGANS_NAME], force=force)
    if (old := cache.load()) is not None:
        say(f"dose: up to date ({res_path}), skipped")
        return old
    cache.invalidate()  # never leave a stale result beside new (or failed) outputs

    if executor not in ("local", "slurm"):
        raise ScenarioError(f"executor must be 'local' or 'slurm', got {executor!r}")
    if executor == "slurm":
        if not isinstance(scenario, (str, Path)):
            raise ScenarioError("a dose run on Slurm needs the scenario's file (its tasks read it)")
        left = _dose_on_slurm(Path(scenario), sc, out, tasks if tasks is not None else sc.run.batches, threads,
                              slurm, wait, poll_s, say)
        if left is not None:
            return left
    model = build_model(sc)
    if executor == "slurm":  # the batches are on disk: the run below loads them (and computes none)
        import dataclasses

        model = dataclasses.replace(model, settings=dataclasses.replace(model.settings,
                                                                        state_dir=str(out / "batches")))
    say(f"dose: {sc.run.histories} histories in {sc.run.batches} batches, grid {model.phantom.shape}")
    t0 = time.perf_counter()
    progress = None if quiet else (lambda b, n: say(f"  batch {b}/{n}"))
    try:
        result = transport_run(model.phantom, model.materials, model.source, model.physics, model.settings,
                               progress=progress)
    except TransportError as exc:
        raise ScenarioError(str(exc)) from None
    wall = time.perf_counter() - t0

    dose, dose_sigma = result.dose_Gy_per_photon()
    dose = np.where(np.isfinite(dose), dose, 0.0)
    dose_sigma = np.where(np.isfinite(dose_sigma), dose_sigma, 0.0)
    write_image(model.volume.with_array(dose.astype(np.float64)), out / DOSE_NAME)
    write_image(model.volume.with_array(dose_sigma.astype(np.float64)), out / DOSE_SIGMA_NAME)
    rows = _organ_rows(result, model.materials, model.phantom.material_id)
    write_text_atomic(out / ORGANS_NAME, _csv_text(rows))

    n = result.histories
    incident = result.incident_total_eV / n
    deposited = result.deposited_total_eV / n
    escaped = result.escaped_total_eV / n
    from physics.transport import ESCAPE_CATEGORIES
    escape = {}
    for cat in ESCAPE_CATEGORIES:
        e_m, e_s = result.escape(cat, "energy_eV")
        c_m, c_s = result.escape(cat, "count")
        escape[cat] = {"energy_eV_per_photon": e_m, "energy_sigma_eV_per_photon": e_s,
                       "photons_per_photon": c_m, "photons_sigma_per_photon": c_s}
    results = {
        "schema_version": SCHEMA_VERSION,
        "stage": "dose",
        "units": {"energy": "eV per source photon", "dose": "Gy per source photon", "mass": "g"},
        "histories": n,
        "batches": result.n_batches,
        "histories_per_second": result.histories_per_second,
        "wall_time_s": wall,
        "incident_eV_per_photon": incident,
        "deposited_eV_per_photon": deposited,
        "escaped_eV_per_photon": escaped,
        "world_eV_per_photon": result.world_total_eV / n,
        "filtered_at_source_eV_per_photon": result.filtered_total_eV / n,
        "energy_balance_relative_error": result.energy_balance_error,
        "escape": escape,
        "labels": {str(r["label_id"]): {k: v for k, v in r.items() if k != "label_id"} for r in rows},
        "files": {"dose": DOSE_NAME, "dose_sigma": DOSE_SIGMA_NAME, "organs": ORGANS_NAME},
        "scenario": sc.to_dict(),
        "provenance": provenance(inputs_hash=key, seed=sc.run.seed, engine_fingerprint=result.fingerprint,
                                 input_hashes={str(f): hash_file(f) for f in sc.input_files()}),
    }
    cache.save(results)  # last: its presence marks a complete run
    say(f"dose: done in {wall:.1f} s ({result.histories_per_second:.3g} histories/s); results: {res_path}")
    return results
