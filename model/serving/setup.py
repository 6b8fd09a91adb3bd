"""Setup: the server's settings in, the loaded model (an ImageService) out, once per process.

In order: the weights (downloaded if missing and allowed), the pipelines, the encoders and caches,
the tag-placement processors, the CUDA graphs (after the processors, whose kernels they record),
the idle warm-up's plan, the output writer, the optional compile. The last line of the setup log
names the weights, so that an operator sees at once whether real weights were loaded.
"""

from __future__ import annotations

import time

from model.contract.cache import LRUCache
from model.contract.images import image_bytes
from model.engine.generate import GenerationConfig
from model.engine.graphs import install_unet_graphs
from model.engine.pipeline import MissingWeightsError, compile_blocks, img2img_from, load_pipeline, pick_runtime
from model.engine.placement.binding import RegionConfig
from model.engine.placement.processors import install_processors
from model.engine.plan import PLANS
from model.engine.references import ReferenceEncoder
from model.engine.text import TextEncoder
from model.engine.weights import missing_repos, weights_label
from model.serving.download import download_missing
from model.serving.logs import say
from model.serving.output import OutputWriter, make_masks_dir
from model.serving.safety import SafetyChecker
from model.serving.service import ImageService
from model.serving.settings import Settings, settings_from_env
from model.serving.warmup import WarmupJob, warmup_jobs, warmup_steps


def generation_config(settings: Settings) -> GenerationConfig:
    """How every generation of this server runs, from its settings."""
    return GenerationConfig(
        steps=settings.effective_steps,
        guidance=settings.effective_guidance,
        ip_adapter_scale=settings.ip_adapter_scale,
        refine_strength=settings.refine_strength,
        vae_tiling=settings.vae_tiling,
        region=RegionConfig(),
    )


def fetch_missing_weights(settings: Settings) -> None:
    """Download what weights_dir lacks, when the settings allow it; say what to do otherwise."""
    if not settings.download_weights:
        return
    if not missing_repos(settings.weights_dir, settings.turbo, settings.safety_checker):
        return
    say(f"Weights missing in {settings.weights_dir}: downloading them (mount it as a volume to keep them)")
    try:
        download_missing(settings.weights_dir, say=say, turbo=settings.turbo, safety_checker=settings.safety_checker)
    except Exception as exc:  # the hub's many failure types: say what to do instead
        raise MissingWeightsError(
            f"could not download the weights into {settings.weights_dir} ({type(exc).__name__}: {exc}); "
            "run scripts/download_weights.py where the Hugging Face hub is reachable and mount the folder"
        ) from exc


def build_service(settings: Settings) -> ImageService:
    """Load the model as `settings` say and return it ready to serve."""
    runtime = pick_runtime(settings.device, settings.dtype)
    fetch_missing_weights(settings)
    started = time.perf_counter()
    pipe = load_pipeline(settings.weights_dir, runtime, turbo=settings.turbo)
    refiner = img2img_from(pipe)
    text = TextEncoder(pipe)
    encoder = ReferenceEncoder(
        pipe.image_encoder,
        pipe.feature_extractor,
        identity=f"{settings.weights_dir.resolve()}:{runtime.dtype}",
        capacity=settings.reference_cache_size,
    )
    encoder.negative()  # computed once, at setup
    config = generation_config(settings)
    install_processors(pipe.unet, config.region, fuse_self_attention=settings.fuse_qkv)
    # After the processors: a graph records the kernels of the processors installed now.
    graphs = None
    if settings.cuda_graphs and not settings.compile and runtime.device.type == "cuda":
        graphs = install_unet_graphs(pipe.unet)
    if settings.masks_dir is not None:
        make_masks_dir(settings.masks_dir)  # at setup: a bad folder fails here, not in a request
    service = ImageService(
        settings=settings,
        runtime=runtime,
        pipe=pipe,
        refiner=refiner,
        text=text,
        encoder=encoder,
        # A repeated reference file skips decoding: decoded images kept by the file's bytes.
        decoded=LRUCache(settings.decoded_cache_mb * 2**20, weigh=image_bytes) if settings.decoded_cache_mb else None,
        config=config,
        output=OutputWriter(settings.output_format),
        # GEN4_SAFETY_CHECKER: every output is checked before it is written (model/serving/safety.py).
        safety=SafetyChecker(settings.weights_dir, runtime) if settings.safety_checker else None,
        graphs=graphs,
        # Generated while the server is idle (model/serving/warmup.py): after the graphs, which it fills.
        idle_warmup=warmup_jobs(settings.warmup_entries(graphs=graphs is not None)),
        idle_warmup_steps=warmup_steps(settings.effective_steps, config.region.warmup_fraction),
    )
    if settings.compile:
        blocks = compile_blocks(pipe.unet, pipe.vae)
        compiling = time.perf_counter()
        service.warm_up([WarmupJob(plan, 1, 1) for plan in dict.fromkeys(PLANS.values())], steps=2)
        service.compile_s = time.perf_counter() - compiling
        say(f"Compiled {blocks} UNet and VAE blocks; every output size warmed up in {service.compile_s:.1f}sec")
    say(setup_line(settings, runtime.device, time.perf_counter() - started))
    return service


def setup_line(settings: Settings, device: object, seconds: float) -> str:
    """The setup log's last line: which weights (real, or stand-ins), on what, how long."""
    label = weights_label(settings.weights_dir)
    kind = "real weights" if label == "real" else f"{label.upper()} weights (stand-ins: images are noise)"
    if settings.turbo:
        kind += ", TURBO (SDXL-Lightning 4-step LoRA, no CFG)"
    return f"Loaded SDXL + IP-Adapter Plus with {kind} from {settings.weights_dir} on {device} in {seconds:.1f}sec"


def service_from_env() -> ImageService:
    """The service as the environment's GEN4_* variables configure it (the server's setup)."""
    return build_service(settings_from_env())
