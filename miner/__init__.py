"""Miner: SparseLoCo inner training, error feedback, signed uploads, outer-step sync."""
