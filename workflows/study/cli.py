"""``digipat study run``: geometric sensitivity studies (format: :mod:`workflows.study.runner`)."""

from __future__ import annotations

import argparse
import json

from workflows.study.runner import run_study

__all__ = ["register"]


def cmd_study_run(a: argparse.Namespace) -> int:
    cases = [c.strip() for c in a.cases.split(",") if c.strip()] if a.cases else None
    res = run_study(a.study_file, a.out, quiet=a.quiet or a.json, cases=cases, analyse=not a.no_analysis,
                    report=not a.no_report, plan_only=a.plan_only, retry_failed=a.retry_failed)
    if a.plan_only and not (a.quiet or a.json):
        for c in res["cases"]:
            moved = ", ".join(f"{k}={v:g}" for k, v in c["params"].items())
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
    sr.set_defaults(func=cmd_study_run)

