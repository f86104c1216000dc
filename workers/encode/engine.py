"""Vision encode engine: a transformers CLIP/SigLIP vision tower plus a projector to the language model's hidden size.

Torch only, no bus. `encode(images)` is one batched forward: PIL RGB images in, one [tokens, hidden] tensor per
image out (patch features of `feature_layer`, the CLS token dropped, through the projector), on the CPU.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from workers.encode.config import EncodeConfig
from workers.encode.pixels import pixel_spec, prepare, to_pixels
from workers.encode.tiny import PROJECTOR_CONFIG, PROJECTOR_WEIGHTS, build_projector

log = logging.getLogger("diffmesh.encode")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VISION_CLASSES = {  # config.json model_type -> transformers class of the vision tower alone
    "clip": "CLIPVisionModel", "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel", "siglip_vision_model": "SiglipVisionModel",
}


class EncodeEngine:
    """Loaded vision tower, image processor and projector; `encode` runs on one thread at a time."""

    def __init__(self, config: EncodeConfig):
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = DTYPES[config.dtype]
        model_config = transformers.AutoConfig.from_pretrained(config.model)
        class_name = VISION_CLASSES.get(model_config.model_type)
        if class_name is None:
            raise ValueError(f"{config.model} is a {model_config.model_type!r} model; the encode worker takes "
                             f"{', '.join(sorted(VISION_CLASSES))} vision towers")
        vision_class = getattr(transformers, class_name)
        self.tower = vision_class.from_pretrained(config.model, dtype=self.dtype).to(self.device).eval()
        self.processor = transformers.AutoImageProcessor.from_pretrained(config.model)
        self.pixels = pixel_spec(self.processor)  # None: every image goes through the processor itself
        vision = self.tower.config
        self.num_patches = (vision.image_size // vision.patch_size) ** 2
        self.projector, self.feature_layer = _load_projector(Path(config.model), vision.hidden_size)
        if config.feature_layer is not None:
            self.feature_layer = config.feature_layer
        self.projector = self.projector.to(self.device, self.dtype).eval()
        self.hidden_size = _out_features(self.projector, vision.hidden_size)
        self.num_forwards = 0  # vision forwards (batches)
        self.num_images = 0  # images encoded

    @property
    def model_name(self) -> str:
        return self.config.served_name or Path(self.config.model.rstrip("/")).name

    @property
    def num_image_tokens(self) -> int:
        """Embedding rows per image (= placeholder tokens the language model reserves)."""
        return self.num_patches

    def prepare(self, image):
        """The per-image part of preprocessing (resize, crop), for any thread: a uint8 array, or the image itself."""
        if self.pixels is not None:
            prepared = prepare(image, self.pixels)
            if prepared is not None:
                return prepared
        return image

    def encode(self, images: list) -> list[torch.Tensor]:
        """One forward over `images` (PIL RGB); returns [num_image_tokens, hidden_size] per image, on the CPU."""
        return self.encode_prepared([self.prepare(image) for image in images])

    @torch.inference_mode()
    def encode_prepared(self, items: list) -> list[torch.Tensor]:
        """One forward over `prepare`d images (normalised here as one batch)."""
        if all(isinstance(item, np.ndarray) for item in items):
            pixels = to_pixels(items, self.pixels)
        else:  # some image needed the processor (e.g. a crop larger than the image): each on its own path
            pixels = torch.cat([to_pixels([item], self.pixels) if isinstance(item, np.ndarray)
                                else self.processor(images=[item], return_tensors="pt")["pixel_values"] for item in items])
        pixels = pixels.to(self.device, self.dtype)
        wants_layer = self.feature_layer != -1
        out = self.tower(pixel_values=pixels, output_hidden_states=wants_layer)
        features = out.hidden_states[self.feature_layer] if wants_layer else out.last_hidden_state
        if features.shape[1] == self.num_patches + 1:
            features = features[:, 1:]  # CLIP's CLS token; LLaVA feeds the patch tokens only
        embeddings = self.projector(features).cpu()
        self.num_forwards += 1
        self.num_images += len(items)
        return [row.clone() for row in embeddings.unbind(0)]  # own storage: a cached row must not pin its batch


def _load_projector(directory: Path, vision_hidden: int):
    """(projector, feature_layer) from diffmesh_projector.json/.safetensors; identity at the last layer without one."""
    config_path = directory / PROJECTOR_CONFIG
    if not config_path.is_file():
        log.info("no %s in %s: embeddings are the vision tower's features (hidden %d)", PROJECTOR_CONFIG, directory,
                 vision_hidden)
        return torch.nn.Identity(), -1
    from safetensors.torch import load_file

    spec = json.loads(config_path.read_text())
    if spec["in_features"] != vision_hidden:
        raise ValueError(f"{config_path}: in_features {spec['in_features']} != the vision tower's hidden size {vision_hidden}")
    projector = build_projector(spec["projector"], spec["in_features"], spec["out_features"])
    projector.load_state_dict(load_file(str(directory / PROJECTOR_WEIGHTS)))
    return projector, int(spec.get("feature_layer", -1))


def _out_features(projector, vision_hidden: int) -> int:
    if isinstance(projector, torch.nn.Identity):
        return vision_hidden
    return projector[-1].out_features
