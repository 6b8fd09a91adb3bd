"""Loading and running the diffusers pipelines (model/engine/pipeline.py) on tiny weights: dtypes, the
IP-Adapter's load, turbo's LoRA, and the attention plumbing that runs once per pass."""

from __future__ import annotations

import inspect
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline
from diffusers.models import attention_processor
from diffusers.models.attention import AttentionMixin
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.embeddings import MultiIPAdapterImageProjection
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig

from model.contract.request import Request
from model.contract.tables import OUTPUT_SIZES
from model.engine.pipeline import (
    MissingWeightsError,
    ProjectionOncePerPass,
    Runtime,
    UNet,
    attention_forward,
    attention_modules,
    check_weights,
    load_pipeline,
    processor_parameters,
)
from model.engine.weights import (
    ALL_REPOS,
    IMAGE_ENCODER_SUBFOLDER,
    IP_ADAPTER,
    IP_ADAPTER_SUBFOLDER,
    IP_ADAPTER_WEIGHT,
    LIGHTNING_LORA_WEIGHT,
    SDXL_BASE,
    SDXL_LIGHTNING,
)
from model.serving.service import ImageService
from model.serving.settings import Settings
from model.serving.setup import build_service
from scripts.lab.host_overhead import device_looked_up
from tests.engine.conftest import digest, tagged


def half_precision_leaks(service: ImageService, dtype: torch.dtype) -> list[str]:
    """Parameters of the set-up model (both pipelines, the installed processors, the fused
    projections) that are not in `dtype`."""
    modules = {f"pipe.{n}": c for n, c in service.pipe.components.items() if isinstance(c, torch.nn.Module)}
    modules |= {f"refiner.{n}": c for n, c in service.refiner.components.items() if isinstance(c, torch.nn.Module)}
    assert {"pipe.unet", "pipe.vae", "pipe.text_encoder", "pipe.text_encoder_2", "pipe.image_encoder"} <= set(modules)
    return [f"{name}.{p}" for name, m in modules.items() for p, t in m.named_parameters() if t.dtype != dtype]


def kohya_keys(peft: dict[str, torch.Tensor], sgm_layers_per_block: int | None = None) -> dict[str, torch.Tensor]:
    """The stand-in LoRA (diffusers' PEFT keys) in kohya's layout: `lora_unet_<module path with
    underscores>.lora_down/.lora_up/.alpha`, as diffusers' own converter writes it; with
    `sgm_layers_per_block`, the module paths in the original SGM UNet's names (input_blocks,
    middle_block, output_blocks), as kohya's SDXL trainer writes them."""
    kohya = convert_state_dict_to_kohya(peft)
    if sgm_layers_per_block is None:
        return kohya
    step = sgm_layers_per_block + 1
    renamed = {}
    for key, value in kohya.items():
        parts = key.split("_")  # lora, unet, down, blocks, B, attentions, J, ...
        if key.startswith("lora_unet_down_blocks_"):
            block, layer = int(parts[4]), int(parts[6])
            parts[2:7] = ["input", "blocks", str(block * step + layer + 1), "1"]
        elif key.startswith("lora_unet_up_blocks_"):
            block, layer = int(parts[4]), int(parts[6])
            parts[2:7] = ["output", "blocks", str(block * step + layer), "1"]
        elif key.startswith("lora_unet_mid_block_attentions_0_"):
            parts[2:6] = ["middle", "block", "1"]
        renamed["_".join(parts)] = value
    return renamed


