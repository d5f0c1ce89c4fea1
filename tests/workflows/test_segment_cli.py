"""``digipat segment``: a tiny synthetic set, a few training steps (the loss falls, the same seed
gives the same weights, an interrupted run resumes to the same weights), prediction files and
the evaluation's numbers against hand-counted masks."""

import json

import numpy as np
import pytest
import torch

from pipeline.image import Volume, read_image, write_image
from workflows.cli import main

TRAIN = ["--steps", "12", "--batch", "2", "--width", "4", "--depth", "2", "--patch", "16", "16", "16",
         "--checkpoint-every", "3", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    ds = tmp_path_factory.mktemp("seg") / "ds"
    assert main(["segment", "synth", str(ds), "--cases", "3", "--size", "24", "24", "24"]) == 0
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["labels"] == {"background": 0, "lumen": 1}
    assert sorted(p.name for p in (ds / "imagesTr").iterdir())[0] == "case_0000_0000.nii.gz"
    return ds


def _weights(folder):
    return torch.load(folder / "model.pt", weights_only=True)


def test_training_is_seeded_and_the_loss_falls(dataset, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["segment", "train", str(dataset), "--out", str(a)] + TRAIN) == 0
    assert main(["segment", "train", str(dataset), "--out", str(b)] + TRAIN) == 0
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    info = json.loads((a / "model.json").read_text())
    h = info["loss_history"]
    assert len(h) == 12 and np.mean(h[-4:]) < np.mean(h[:4])
    assert info["plan"]["patch"] == [16, 16, 16] and info["training"]["seed"] == 0
    assert (a / "model.pt").stat().st_size < 20e6


def test_an_interrupted_training_resumes_to_the_same_weights(dataset, tmp_path, monkeypatch):
    import pipeline.segment.train as T

    full = tmp_path / "full"
    assert main(["segment", "train", str(dataset), "--out", str(full)] + TRAIN) == 0
    calls = {"n": 0}
    real = T.photometric

    def interrupted(img, rng):
        calls["n"] += 1
        if calls["n"] == 2 * 7 + 1:  # during step 8: the last checkpoint is at step 6
            raise KeyboardInterrupt
        return real(img, rng)

    cut = tmp_path / "cut"
    monkeypatch.setattr(T, "photometric", interrupted)
    with pytest.raises(KeyboardInterrupt):
        T.train(dataset, cut, T.TrainConfig(steps=12, batch=2, width=4, depth=2, patch=(16, 16, 16),
                                            checkpoint_every=3), quiet=True)
    assert torch.load(cut / "checkpoint.pt", weights_only=False)["step"] == 6
    assert not (cut / "model.pt").exists()
    monkeypatch.setattr(T, "photometric", real)
    assert main(["segment", "train", str(dataset), "--out", str(cut)] + TRAIN) == 0
    wf, wc = _weights(full), _weights(cut)
    assert all(torch.equal(wf[k], wc[k]) for k in wf)


def test_predict_writes_mask_and_probability(dataset, tmp_path):
    model = tmp_path / "m"
    assert main(["segment", "train", str(dataset), "--out", str(model)] + TRAIN) == 0
    image = dataset / "imagesTr" / "case_0001_0000.nii.gz"
    out = tmp_path / "pred"
    assert main(["segment", "predict", str(image), "--model", str(model), "--out", str(out), "--quiet"]) == 0
    prob, mask = read_image(out / "probability.nii.gz"), read_image(out / "lumen.nii.gz")
    p = np.asarray(prob.array)
    assert p.shape == np.asarray(read_image(image).array).shape and 0 <= p.min() and p.max() <= 1
    assert np.array_equal(np.asarray(mask.array) > 0, p > 0.5)
    assert json.loads((out / "prediction.json").read_text())["lumen_voxels"] == int((p > 0.5).sum())


def test_evaluate_against_hand_counted_masks(tmp_path, capsys):
    """truth 8 voxels, prediction 6 of them + 2 outside (of 64): Dice 12/16, IoU 6/10, sensitivity
    6/8, specificity 54/56, precision 6/8; at a prevalence of 1 %: 0.0075 / (0.0075 + 0.99 * 2/56)."""
    t = np.zeros((4, 4, 4), np.uint8)
    t[0, 0, :] = t[0, 1, :] = 1
    p = t.copy()
    p[0, 1, 2:] = 0
    p[3, 3, :2] = 1
    write_image(Volume(p, spacing_mm=(1, 1, 1)), tmp_path / "p.nii.gz")
    write_image(Volume(t, spacing_mm=(1, 1, 1)), tmp_path / "t.nii.gz")
    assert main(["segment", "evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "t.nii.gz"),
                 "--prevalence", "0.01", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["dice"] == pytest.approx(12 / 16)
    assert rep["iou"] == pytest.approx(6 / 10)
    assert rep["sensitivity"] == pytest.approx(6 / 8) and rep["specificity"] == pytest.approx(54 / 56)
    assert rep["precision"] == pytest.approx(6 / 8)
    assert rep["precision_at_prevalence"] == pytest.approx(0.0075 / (0.0075 + 0.99 * 2 / 56))


def test_bad_inputs_exit_with_a_message(tmp_path, capsys):
    assert main(["segment", "train", str(tmp_path / "nothing"), "--out", str(tmp_path / "m")]) == 1
    assert "no dataset.json" in capsys.readouterr().err
    assert main(["segment", "predict", str(tmp_path / "x.nii.gz"), "--model", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 1
    assert "not a model folder" in capsys.readouterr().err
