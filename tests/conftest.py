"""Shared pytest fixtures for digipat."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# Numba: cache compiled kernels between test runs.
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".venv", "numba_cache"))

# h5py before dolfinx in one process (see physics/flow/__init__.py)
import h5py  # noqa: E402,F401
