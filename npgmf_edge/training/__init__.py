"""Training loops for both branches, checkpoints and resume."""
