"""Gen-4 Image with references, on SDXL + IP-Adapter.

Stages, each a module, imports pointing downward:
request (validation) -> prompt (@tag parsing) -> images (decoding) -> references (encoding, cached)
-> generate (SDXL) -> output (file). `service` ties them together for predict.py.
"""

from model.logfilters import drop_vacuous_warnings

drop_vacuous_warnings()
