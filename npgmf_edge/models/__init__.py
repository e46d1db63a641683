"""Torch models: the shared backbone wrapper, the CLIP text prior, and the two branches."""
