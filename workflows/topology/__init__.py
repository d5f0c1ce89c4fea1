"""digipat topology commands: Betti numbers, skeleton graph, clDice and tree repair of a mask
(:mod:`workflows.topology.cli`; the computations are in :mod:`pipeline.topology`)."""
