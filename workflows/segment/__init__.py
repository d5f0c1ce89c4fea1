"""``digipat segment``: the learned lumen segmenter (train, predict, evaluate, synthetic data)."""
