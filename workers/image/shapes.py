"""The synthetic "shapes" data set the demo image model is trained on: one coloured shape on a flat background.

Pure numpy + Pillow. Prompts name the shape's colour, the shape and (usually) the background colour:
"a red circle on blue". Images are 64x64 with the shape near the centre (a little jitter in position and size).
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (240, 210, 40),
    "white": (245, 245, 245), "black": (20, 20, 20), "purple": (140, 60, 190), "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
TEMPLATES = ("a {fg} {shape} on {bg}", "a {fg} {shape} on a {bg} background", "{fg} {shape} on {bg}")
BARE_TEMPLATE = "a {fg} {shape}"  # no background named: any background


def words() -> list[str]:
    """Every word a prompt uses (the tokenizer's vocabulary)."""
    return ["a", "on", "background", *COLOURS, *SHAPES]


def draw(shape: str, fg: str, bg: str, rng: random.Random) -> Image.Image:
    """One 64x64 RGB image; the shape's centre is within 4 px of the image centre, its radius 14..20 px."""
    image = Image.new("RGB", (SIZE, SIZE), COLOURS[bg])
    cx, cy = SIZE / 2 + rng.uniform(-4, 4), SIZE / 2 + rng.uniform(-4, 4)
    r = rng.uniform(14, 20)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[fg])
    elif shape == "square":
        s = r * 0.85
        pen.rectangle((cx - s, cy - s, cx + s, cy + s), fill=COLOURS[fg])
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=COLOURS[fg])
    return image


def sample(rng: random.Random) -> tuple[str, Image.Image]:
    """A random (prompt, image) pair; one in six prompts leaves the background unnamed."""
    shape = rng.choice(SHAPES)
    fg, bg = rng.sample(list(COLOURS), 2)
    template = BARE_TEMPLATE if rng.random() < 1 / 6 else rng.choice(TEMPLATES)
    return template.format(fg=fg, shape=shape, bg=bg), draw(shape, fg, bg, rng)


def dataset(num: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """`num` prompts and their images as float32 [num, 3, 64, 64] in [-1, 1]."""
    rng = random.Random(seed)
    prompts, images = [], []
    for _ in range(num):
        prompt, image = sample(rng)
        prompts.append(prompt)
        images.append(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
    return prompts, np.stack(images)


def colour_share(image: Image.Image, colour: str, region: np.ndarray) -> float:
    """Fraction of the pixels in `region` (bool [H, W]) whose nearest palette colour (RGB distance) is `colour`."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)[region]
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    nearest = np.linalg.norm(pixels[:, None, :] - palette[None], axis=-1).argmin(axis=1)
    return float((nearest == list(COLOURS).index(colour)).mean())


def centre_disk(radius: float, size: int = SIZE) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return (x - size / 2 + 0.5) ** 2 + (y - size / 2 + 0.5) ** 2 < radius**2


def border(width: int, size: int = SIZE) -> np.ndarray:
    mask = np.ones((size, size), dtype=bool)
    mask[width:-width, width:-width] = False
    return mask
