"""Every hub and disk read of weights: presets, hub resolution, SD1.5 formats, T5, connector checkpoints."""
