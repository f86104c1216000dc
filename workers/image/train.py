"""Train the demo image model: a tiny StableDiffusionPipeline that draws the shape and colours its prompt names.

    python -m workers.image.train            # writes workers/image/demo_model (~20 min on 2 shared CPU cores)
    python -m workers.image.train --out DIR

Deterministic (fixed seeds, one torch thread). Three stages on the synthetic data of shapes.py ("a red circle on
blue", 64x64): (1) an AutoencoderKL (VAE factor 4: 16x16x4 latents, trained on 32x32 crops) as a plain autoencoder with a tiny KL term;
(2) its latents' scale; (3) the UNet (cross-attention plus the pooled prompt added to the time embedding) and a one-layer
CLIP text encoder together on the v-prediction objective, with 10% empty prompts so classifier-free guidance works. The tokenizer is WordPiece over the prompts' words (one
token per word). The result is an ordinary diffusers directory that loads with from_pretrained.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from workers.image import shapes
from workers.image.tiny import DEMO_MODEL_DIR
MAX_TOKENS = 8
VAE_STEPS, UNET_STEPS, BATCH = 1200, 2000, 16
VAE_CROP = 32  # the autoencoder trains on random 32x32 crops (4x cheaper; it is fully convolutional)
DEFAULTS = {"default_size": [64, 64], "default_steps": 20, "default_guidance": 4.0, "step_cache_threshold": 0.15,
            "demo": "shapes"}


def build_tokenizer(directory: Path):
    from transformers import AutoTokenizer, BertTokenizer

    with tempfile.TemporaryDirectory() as vocab_dir:
        Path(vocab_dir, "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *shapes.words()]))
        tokenizer = BertTokenizer.from_pretrained(vocab_dir, model_max_length=MAX_TOKENS)
    tokenizer.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def build_components(tokenizer):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(block_out_channels=(16, 32, 32), layers_per_block=1, in_channels=3, out_channels=3,
                        latent_channels=4, sample_size=64, norm_num_groups=4,
                        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 48), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
        addition_embed_type="text", addition_embed_type_num_heads=4,  # pooled prompt -> every block (the colours)
    )  # fmt: skip
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=1,
        max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=32,
    ))
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    return vae, unet, text_encoder, scheduler


def train_vae(vae, images, steps: int, log_every: int):
    import torch

    optimizer = torch.optim.AdamW(vae.parameters(), lr=5e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-3, total_steps=steps, pct_start=0.1)
    rng = torch.Generator().manual_seed(1)
    for step in range(steps):
        top, left = torch.randint(0, shapes.SIZE - VAE_CROP + 1, (2,), generator=rng).tolist()
        batch = images[torch.randint(0, len(images), (BATCH,), generator=rng), :, top : top + VAE_CROP, left : left + VAE_CROP]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=rng)).sample
        loss = torch.nn.functional.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"vae  step {step:5d}  loss {loss.item():.5f}", flush=True)
    vae.eval()


def encode_all(vae, images):
    import torch

    with torch.no_grad():
        return torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])


def train_unet(unet, text_encoder, tokenizer, scheduler, latents, prompts, steps: int, log_every: int):
    import torch

    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    ids = tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    rng = torch.Generator().manual_seed(2)
    for step in range(steps):
        index = torch.randint(0, len(latents), (BATCH,), generator=rng)
        tokens = torch.where(torch.rand(BATCH, 1, generator=rng) < 0.1, empty, ids[index])
        noise = torch.randn(latents[index].shape, generator=rng)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (BATCH,), generator=rng)
        noisy = scheduler.add_noise(latents[index], noise, t)
        states = text_encoder(tokens)[0]
        target = scheduler.get_velocity(latents[index], noise, t)  # v-prediction: learns the colours far sooner
        loss = torch.nn.functional.mse_loss(unet(noisy, t, encoder_hidden_states=states).sample, target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"unet step {step:5d}  loss {loss.item():.5f}", flush=True)


def train(out_dir: Path, vae_steps: int = VAE_STEPS, unet_steps: int = UNET_STEPS, log_every: int = 100,
          reuse_vae: Path | None = None) -> Path:
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers import set_seed

    diffusers_logging.disable_progress_bar()
    torch.set_num_threads(1)
    set_seed(0)
    staging = Path(tempfile.mkdtemp(prefix=".demo-shapes-"))
    tokenizer = build_tokenizer(staging / "tokenizer")
    vae, unet, text_encoder, scheduler = build_components(tokenizer)
    prompts, images = shapes.dataset(2048)
    images = torch.from_numpy(images)
    if reuse_vae is not None:  # stage 1 is deterministic: the VAE an earlier run of this script wrote
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(reuse_vae, subfolder="vae", dtype=torch.float32)
    else:
        train_vae(vae, images, vae_steps, log_every)
    latents = encode_all(vae, images)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    train_unet(unet, text_encoder, tokenizer, scheduler, latents * vae.config.scaling_factor, prompts, unet_steps, log_every)
    pipe = StableDiffusionPipeline(vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                   unet=unet.eval(), scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False, image_encoder=None)
    pipe.to(torch.float16).save_pretrained(staging)  # half the bytes; the worker loads it as float32
    (staging / "diffmesh.json").write_text(json.dumps(DEFAULTS, indent=1))
    _publish(staging)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.move(str(staging), out_dir)
    return out_dir


def _publish(directory: Path) -> None:
    """World-readable files (mkdtemp makes the staging directory private)."""
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def score(model_dir: Path, prompts: list[tuple[str, str, str]], seeds=range(4)) -> float:
    """Mean share of the centre disk in the shape's colour and of the border in the background's, over seeds."""
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model_dir, dtype=torch.float32)  # stored fp16, run fp32 like the worker
    pipe.set_progress_bar_config(disable=True)
    shares = []
    for prompt, fg, bg in prompts:
        for seed in seeds:
            image = pipe(prompt, num_inference_steps=20, guidance_scale=DEFAULTS["default_guidance"], height=64,
                         width=64, generator=torch.Generator().manual_seed(seed)).images[0]
            shares.append(shapes.colour_share(image, fg, shapes.centre_disk(9)))
            shares.append(shapes.colour_share(image, bg, shapes.border(6)))
    return sum(shares) / len(shares)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--vae-steps", type=int, default=VAE_STEPS)
    parser.add_argument("--unet-steps", type=int, default=UNET_STEPS)
    parser.add_argument("--reuse-vae", type=Path, help="skip stage 1: load the VAE of an earlier run's output directory")
    args = parser.parse_args(argv)
    out = train(args.out, args.vae_steps, args.unet_steps, reuse_vae=args.reuse_vae)
    probes = [("a red circle on blue", "red", "blue"), ("a yellow square on black", "yellow", "black"),
              ("a white triangle on green", "white", "green")]
    print(f"colour score {score(out, probes):.2f} (share of pixels in the named colours)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
