"""Failed study cases: a user-level error (ValueError) is recorded and counted conservatively;
any other exception stops the study with its traceback and records nothing."""

import json
import math
from pathlib import Path

import pytest

from physics.flow.problem import ConvergenceError
from workflows.common import write_json_atomic
from workflows.study import runner as S

PA = 13332.0
STUDY = """
[study]
name = "failures"
outputs = ["ffr_like"]
[base]
synthetic = "straight"
size = "small"
stenosis = 0.0
[parameters.boundary_offset_mm]
low = -0.2
high = 0.2
[design]
type = "montecarlo"
n = 40
seed = 5
oat = false
[decision]
ffr_threshold = 0.80
"""


def _wilson(k, n, z=1.959963984540054):
    """Wilson (1927) score interval, written out."""
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, c - h), min(1.0, c + h)


def _stand_in(fail_below_mm):
    """FFR-like falls with the radius; narrowed geometries below ``fail_below_mm`` 'do not converge'."""
    def case(study, ctx, c, case_dir, threads):
        d = c["params"]["boundary_offset_mm"]
        if d < fail_below_mm:
            raise ConvergenceError("Newton did not converge (stand-in)")
        ffr = 0.81 + 0.2 * d  # flips below 0.80 for d < -0.05
        res = {"ffr_like": ffr, "pressure_drop_Pa": (1 - ffr) * PA, "n_dofs": 1}
        Path(case_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(case_dir) / "results.json", res)
        return res
    return case


def test_failed_cases_enter_the_flip_bound_as_flips(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "_run_case", _stand_in(-0.15))
    (tmp_path / "s.toml").write_text(STUDY)
    res = S.run_study(tmp_path / "s.toml", tmp_path / "o", quiet=True, report=False)
    # count from the case files with the plain rule: failed = results.json holds "error"
    outs = []
    for c in sorted((tmp_path / "o" / "cases").iterdir()):
        if c.name == "case_000":
            continue  # the nominal case is not a sample
        r = json.loads((c / "results.json").read_text())
        outs.append(None if "error" in r else r["ffr_like"])
    failed = sum(v is None for v in outs)
    flipped = sum(v is not None and v < 0.80 for v in outs)
    n = len(outs)
    assert failed > 0 and flipped > 0 and n == 40
    f = res["analysis"]["ffr_like"]["flip"]
    assert (f["n_failed"], f["n_flipped"], f["n"], f["n_total"]) == (failed, flipped, n - failed, n)
    assert f["probability"] == pytest.approx(flipped / (n - failed))
    assert f["probability_bounds"] == pytest.approx([flipped / n, (flipped + failed) / n])
    assert f["ci_high"] == pytest.approx(_wilson(flipped + failed, n)[1])
    assert f["ci_low"] == pytest.approx(_wilson(flipped, n)[0])
    d = res["analysis"]["ffr_like"]["distribution"]
    assert d["n_failed"] == failed and d["n"] == n - failed
    assert len(res["failed_cases"]) == failed


def test_a_bug_stops_the_study_and_is_not_recorded(tmp_path, monkeypatch):
    def buggy(study, ctx, c, case_dir, threads):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(S, "_run_case", buggy)
    (tmp_path / "s.toml").write_text(STUDY)
    with pytest.raises(TypeError, match="unsupported operand"):
        S.run_study(tmp_path / "s.toml", tmp_path / "o", quiet=True, report=False)
    assert not list((tmp_path / "o" / "cases").glob("*/results.json"))  # rerun once fixed
