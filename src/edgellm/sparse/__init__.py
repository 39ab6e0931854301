"""Training-free activation sparsity: calibrating per-layer thresholds (a tool that runs the model)."""
