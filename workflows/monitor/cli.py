"""``digipat monitor baseline | check``: drift monitoring of incoming CT scans.

* ``baseline DICOM_DIR --out PROFILE.json``: profile every CT series below ``DICOM_DIR``
  (header fields, body-HU summaries and histogram; :func:`pipeline.drift.profile_folder`).
* ``check PROFILE.json DICOM_DIR [--report report.html] [--json] [--out check.json]``: test the
  CT series below ``DICOM_DIR`` against the profile (:func:`pipeline.drift.check_folder`).

Exit status of ``check``: 0 no drift, **3 drift** (at least one alert), 1 bad input (missing
folder, no DICOM, a file that is not a profile, a bad threshold). ``digipat`` also exits 3
for an internal error; that one prints ``digipat: error: internal error ...`` on standard
error, a drift alert prints ``DRIFT`` on standard output (or ``"drift": true`` with ``--json``).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["register", "cmd_baseline", "cmd_check", "EXIT_NO_DRIFT", "EXIT_DRIFT", "MonitorCliError"]

#: ``digipat monitor check`` exit status without an alert.
EXIT_NO_DRIFT = 0
#: ``digipat monitor check`` exit status when at least one test alerts.
EXIT_DRIFT = 3


class MonitorCliError(ValueError):
    """Bad input to a ``digipat monitor`` command."""


def register(sub) -> None:
    """Add ``monitor`` (with ``baseline`` and ``check``) to the ``digipat`` subparsers."""
    mon = sub.add_parser("monitor", help="drift of incoming scans: baseline (profile), check (tests, report)",
                         description="Drift monitoring of CT scans: a baseline profile of a DICOM collection, and "
                                     "tests of new scans against it (exit status 3 on an alert).")
    s = mon.add_subparsers(dest="monitor_command", metavar="MONITOR_COMMAND")
    s.required = True

    p = s.add_parser("baseline", help="profile the CT series of a DICOM folder",
                     description="Profile every CT series below DICOM_DIR (files grouped by SeriesInstanceUID, "
                                 "nested folders searched): Manufacturer, ManufacturerModelName, KVP, "
                                 "ConvolutionKernel, SliceThickness, PixelSpacing, and HU inside the body mask "
                                 "(HU above the threshold, largest connected component) on fixed bins.")
    p.add_argument("dicom_dir", help="folder holding the baseline scans (searched recursively)")
    p.add_argument("--out", required=True, help="profile JSON to write")
    p.add_argument("--body-threshold-hu", type=float, default=-500.0,
                   help="body mask threshold and first histogram edge, HU (default -500)")
    p.add_argument("--max-hu", type=float, default=1500.0,
                   help="last histogram edge, HU; higher values count in the last bin (default 1500)")
    p.add_argument("--bin-width-hu", type=float, default=10.0, help="histogram bin width, HU (default 10)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_baseline)

    p = s.add_parser("check", help="test new scans against a profile (exit 3 on drift)",
                     description="Test the CT series below DICOM_DIR against PROFILE: chi-square and PSI per "
                                 "header category, KS on pixel spacing and on per-scan body-HU median and IQR, "
                                 "Wasserstein distance of the pooled histograms. An alert needs a significant "
                                 "test (alpha / number of tests) and an effect above its threshold. Exit status: "
                                 "0 no drift, 3 drift, 1 bad input.")
    p.add_argument("profile", help="profile JSON from `digipat monitor baseline`")
    p.add_argument("dicom_dir", help="folder holding the new scans (searched recursively)")
    p.add_argument("--report", help="write an HTML report here")
    p.add_argument("--out", help="write the check result (JSON) here")
    p.add_argument("--json", action="store_true", help="print the check result as JSON")
    p.add_argument("--alpha", type=float, default=0.01,
                   help="family-wise significance level, shared by the tests (Bonferroni) (default 0.01)")
    p.add_argument("--psi", type=float, default=0.1,
                   help="smallest population stability index of a header field that alerts (default 0.1)")
    p.add_argument("--wasserstein-hu", type=float, default=10.0,
                   help="smallest Wasserstein distance of the body-HU histograms that alerts, HU (default 10)")
    p.add_argument("--mc-samples", type=int, default=9999,
                   help="Monte Carlo tables for chi-square p-values with small counts (default 9999)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo tables (default 0)")
    p.add_argument("--quiet", action="store_true", help="print only the verdict")
    p.set_defaults(func=cmd_check)


def _writable_file(path: str, option: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise MonitorCliError(f"{option} {p} is a folder: give a file name (e.g. {p / 'profile.json'})")
    return p


def cmd_baseline(a) -> int:
    """``digipat monitor baseline``: write the profile. Returns 0."""
    from pipeline.drift import hu_bin_edges, profile_folder
    from workflows.common import provenance, write_json_atomic

    out = _writable_file(a.out, "--out")
    edges = hu_bin_edges(a.body_threshold_hu, a.max_hu, a.bin_width_hu)
    profile = profile_folder(a.dicom_dir, threshold_hu=a.body_threshold_hu, bin_edges_hu=edges)
    profile["provenance"] = provenance()
    write_json_atomic(out, profile)
    if not a.quiet:
        print(f"profiled {profile['n_series']} CT series under {a.dicom_dir}"
              + (f" ({len(profile['skipped'])} files or series left out)" if profile["skipped"] else ""))
        for f in ("Manufacturer", "KVP", "ConvolutionKernel"):
            cats = profile["categories"][f]
            print(f"  {f}: " + ", ".join(f"{k} {v}" for k, v in list(cats.items())[:6])
                  + (" ..." if len(cats) > 6 else ""))
        med = profile["intensity"]["summaries"]["median_hu"]
        print(f"  body HU, per-scan median: {med['p50']:.1f} HU (5-95 %: {med['p05']:.1f} to {med['p95']:.1f})")
        print(f"wrote {out}")
    return 0


def cmd_check(a) -> int:
    """``digipat monitor check``: test, print, write the report. Returns 0 (no drift) or 3 (drift)."""
    from physics.atomic import json_text
    from pipeline.drift import DriftThresholds, check_folder, read_profile
    from workflows.common import write_json_atomic

    report = _writable_file(a.report, "--report") if a.report else None
    out = _writable_file(a.out, "--out") if a.out else None
    th = DriftThresholds(alpha=a.alpha, psi=a.psi, wasserstein_hu=a.wasserstein_hu, mc_samples=a.mc_samples,
                         seed=a.seed)
    profile = read_profile(a.profile)
    check = check_folder(profile, a.dicom_dir, thresholds=th)
    check["profile_file"] = str(a.profile)
    if report is not None:
        from workflows.monitor.report import write_report

        write_report(check, report)
        check["report"] = str(report)
    if out is not None:
        write_json_atomic(out, check)
    if a.json:
        sys.stdout.write(json_text(check))
    else:
        _print_check(check, quiet=a.quiet)
    return EXIT_DRIFT if check["drift"] else EXIT_NO_DRIFT


def _print_check(check, *, quiet: bool) -> None:
    th = check["thresholds"]
    n_alerts = len(check["alerts"])
    if not quiet:
        print(f"{check['n_new']} new series against a baseline of {check['n_baseline']}; alpha {th['alpha']:g} over "
              f"{th['tests_with_p_value']} tests ({th['alpha_per_test']:.2g} each)")
        for t in check["tests"]:
            print(f"  {'ALERT' if t['alert'] else 'ok   '} {t['field']:22s} {t['reason']}")
        for n in check["notes"]:
            print(f"  note: {n}")
        if check.get("skipped"):
            print(f"  {len(check['skipped'])} files or series left out (see the JSON or the report)")
        if check.get("report"):
            print(f"report: {check['report']}")
    if n_alerts:
        print(f"DRIFT: {n_alerts} alert{'s' if n_alerts != 1 else ''} ("
              + ", ".join(a["field"] for a in check["alerts"]) + ")")
    else:
        print("no drift")