CPU_FP32 = Runtime(device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def turbo_unet_from_the_stand_in(tiny_weights: Path) -> dict[str, torch.Tensor]:
    """The turbo UNet's weights with the stand-in LoRA (PEFT keys) fused, loaded once."""
    return load_pipeline(tiny_weights, CPU_FP32, turbo=True).unet.state_dict()


def weights_with_lora(tiny_weights: Path, tmp_path: Path, lora: dict[str, torch.Tensor]) -> Path:
    """A weights folder: the tiny repositories linked, and `lora` as the turbo LoRA file."""
    weights = tmp_path / "weights"
    for repo in ALL_REPOS:
        (weights / repo.folder).parent.mkdir(parents=True, exist_ok=True)
        (weights / repo.folder).symlink_to(tiny_weights / repo.folder)
    (weights / SDXL_LIGHTNING.folder).mkdir()
    save_file(lora, weights / SDXL_LIGHTNING.folder / LIGHTNING_LORA_WEIGHT)
    return weights


def test_missing_weights_name_the_download_script(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match=r"scripts/download_weights\.py"):
        check_weights(tmp_path)


def test_fp16_setup_is_fp16_throughout_and_the_vae_never_upcasts(tiny_weights: Path) -> None:
    """The CUDA runtime's dtype, set up (not run) on the CPU: every module of both pipelines in
    fp16 after the whole setup (diffusers' from_pipe casts to float32 unless told otherwise), and
    the fp16-fix VAE's config tells diffusers not to upcast it (our own decode never does)."""
    service = build_service(Settings(weights_dir=tiny_weights, device="cpu", dtype="float16"))
    leaks = half_precision_leaks(service, torch.float16)
    assert not leaks, leaks[:5]
    assert service.pipe.vae.config.force_upcast is False


def test_ip_adapter_loads_with_one_walk_over_the_unet_into_diffusers_processors(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our UNet's IP-Adapter loading reads the processors once, where diffusers' reads them once per
    processor, and ends with the same processors, weight for weight."""
    walks: list[int] = []
    walk = AttentionMixin.attn_processors.fget
    monkeypatch.setattr(AttentionMixin, "attn_processors", property(lambda self: walks.append(1) or walk(self)))
    base = tiny_weights / SDXL_BASE.folder
    adapter = {
        "subfolder": IP_ADAPTER_SUBFOLDER,
        "weight_name": IP_ADAPTER_WEIGHT,
        "image_encoder_folder": IMAGE_ENCODER_SUBFOLDER,
    }
    files = {"variant": "fp16", "use_safetensors": True}
    loaded = {}
    for kind in ("ours", "diffusers"):
        unet = {"unet": UNet.from_pretrained(base, subfolder="unet", **files)} if kind == "ours" else {}
        pipe = StableDiffusionXLPipeline.from_pretrained(base, **files, **unet)
        walks.clear()
        pipe.load_ip_adapter(str(tiny_weights / IP_ADAPTER.folder), **adapter)
        loaded[kind] = (len(walks), pipe.unet.attn_processors)
    (our_walks, ours), (their_walks, theirs) = loaded["ours"], loaded["diffusers"]
    cross = [name for name in theirs if name.endswith("attn2.processor")]
    assert their_walks > len(cross) and our_walks <= 3, (our_walks, their_walks)
    assert {n: type(p) for n, p in ours.items()} == {n: type(p) for n, p in theirs.items()}
    for name in cross:
        for key, tensor in theirs[name].state_dict().items():
            torch.testing.assert_close(ours[name].state_dict()[key], tensor, rtol=0, atol=0)


def test_a_half_precision_runtime_generates_end_to_end(tiny_weights: Path, tmp_path: Path) -> None:
    """bfloat16 (which a CPU can run): every stage, references, tag masks and refine included,
    stays in the runtime's dtype and the output has the exact size."""
    service = build_service(Settings(weights_dir=tiny_weights, steps=2, device="cpu", dtype="bfloat16"))
    out = service.predict(tagged(tmp_path, "@woman in @park", ["woman", "park"], "1080p", "4:3", seed=3))
    assert Image.open(out).size == OUTPUT_SIZES["1080p"]["4:3"]
    leaks = half_precision_leaks(service, torch.bfloat16)
    assert not leaks, leaks[:5]


def test_turbo_fuses_sdxl_lightning_runs_4_steps_without_cfg(
    service: ImageService, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    turbo = build_service(Settings(weights_dir=tiny_weights, device="cpu", turbo=True, steps=30, guidance=7.0))
    assert turbo.settings.effective_steps == 4 and turbo.settings.effective_guidance == 0.0
    assert turbo.pipe.scheduler.config.timestep_spacing == "trailing"
    # Without turbo, SDXL's own sampler as its repository configures it ("leading").
    saved = json.loads((tiny_weights / SDXL_BASE.folder / "scheduler" / "scheduler_config.json").read_text())
    assert service.pipe.scheduler.config.timestep_spacing == saved["timestep_spacing"] == "leading"
    assert turbo.refiner.scheduler is turbo.pipe.scheduler
    # The LoRA is fused into the UNet's weights (not left as extra layers).
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    fused_q = turbo.pipe.unet.get_submodule(name)
    assert type(fused_q) is torch.nn.Linear
    assert not torch.equal(fused_q.weight, service.pipe.unet.get_submodule(name).weight)
    batches: list[int] = []
    forward = turbo.pipe.unet.forward

    def count(sample: torch.Tensor, *args: object, **kwargs: object) -> object:
        batches.append(sample.shape[0])
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(turbo.pipe.unet, "forward", count)
    out = turbo.predict(Request(prompt="a fox", resolution="1080p", aspect_ratio="4:3", seed=4))
    with Image.open(out) as image:
        assert image.size == (1440, 1080)
    # 4 base steps + int(4 x 0.35) -> 1 refine step, each one UNet call on a batch of 1 (no CFG).
    assert batches == [1] * 5


@pytest.mark.parametrize("layout", ["kohya", "kohya-sgm"])
def test_turbo_fuses_the_lora_alike_from_kohyas_layouts(
    tiny_weights: Path, tmp_path: Path, layout: str, turbo_unet_from_the_stand_in: dict[str, torch.Tensor]
) -> None:
    """The stand-in LoRA is written with diffusers' PEFT keys; the published file may use kohya's
    layout, with diffusers' module names or the original SGM UNet's. diffusers converts either on
    the same call: the fused UNet comes out the same as from the stand-in."""
    expected = turbo_unet_from_the_stand_in
    peft = load_file(tiny_weights / SDXL_LIGHTNING.folder / LIGHTNING_LORA_WEIGHT)
    unet_config = UNet.load_config(tiny_weights / SDXL_BASE.folder / "unet")
    lora = kohya_keys(peft, unet_config["layers_per_block"] if layout == "kohya-sgm" else None)
    assert not any(key.startswith("unet.") for key in lora) and len(lora) == len(peft) * 3 // 2
    fused = load_pipeline(weights_with_lora(tiny_weights, tmp_path, lora), CPU_FP32, turbo=True).unet.state_dict()
    assert fused.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(fused[key], value, rtol=0, atol=1e-6, msg=key)


def test_turbo_refuses_a_lora_that_also_holds_text_encoder_weights(tiny_weights: Path, tmp_path: Path) -> None:
    """The turbo LoRA goes into the UNet alone; text-encoder weights would be dropped unapplied."""
    lora = load_file(tiny_weights / SDXL_LIGHTNING.folder / LIGHTNING_LORA_WEIGHT)
    width = CLIPTextConfig.from_pretrained(tiny_weights / SDXL_BASE.folder / "text_encoder").hidden_size
    q_proj = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    lora |= {f"{q_proj}.lora_A.weight": torch.zeros(4, width), f"{q_proj}.lora_B.weight": torch.zeros(width, 4)}
    with pytest.raises(ValueError, match=re.escape(f"{LIGHTNING_LORA_WEIGHT} holds LoRA weights for text_encoder;")):
        load_pipeline(weights_with_lora(tiny_weights, tmp_path, lora), CPU_FP32, turbo=True)


def test_turbo_without_its_lora_names_the_download(tiny_weights: Path, tmp_path: Path) -> None:
    partial = tmp_path / "weights"
    for repo in ALL_REPOS:
        shutil.copytree(tiny_weights / repo.folder, partial / repo.folder)
    with pytest.raises(MissingWeightsError, match=r"ByteDance/SDXL-Lightning.*--turbo"):
        build_service(Settings(weights_dir=partial, device="cpu", turbo=True, download_weights=False))


@pytest.mark.usefixtures("small_for_one_test")
def test_the_image_projection_runs_once_per_pass_with_the_same_image(tiny_weights: Path, tmp_path: Path) -> None:
    gen = build_service(Settings(weights_dir=tiny_weights, steps=4, device="cpu"))
    unet = gen.pipe.unet
    assert isinstance(unet.encoder_hid_proj, ProjectionOncePerPass)
    calls = []
    unet.encoder_hid_proj.image_projection_layers[0].register_forward_hook(lambda *_: calls.append(1))
    request = tagged(tmp_path, "@woman with @dog", ["woman", "dog"], "1080p", "4:3", seed=11)  # base + refine

    once = gen.predict(request)
    assert len(calls) == 2  # the base pass (4 steps) and the refine pass (1 step)
    calls.clear()
    # diffusers' own projection over the same layers: once per UNet call, the same image.
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(list(unet.encoder_hid_proj.image_projection_layers))
    every_step = gen.predict(request)
    assert len(calls) == 5
    assert digest(once) == digest(every_step)


@pytest.mark.usefixtures("small_for_one_test")
def test_pipelines_pin_diffusers_execution_device_and_never_walk_the_modules(
    service: ImageService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The execution device is diffusers' own answer, read once at setup: a prediction never runs
    diffusers' walk over every module (about 12 ms a call on the CPU with SDXL's structure)."""
    walk = DiffusionPipeline._execution_device
    for pipe in (service.pipe, service.refiner):
        assert pipe._execution_device == walk.fget(pipe) == torch.device("cpu")
    walks = []
    monkeypatch.setattr(DiffusionPipeline, "_execution_device", property(lambda p: walks.append(p) or walk.fget(p)))
    service.predict(tagged(tmp_path, "@woman in @park", ["woman", "park"], "1080p", "1:1", seed=3))
    assert walks == []
    with device_looked_up(service.pipe):  # unpinned: diffusers' own again
        assert service.pipe._execution_device == torch.device("cpu") and walks == [service.pipe]


@pytest.mark.usefixtures("small_for_one_test")
def test_attention_reads_each_processor_signature_once_not_at_every_call(
    service: ImageService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = (service.pipe.unet, service.pipe.vae)
    processors = [p for model in models for p in model.attn_processors.values()]
    for processor in processors:  # the names diffusers reads at every call
        assert processor_parameters(type(processor)) == set(inspect.signature(processor.__call__).parameters)
    read = []  # reads of a processor's `__call__` (the pipeline reads other signatures too, once a call)
    signature = inspect.signature

    def counted(obj: object, *args: object, **kwargs: object) -> inspect.Signature:
        if getattr(obj, "__name__", None) == "__call__":
            read.append(obj)
        return signature(obj, *args, **kwargs)

    monkeypatch.setattr(inspect, "signature", counted)
    processor_parameters.cache_clear()
    request = tagged(tmp_path, "@woman in @park", ["woman", "park"], "1080p", "1:1", seed=3)  # refined: all run

    once = service.predict(request)
    assert 0 < len(read) <= len({type(p) for p in processors})
    # diffusers' own forward on the same modules: one read per attention call, the same image.
    modules = attention_modules(*models)
    for module in modules:
        monkeypatch.delattr(module, "forward")  # the class's forward again (restored at teardown)
    read.clear()
    every_call = service.predict(request)
    assert len(read) >= len(modules)
    assert digest(once) == digest(every_call)


def test_attention_forward_filters_and_warns_as_diffusers_does(monkeypatch: pytest.MonkeyPatch) -> None:
    attn = Attention(query_dim=8, heads=2, dim_head=4, processor=AttnProcessor2_0()).eval()
    hidden = torch.randn(1, 4, 8)
    warnings: list[str] = []
    monkeypatch.setattr(attention_processor.logger, "warning", warnings.append)
    kwargs = {"bogus": 1, "ip_adapter_masks": None}  # one unknown, one diffusers takes quietly

    expected = Attention.forward(attn, hidden, **kwargs)
    got = attention_forward(attn, hidden, **kwargs)
    assert torch.equal(got, expected)
    assert len(warnings) == 2 and warnings[0] == warnings[1]
    assert "['bogus']" in warnings[0] and "AttnProcessor2_0" in warnings[0]
