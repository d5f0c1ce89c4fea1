"""Every failure of the command line: `digipat: error: ...`, a non-zero exit, a traceback only with --debug."""

import json

import numpy as np
import pytest

from pipeline.image import Volume, write_image
from workflows import cli


def test_out_is_an_existing_file(tmp_path, capsys):
    from phantoms.synthetic_patient import write_synthetic_patient

    info = write_synthetic_patient(tmp_path / "p", size="small", stenosis=0.0)
    f = tmp_path / "not_a_folder"
    f.write_text("x")
    assert cli.main(["flow", info["image"], "--out", str(f)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("digipat: error:") and "is a file" in err
    assert "Traceback" not in err and f.read_text() == "x"


@pytest.mark.parametrize("exc, status, words", [
    (PermissionError(13, "Permission denied", "locked/x"), 1, ["permission denied", "locked/x"]),
    (FileNotFoundError(2, "No such file or directory", "mpiexec"), 1, ["not found", "mpiexec"]),
    (FileExistsError(17, "File exists", "out"), 1, ["out", "folder"]),
    (TypeError("unsupported operand"), 3, ["internal error TypeError", "--debug"]),
])
def test_non_value_errors_print_one_line_and_exit_non_zero(monkeypatch, capsys, exc, status, words):
    import workflows.dose.cli as dose_cli

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(dose_cli, "run_dose", boom)
    assert cli.main(["dose", "s.toml", "--out", "o"]) == status
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip().splitlines()[-1]]  # one line
    assert err.startswith("digipat: error: ")
    for w in words:
        assert w in err, err
    monkeypatch.setattr(dose_cli, "run_dose", boom)
    assert cli.main(["dose", "s.toml", "--out", "o", "--debug"]) == status  # --debug after the command
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("digipat: error:")


def test_a_laterally_infinite_slab_label_map_is_accepted(tmp_path, capsys):
    """A 1 x 1 x 20 label map (the textbook slab) is dose geometry, not a '2-D image'. The
    dose in the first layer is checked against the primary-only estimate: at least the
    energy the uncollided beam deposits by absorption there (mu_en/rho of water from xraydb)."""
    import xraydb

    lab = np.ones((20, 1, 1), np.uint8)
    write_image(Volume(lab, (10.0, 1000.0, 1000.0), (0.0, 0.0, 5.0)), tmp_path / "slab.nii.gz")
    (tmp_path / "mat.csv").write_text("label_id,tissue_name,density_g_cm3,H,O\n1,water,1.0,0.111894,0.888106\n")
    (tmp_path / "s.toml").write_text("""
[phantom]
labels = "slab.nii.gz"
materials = "mat.csv"
[source]
type = "pencil"
energy_keV = 60.0
position_mm = [0.0, 0.0, -50.0]
direction = [0.0, 0.0, 1.0]
[physics]
compton = "klein-nishina"
[run]
histories = 20000
seed = 1
batches = 4
""")
    assert cli.main(["dose", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o"), "--quiet", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    deposited = r["deposited_eV_per_photon"]
    # 20 cm of water: photoabsorption of primaries alone deposits E * (mu_pe / mu) * (1 - exp(-mu * 20 cm));
    # scatter adds to it, and no more than E can be deposited.
    mu = xraydb.material_mu("H2O", 60e3, density=1.0, kind="total")
    mu_pe = xraydb.material_mu("H2O", 60e3, density=1.0, kind="photo")
    assert 60e3 * (mu_pe / mu) * (1 - np.exp(-mu * 20.0)) < deposited < 60e3
    assert r["energy_balance_relative_error"] < 1e-9


def test_a_failing_protocol_removes_the_old_patient_dose_result(tmp_path, capsys):
    """A rerun whose new protocol is invalid must not leave the previous run's results.json."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"stage": "patient_dose", "inputs_sha256": "old"}))
    (tmp_path / "proto.toml").write_text("[tube]\nkvp = -120\n")
    (tmp_path / "s.toml").write_text("""
[phantom]
builtin = "newborn"
[source]
type = "protocol"
protocol = "proto.toml"
[run]
histories = 1000
""")
    assert cli.main(["dose", str(tmp_path / "s.toml"), "--out", str(out)]) == 1
    assert "digipat: error:" in capsys.readouterr().err
    assert not (out / "results.json").exists()


def test_modality_option(capsys):
    from workflows.flow import VesselFlowConfig, WorkflowError

    assert VesselFlowConfig().modality == "auto"
    with pytest.raises(WorkflowError, match="modality must be one of"):
        VesselFlowConfig(modality="pet")
    with pytest.raises(SystemExit):
        cli.main(["flow", "x.nii.gz", "--out", "o", "--modality", "pet"])
    assert "invalid choice" in capsys.readouterr().err


def test_jet_spread_option(tmp_path, capsys):
    from workflows.flow import VesselFlowConfig, WorkflowError
    from workflows.flow.vessel_flow import _jet_spread

    assert _jet_spread(VesselFlowConfig()) == VesselFlowConfig().mesh_jet_spread > 0  # Navier-Stokes default
    assert _jet_spread(VesselFlowConfig(model="stokes")) is None  # no jet in Stokes flow
    assert _jet_spread(VesselFlowConfig(mesh_jet_spread=0)) is None
    with pytest.raises(WorkflowError, match="mesh_jet_spread"):
        VesselFlowConfig(mesh_jet_spread=-0.1)
    from phantoms.synthetic_patient import write_synthetic_patient

    info = write_synthetic_patient(tmp_path / "p", size="small")
    assert cli.main(["flow", info["image"], "--out", str(tmp_path / "o"), "--jet-spread", "-1"]) == 1
    assert "mesh_jet_spread" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()
