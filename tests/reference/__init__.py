"""Independent float64 oracles, written from the papers' formulas (not from the kernels)."""
