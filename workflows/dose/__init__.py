"""The dose path as a workflow: phantom + source or CT protocol → Monte Carlo → doses.

``scenario``        the ``digipat dose`` TOML file, read once and checked (both kinds)
``run``             a scenario → an engine run → ``dose.nii.gz``, ``organs.csv``, ``results.json``
``patient``         a CT protocol on a digital patient → organ doses (mGy, per CTDIvol), E
``protocol``        the CT protocol file (tube, bowtie, collimation, pitch, TCM)
``ctdi``            CTDI100 / CTDIw / CTDIvol in the PMMA phantoms
``effective_dose``  ICRP 103 effective dose
``figures``         dose maps and organ-dose bars
``cli``             ``digipat dose``, ``digipat phantom``, ``digipat ctdi``
"""
