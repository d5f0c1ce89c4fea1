"""``digipat measure``: local thickness, minimum distance, agreement statistics and predictive values.

The command line is :mod:`workflows.measure.cli`; the computations are library functions in
:mod:`pipeline.measure` (thickness, distance), :mod:`pipeline.agreement` (Bland–Altman, ICC,
Lin's CCC) and :mod:`pipeline.metrics` (PPV and NPV at a prevalence).
"""
