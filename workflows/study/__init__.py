"""Geometric sensitivity studies: perturb the segmentation on purpose, see how results move.

``runner``      the study file, the case plan, the resumable case runner, ``study.json``
``analysis``    designs (OAT, Morris, Sobol, Monte Carlo) and their analysis (elasticity, indices, flips)
``dose_cases``  the dose path's cases (organ and body contour offsets, voxel size)
``report``      the HTML + PDF report; ``figures`` its plots
``cli``         ``digipat study run``
"""
