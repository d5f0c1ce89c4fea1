"""``digipat study run``: geometric sensitivity studies (format: :mod:`workflows.study.runner`)."""

from __future__ import annotations

import argparse
import json

from workflows.study.runner import run_study

__all__ = ["register"]


def slurm_overrides(a: argparse.Namespace) -> dict:
    """The ``--slurm-*`` options given on the command line (``[run.slurm]`` keys)."""
    extra = {}
    for item in a.slurm_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--slurm-option takes KEY=VALUE (an sbatch option without its dashes, e.g. "
                             f"constraint=cpu), got {item!r}")
        extra[key.strip().lstrip("-")] = value
    return {"partition": a.slurm_partition, "time_min": a.slurm_time_min, "cpus_per_task": a.slurm_cpus,
            "mem_gb": a.slurm_mem_gb, "account": a.slurm_account, "qos": a.slurm_qos,
            "array_parallelism": a.slurm_array_parallelism, "extra": extra}


def add_slurm_options(p: argparse.ArgumentParser) -> None:
    """``--executor``, ``--no-wait`` and the ``--slurm-*`` options (each a [run.slurm] key)."""
    g = p.add_argument_group("batch system (Slurm; README 'On a cluster')")
    g.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: run here; slurm: submit as one Slurm job array through submitit (default local)")
    g.add_argument("--no-wait", action="store_true",
                   help="with --executor slurm: return after submitting; a later call analyses what finished")
    g.add_argument("--slurm-partition", metavar="NAME", help="sbatch --partition ([run.slurm] partition)")
    g.add_argument("--slurm-time-min", type=int, metavar="MIN", help="sbatch --time in minutes (time_min; default 60)")
    g.add_argument("--slurm-cpus", type=int, metavar="N", help="sbatch --cpus-per-task (cpus_per_task; default 1)")
    g.add_argument("--slurm-mem-gb", type=float, metavar="GB", help="sbatch --mem (mem_gb)")
    g.add_argument("--slurm-account", metavar="NAME", help="sbatch --account (account)")
    g.add_argument("--slurm-qos", metavar="NAME", help="sbatch --qos (qos)")
    g.add_argument("--slurm-array-parallelism", type=int, metavar="P",
                   help="at most P array tasks at once (array_parallelism; default 32)")
    g.add_argument("--slurm-option", action="append", metavar="KEY=VALUE",
                   help="any other sbatch option, repeatable (extra), e.g. --slurm-option constraint=cpu")


def cmd_study_run(a: argparse.Namespace) -> int:
    cases = [c.strip() for c in a.cases.split(",") if c.strip()] if a.cases else None
    if a.no_wait and a.executor != "slurm":
        raise ValueError("--no-wait applies to --executor slurm (a local run always finishes its cases)")
    res = run_study(a.study_file, a.out, quiet=a.quiet or a.json, cases=cases, analyse=not a.no_analysis,
                    report=not a.no_report, plan_only=a.plan_only, retry_failed=a.retry_failed,
                    executor=a.executor, slurm=slurm_overrides(a), wait=not a.no_wait)
    if a.plan_only and not (a.quiet or a.json):
        for c in res["cases"]:
            moved = ", ".join(f"{k}={v}" if isinstance(v, str) else f"{k}={v:g}" for k, v in c["params"].items())
            print(f"{c['id']}  {c['group']:<8} {moved}")
    if a.json:
        print(json.dumps(res, indent=2))
    return 0


def register(sub) -> None:
    """Add ``study`` (action ``run``) to the ``digipat`` subparsers."""
    st = sub.add_parser("study", help="geometric sensitivity studies (run STUDY_FILE)")
    st_sub = st.add_subparsers(dest="study_command", metavar="ACTION")
    st_sub.required = True
    sr = st_sub.add_parser("run", help="run or resume a study (TOML); finished cases are skipped",
                           description="Run the cases of STUDY_FILE (workflows/study/runner.py documents the format: "
                                       "flow or dose path, parameters with ranges or distributions, OAT / Morris / "
                                       "Sobol / Monte Carlo design) into OUT/cases/, then write OUT/study.json "
                                       "(elasticities, tornado data, Sobol or Morris indices, output distributions, "
                                       "decision-flip probabilities, numerical uncertainty) and OUT/report.html and "
                                       "OUT/report.pdf. A rerun skips finished cases.")
    sr.add_argument("study_file", help="study file (.toml)")
    sr.add_argument("--out", required=True, help="output folder")
    sr.add_argument("--cases", metavar="IDS",
                    help="run only these comma-separated case ids (e.g. one batch-array task: case_007); "
                         "OUT/plan.json lists them")
    sr.add_argument("--no-analysis", action="store_true", help="run the cases only (no study.json, no report)")
    sr.add_argument("--no-report", action="store_true", help="write study.json but no HTML/PDF report")
    sr.add_argument("--plan-only", action="store_true",
                    help="write OUT/plan.json, prepare the shared inputs and list the cases (ids, inputs) "
                         "without running any (run this once before batch-array tasks)")
    sr.add_argument("--retry-failed", action="store_true",
                    help="run again the cases recorded as failed (their results.json holds an error)")
    sr.add_argument("--quiet", action="store_true")
    sr.add_argument("--json", action="store_true", help="print study.json")
    add_slurm_options(sr)
    sr.set_defaults(func=cmd_study_run)

    jb = sub.add_parser("jobs", help="state of each case of a study (or task of a split dose run): done, failed, "
                                     "pending, running, requeued, lost, with its Slurm job id")
    jb.add_argument("out", help="the --out folder of 'digipat study run' or 'digipat dose --executor slurm'")
    jb.add_argument("--json", action="store_true", help="print the rows as JSON")
    jb.set_defaults(func=cmd_jobs)


def cmd_jobs(a: argparse.Namespace) -> int:
    from pathlib import Path

    from workflows.hpc import JobBook, item_state

    out = Path(a.out)
    plan = out / "plan.json"
    book = JobBook(out / "jobs.json")
    active = book.active() if book.entries else {}
    if plan.is_file():  # a study: its cases
        ids = [c["id"] for c in json.loads(plan.read_text())["cases"]]
        rows = [item_state(book, i, out / "cases" / i / "results.json", active) for i in ids]
    elif book.entries:  # a dose run split into tasks
        ids = list(dict.fromkeys(e["item"] for e in book.entries))
        rows = [item_state(book, i, out / "batches" / f"{i}.json", active) for i in ids]
    else:
        raise ValueError(f"{out} holds no study run (no plan.json) and no batch jobs (no jobs.json): give the "
                         "--out folder of 'digipat study run' or of 'digipat dose --executor slurm'")
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        err = f"  {r['error'][:100]}" if r.get("error") else ""
        job = f"job {r['job_id']}" + (f" (attempt {r['attempt']})" if r["attempt"] > 1 else "") if r["job_id"] else ""
        print(f"{r['item']}  {r['state']:<13} {job}{err}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0

