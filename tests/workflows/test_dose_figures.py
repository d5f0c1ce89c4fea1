"""Dose figures render (not blank) and reject inconsistent input."""

import numpy as np
import pytest

from workflows.dose.figures import plot_dose_overlay, plot_organ_doses


def _png_pixels(path):
    import matplotlib.image as mpimg

    return mpimg.imread(path)


def test_overlay_and_bars(tmp_path):
    z, y, x = np.indices((20, 30, 40))
    labels = ((x - 20) ** 2 / 15 ** 2 + (y - 15) ** 2 / 10 ** 2 < 1).astype(np.int16)
    labels[(x - 25) ** 2 + (y - 15) ** 2 + (z - 10) ** 2 < 16] = 2
    dose = np.exp(-((x - 10) ** 2) / 50.0) * labels
    p = plot_dose_overlay(labels, dose, (2.0, 1.0, 1.0), tmp_path / "overlay.png", title="test")
    img = _png_pixels(p)
    assert img.shape[0] > 100 and img[..., :3].std() > 0.05  # not blank
    rows = [{"organ": "liver", "dose_mGy": 3.0, "dose_sigma_mGy": 0.1},
            {"organ": "lung", "dose_mGy": 5.0, "dose_sigma_mGy": None},
            {"organ": "none", "dose_mGy": float("nan")}]
    b = plot_organ_doses(rows, tmp_path / "bars.png")
    assert _png_pixels(b)[..., :3].std() > 0.05
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="one shape"):
        plot_dose_overlay(np.zeros((2, 2, 2), int), np.zeros((2, 2)), (1, 1, 1), tmp_path / "x.png")
    with pytest.raises(ValueError, match="no organ"):
        plot_organ_doses([{"organ": "a", "dose_mGy": float("nan")}], tmp_path / "y.png")
