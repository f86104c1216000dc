"""Image worker on a CUDA GPU: batching and step caching with a real-sized pipeline (never run in CI).

    python bench/gpu_image.py --model /models/sd-turbo        # a local diffusers directory (SD, SDXL, FLUX, ...)
    python bench/gpu_image.py --random-sd15                   # SD-1.5-shaped random weights: real compute, no download
    python bench/gpu_image.py --allow-cpu --model DIR --quick # smoke-test the script itself on a CPU

Prints the same table as bench/bench_image.py (batching at 8 concurrent, step-cache speedup and PSNR, whether batched
bytes equal solo bytes) for the given pipeline; exits 0 with a message when no GPU is present.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench.tables import scratch_dir  # noqa: E402
from bench_image import bench_batching, bench_step_cache, report  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="local diffusers pipeline directory")
    source.add_argument("--random-sd15", action="store_true", help="build an SD-1.5-shaped pipeline with random weights")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cache-steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 steps, 1 round")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (smoke test of this script)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", help="where --random-sd15 writes its pipeline (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.cache_steps, args.rounds = 4, 6, 1
    return args


def build_random_sd15(out_dir: Path) -> Path:
    """StableDiffusionPipeline with SD-1.5 shapes (UNet 860M, CLIP ViT-L text tower, 4-level VAE), random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from workers.image.tiny import build_clip_tokenizer

    if (out_dir / "model_index.json").exists():
        return out_dir
    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer(max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=768,
    ))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD-1.5's UNet
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4, sample_size=512,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out_dir)
    return out_dir


async def run(model_dir: Path, args) -> list:
    label = model_dir.name
    rows = [
        await bench_batching(model_dir, args),  # batch-invariant kernels: off on CUDA by default (auto)
        await bench_batching(model_dir, args, batch_invariant=True),
        await bench_step_cache(model_dir, args, f"step cache ({label})"),
    ]
    rows[1].scenario += " (invariant mode forced)"
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_image: no CUDA GPU here; nothing to run (use --allow-cpu to smoke-test on the CPU)")
        return 0
    if args.random_sd15:
        model_dir = build_random_sd15(scratch_dir(args.workdir, "sd15-random-") / "sd15-random")
    else:
        model_dir = Path(args.model)
    rows = asyncio.run(run(model_dir, args))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    header = f"gpu_image: {device}, torch {torch.__version__}, {model_dir.name}, {args.steps}/{args.cache_steps} steps"
    report(rows, header, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
