"""Gen-4 Image with references, on SDXL + IP-Adapter. Three layers, imports pointing down:

- `model.serving`: the server around the model: settings, weights download and prefetch, the
  loaded model's per-request path (service), the FIFO queue predict.py calls, the idle warm-up,
  output files and logs.
- `model.engine`: SDXL + IP-Adapter: loading, the size plan, text and reference encoding, tag
  placement, CUDA graphs and the denoising itself. Knows nothing of HTTP or Cog.
- `model.contract`: the request as Replicate defines it: the tables, validation, @tag parsing and
  reference decoding, with errors that name the field. Pure: no torch.
"""

from model.serving.logs import drop_vacuous_warnings

drop_vacuous_warnings()
