"""Tiny random-weight diffusers pipelines built from configs, for CI and `diffmesh up` (no model hub needed).

Sizes follow shared/reference/diffusion.md §2.1: "micro" SD (~35k params, 0.2 MB), "tiny" SD (diffusers' test size,
~2M params), a tiny FLUX (DiT, ~0.2M params) that exercises First Block Cache and TeaCache, and a tiny Wan2.1
text-to-video pipeline (~37k params). Outputs are noise-like images;
the point is the real from_pretrained / pipeline / scheduler code path.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

SD_VARIANTS = ("micro", "tiny")
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"  # trained by workers/image/train.py, shipped in the repo
FAMILIES = ("sd", "flux", "wan")
_MARKER = "diffmesh.json"  # per-model defaults (workers/image/families.py); written last = directory complete
# Defaults that keep the tiny models fast and their step cache effective (thresholds calibrated on random weights).
TINY_DEFAULTS = {
    "sd": {"default_size": [64, 64], "default_steps": 10, "step_cache_threshold": 0.5},
    "flux": {"default_size": [64, 64], "default_steps": 10, "step_cache_threshold": 0.5,
             "teacache_threshold": 0.3, "teacache_coefficients": [1.0, 0.0],  # FLUX.1-dev's fit means nothing here
             "call_kwargs": {"max_sequence_length": 16}},
    "wan": {"default_size": [32, 32], "default_steps": 8, "default_frames": 9, "default_fps": 8,
            "teacache_threshold": 0.3, "teacache_coefficients": [1.0, 0.0], "call_kwargs": {"max_sequence_length": 16}},
}


def byte_table() -> dict[int, str]:
    """GPT-2/CLIP byte -> unicode table: printable bytes map to themselves, the rest to chr(256 + k) in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_clip_tokenizer(max_length: int):
    """A CLIP BPE tokenizer whose vocabulary is the 256 byte chars (+ `</w>` forms): every byte is one token."""
    from transformers import CLIPTokenizer

    chars = list(byte_table().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def build_clip_text_encoder(vocab_size: int, hidden: int, num_heads: int, num_layers: int, max_positions: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden, intermediate_size=2 * hidden,
        num_attention_heads=num_heads, num_hidden_layers=num_layers, vocab_size=vocab_size,
        max_position_embeddings=max_positions, projection_dim=hidden,
    )
    return CLIPTextModel(config)


def _sd_shapes(variant: str) -> dict:
    if variant == "micro":
        return dict(channels=(4, 8), layers=1, cross=8, groups=2, head_dim=2, text_heads=2, text_layers=1)
    if variant == "tiny":
        return dict(channels=(32, 64), layers=2, cross=32, groups=32, head_dim=8, text_heads=4, text_layers=2)
    raise ValueError(f"unknown tiny SD variant {variant!r}; use one of {SD_VARIANTS}")


def build_tiny_sd(variant: str = "micro", seed: int = 0):
    """A random StableDiffusionPipeline (DDIM, no safety checker); 64x64 default images (latent 32, VAE factor 2)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    s = _sd_shapes(variant)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=s["channels"], layers_per_block=s["layers"], sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=s["cross"], norm_num_groups=s["groups"], attention_head_dim=s["head_dim"],
    )
    vae = AutoencoderKL(
        block_out_channels=list(s["channels"]), in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=s["groups"],
    )
    tokenizer = build_clip_tokenizer(max_length=16)
    text_encoder = build_clip_text_encoder(len(tokenizer), s["cross"], s["text_heads"], s["text_layers"], 16)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False, image_encoder=None,
    )


def build_t5_tokenizer():
    """A Unigram T5 tokenizer over lowercase letters plus a few words, built in memory (no .spm file)."""
    from transformers import T5Tokenizer

    words = "a red cat dog blue green house tree sky photo of the".split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(c, -1.0) for c in "▁abcdefghijklmnopqrstuvwxyz"]
    vocab += [("▁" + w, -2.0) for w in words]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_tiny_flux(seed: int = 0):
    """A random FluxPipeline (DiT, flow matching); 64x64 default images (VAE factor 2, 2x2 latent packing)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    t5_tokenizer = build_t5_tokenizer()
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    clip_tokenizer = build_clip_tokenizer(max_length=77)
    text_encoder = build_clip_text_encoder(len(clip_tokenizer), 32, 4, 2, 77)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=t5_tokenizer, transformer=transformer,
    )


def build_tiny_wan(seed: int = 0):
    """A random WanPipeline (text-to-video DiT, Wan2.1 layout): 32x32 default, 9 frames (VAE 8x spatial, 4x temporal)."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = build_t5_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0,
    ))
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


def _build(family: str, variant: str):
    if family == "sd":
        return build_tiny_sd(variant)
    if family == "flux":
        return build_tiny_flux()
    if family == "wan":
        return build_tiny_wan()
    raise ValueError(f"unknown tiny family {family!r}; use one of {FAMILIES}")


def ensure_tiny_image(cache_dir: str | os.PathLike, family: str = "sd", variant: str = "micro") -> Path:
    """Build (once) and return the directory of a tiny pipeline under `cache_dir`; later calls reuse it."""
    name = f"tiny-{family}" if family != "sd" else f"tiny-sd-{variant}"
    target = Path(cache_dir) / name
    if (target / _MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    pipe = _build(family, variant)
    # Build into a sibling temp dir and rename, so a crash never leaves a half-written model behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    pipe.save_pretrained(staging)
    (staging / _MARKER).write_text(json.dumps({"tiny": f"{family}/{variant}", **TINY_DEFAULTS[family]}, indent=1))
    try:
        staging.rename(target)
    except OSError:  # another process won the race; keep its copy
        _remove_tree(staging)
    return target


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
