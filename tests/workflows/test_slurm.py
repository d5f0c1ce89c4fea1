"""Studies as Slurm job arrays, against a real single-node Slurm (``.ci/slurm_up`` starts one;
``.ci/run`` does so before ``make test``). Without a Slurm answering here the tests skip.

Checked: a 3-case study through Slurm gives the same study (every case's outputs, the
elasticity) as the local run; ``--no-wait`` returns after submitting and a later call
analyses; a case cancelled while running (``scancel``) is submitted again by the next call
and the study completes, each case computed once; ``digipat jobs`` names each case's state;
bad ``[run.slurm]`` settings are refused by name.
"""

import json
import shutil
import subprocess
import time

import pytest

from workflows.hpc import HPCError, SlurmOptions, slurm_options
from workflows.study import runner as S

STUDY = """
[study]
name = "radius sensitivity on Slurm"
output = "pressure_drop_Pa"
[base]
synthetic = "straight"
stenosis = 0.0
size = "small"
flow_rate_ml_s = 0.5
model = "stokes"
cells_per_radius = 3.0
[design]
type = "oat"
parameter = "boundary_offset_mm"
values = [-0.1, 0.0, 0.1]
[run.slurm]
time_min = 10
cpus_per_task = 1
array_parallelism = 2
"""


def _slurm_idle() -> bool:
    if shutil.which("sinfo") is None:
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return r.returncode == 0 and any(s.startswith(("idle", "mix", "alloc")) for s in r.stdout.split())


@pytest.fixture(scope="module")
def slurm():
    if not _slurm_idle():
        pytest.skip("no Slurm answers here (sinfo): .ci/slurm_up starts a single-node one (needs root; .ci/run "
                    "does it before make test)")


def _outputs(res):
    return {c["id"]: c["outputs"]["pressure_drop_Pa"] for c in res["cases"]}


def test_a_study_on_slurm_equals_the_local_run(slurm, tmp_path, capsys):
    from workflows.cli import main

    f = tmp_path / "study.toml"
    f.write_text(STUDY)
    local = S.run_study(f, tmp_path / "local", quiet=True, report=False)
    assert main(["study", "run", str(f), "--out", str(tmp_path / "slurm"), "--executor", "slurm", "--no-report"]) == 0
    log = capsys.readouterr().out
    assert "as Slurm job array" in log and "cases: 3/3 finished" in log, log
    batch = json.loads((tmp_path / "slurm" / "study.json").read_text())
    assert len(batch["cases"]) == 3
    assert _outputs(batch) == pytest.approx(_outputs(local), rel=1e-9)
    assert batch["elasticity"]["elasticity"] == pytest.approx(local["elasticity"]["elasticity"], rel=1e-9)
    book = json.loads((tmp_path / "slurm" / "jobs.json").read_text())["entries"]
    assert sorted(e["item"] for e in book) == sorted(c["id"] for c in batch["cases"])
    assert len({e["job_id"].split("_")[0] for e in book}) == 1  # one job array
    assert main(["jobs", str(tmp_path / "slurm")]) == 0
    assert "3 done" in capsys.readouterr().out


