"""SDXL + IP-Adapter with tag-localized references: loading, the size plan, text and reference
encoding, placement, CUDA graphs, denoising. Imports `model.contract`, never `model.serving`."""