@pytest.mark.slow  # (make validate, 35 s; make test keeps the Slurm study and srun tests)
def test_a_cancelled_case_is_submitted_again_and_nothing_runs_twice(slurm, tmp_path, capsys):
    """``--no-wait`` submits and returns; one running case is cancelled (``scancel``); the next
    call submits only that case again (attempt 2), waits and analyses; the finished cases'
    results are not rewritten."""
    from workflows.cli import main

    f = tmp_path / "study.toml"
    f.write_text(STUDY)
    out = tmp_path / "out"
    assert main(["study", "run", str(f), "--out", str(out), "--executor", "slurm", "--no-wait", "--quiet"]) == 0
    assert not (out / "study.json").exists()
    entries = json.loads((out / "jobs.json").read_text())["entries"]
    victim, tried = None, set()
    t0 = time.time()
    # cancel a case seen running before its result is written; a case that finishes between
    # the look and the cancel (its result appears anyway) does not count: try the next one
    while victim is None and time.time() - t0 < 240:
        r = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True).stdout
        running = [line.split("|")[0] for line in r.split() if line.endswith("|RUNNING")]
        cands = [e for e in entries if e["job_id"] in running and e["item"] not in tried
                 and not (out / "cases" / e["item"] / "results.json").exists()]
        if not cands:
            time.sleep(0.2)
            continue
        tried.add(cands[-1]["item"])
        subprocess.run(["scancel", cands[-1]["job_id"]], check=True)
        while subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split().count(
                cands[-1]["job_id"]) and time.time() - t0 < 240:
            time.sleep(0.2)
        if not (out / "cases" / cands[-1]["item"] / "results.json").exists():
            victim = cands[-1]
    assert victim is not None, f"no case could be cancelled while running (tried {sorted(tried)})"
    capsys.readouterr()
    assert main(["jobs", str(out)]) == 0
    assert f"{victim['item']}  lost" in capsys.readouterr().out
    # wait for the others, then the next call submits the cancelled case only
    while any(subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split().count(
            e["job_id"]) for e in entries) and time.time() - t0 < 300:
        time.sleep(0.5)
    others = {e["item"]: (out / "cases" / e["item"] / "results.json").stat().st_mtime_ns
              for e in entries if e["item"] != victim["item"]}
    assert main(["study", "run", str(f), "--out", str(out), "--executor", "slurm", "--no-report"]) == 0
    log = capsys.readouterr().out
    assert "submitted 1 case(s)" in log and "1 again" in log, log
    assert (out / "study.json").is_file()
    assert {i: (out / "cases" / i / "results.json").stat().st_mtime_ns for i in others} == others
    book = json.loads((out / "jobs.json").read_text())["entries"]
    assert [e["attempt"] for e in book if e["item"] == victim["item"]] == [1, 2]
    assert main(["jobs", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["state"] for r in rows} == {"done"}


def test_slurm_settings_are_checked_by_name(tmp_path):
    o = slurm_options({"partition": "short", "time_min": 30, "mem_gb": 2, "extra": {"constraint": "cpu"}},
                      {"time_min": 45, "qos": None})
    assert o == SlurmOptions(partition="short", time_min=45, mem_gb=2, extra={"constraint": "cpu"})
    p = o.executor_parameters()
    assert p["partition"] == "short" and p["time"] == 45 and p["mem"] == "2048M"
    assert p["additional_parameters"] == {"constraint": "cpu"}
    with pytest.raises(HPCError, match="unknown Slurm option"):
        slurm_options({"partiton": "x"})
    with pytest.raises(HPCError, match="time_min must be a positive integer"):
        slurm_options({"time_min": 0})
    with pytest.raises(S.StudyError, match=r"\[run.slurm\] cpus_per_task"):
        S.parse_study({"study": {"name": "x", "output": "pressure_drop_Pa"},
                       "base": {"synthetic": "straight"},
                       "design": {"type": "oat", "parameter": "boundary_offset_mm", "values": [0.0, 0.1]},
                       "run": {"slurm": {"cpus_per_task": -1}}}, tmp_path)


def test_a_dose_run_split_into_four_tasks_merges_to_the_local_run(slurm, tmp_path, capsys):
    """``digipat dose SCENARIO --executor slurm --tasks 4`` (a water box, 4 batches of 5000
    histories): four array tasks each run one batch (the random streams of the local run's
    batches), and the merge equals the local 4-batch run exactly (dose map, σ map, every
    label's dose and σ); ``--no-wait`` first, then the same command merges."""
    import numpy as np

    from pipeline.image import read_image
    from tests.workflows.test_dose_cli import _scenario
    from workflows.cli import main

    scen = _scenario(tmp_path, run={"histories": 20000, "seed": 3, "batches": 4})
    assert main(["dose", str(scen), "--out", str(tmp_path / "local"), "--quiet"]) == 0
    args = ["dose", str(scen), "--out", str(tmp_path / "slurm"), "--executor", "slurm", "--tasks", "4"]
    assert main(args + ["--no-wait"]) == 0
    assert "submitted 4 task(s)" in capsys.readouterr().out
    assert main(args + ["--quiet"]) == 0
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    batch = json.loads((tmp_path / "slurm" / "results.json").read_text())
    for lab, r in local["labels"].items():
        assert batch["labels"][lab]["dose_Gy_per_photon"] == r["dose_Gy_per_photon"]
        assert batch["labels"][lab]["dose_sigma_Gy_per_photon"] == r["dose_sigma_Gy_per_photon"]
    for name in ("dose.nii.gz", "dose_sigma.nii.gz"):
        assert np.array_equal(read_image(tmp_path / "local" / name).array, read_image(tmp_path / "slurm" / name).array)
    assert batch["histories"] == local["histories"] == 20000
    assert main(["jobs", str(tmp_path / "slurm")]) == 0
    assert "4 done" in capsys.readouterr().out


def test_flow_on_two_ranks_uses_srun_inside_an_allocation(slurm, tmp_path):
    """``digipat flow --np 2`` inside a Slurm job starts its ranks with ``srun`` (a step of the
    allocation), and with ``mpiexec`` outside one; the two give the same pressure drop."""
    import sys
    from pathlib import Path

    from phantoms.synthetic_patient import write_synthetic_patient

    info = write_synthetic_patient(tmp_path / "patient", geometry="straight", stenosis=0.0, size="small")
    exe = Path(sys.executable).with_name("digipat")
    common = [str(exe), "flow", str(info["image"]), "--np", "2", "--model", "stokes", "--flow-rate-ml-s", "0.5",
              "--cells-per-radius", "3", "--no-fields", "--quiet", "--no-error-estimate"]
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n" + " ".join(common + ["--out", str(tmp_path / "in_job")]) + "\n")
    subprocess.run(["sbatch", "--wait", "-n", "2", "-t", "10", "-o", str(tmp_path / "job.log"), str(script)],
                   check=True, capture_output=True, timeout=600)
    subprocess.run(common + ["--out", str(tmp_path / "here")], check=True, capture_output=True, timeout=600,
                   env={k: v for k, v in __import__("os").environ.items() if not k.startswith("SLURM_")})
    in_job = json.loads((tmp_path / "in_job" / "results.json").read_text())
    here = json.loads((tmp_path / "here" / "results.json").read_text())
    assert in_job["mpi_launcher"] == "srun", (tmp_path / "job.log").read_text()[-2000:]
    assert here["mpi_launcher"] == "mpiexec"
    assert in_job["pressure_drop_Pa"] == pytest.approx(here["pressure_drop_Pa"], rel=1e-6)
