"""``mmhsa explain VIDEO "text" --out attention.png``: where a text's attention goes in a video.

The video and the text form one joint tree, as a question in QA training (video, question; in the model's
layout, :mod:`pipelines.train.layouts`), and go through the QA model's encoder. In every layer the dense
HSA matrix is read back: exactly the weights the model applied. HSA ties attention on sibling blocks, so
within one layer a word gives every leaf of the video the same weight (it attends to the video as a
block); where inside the video that attention lands is decided by the video's own attention in the layers
before (clips to clips, frames to frames, patches to patches). Attention rollout composes the layers (per
layer half residual, half attention, heads averaged; Abnar & Zuidema 2020), and the text's tokens' rows of
the product, restricted to the video's patches, are summed per frame and per clip. The picture: the share
of each clip (with its time span), every sampled frame with its share, and on the top frames the patches'
shares drawn over it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from data_prep.assemble import assemble
from data_prep.schema import MODALITIES
from data_prep.text import split_sentences
from data_prep.video import open_video
from pipelines.train.batches import collate
from pipelines.train.layouts import apply_layout

from .checkpoints import TrainedModel, load_model

__all__ = ["attention_map", "explain", "plot_attention"]


@torch.no_grad()
def attention_map(model: TrainedModel, video: str | Path, text: str) -> dict:
    """Attention from ``text`` to ``video``'s clips, frames and patches.

    Returns:
        {"clips": [C] shares, "frames": [C][F] shares, "patches": [C][F][gh][gw] shares (all summing to 1
        over the video), "times": [C] (start, end), "frame_times", "frame_indices", "layers"}.
    Raises:
        ValueError: empty text, unreadable video (named), or a model without attention ("mean" mixer).
    """
    if not split_sentences(text):
        raise ValueError("empty text: nothing to explain")
    module = model.module
    if module.encoder.blocks[0].attn.mixer == "mean":
        raise ValueError(f"{model.path}: a mean-pooling model has no attention to show")
    featurizer = model.videos
    clips = featurizer.featurize(featurizer.open_group([Path(video)])[0], model.featurization.limits.max_clips)
    words = model.texts([split_sentences(text)])
    sample = assemble("explain", video=clips, texts={"question": words}, limits=model.featurization.limits)
    batch = apply_layout(collate([sample]), getattr(module, "layout", "joint")).to(module.device)  # as trained
    h = batch.hierarchy
    keys = h.keyed_children(0)
    v0, v1 = int(h.leaf_start[keys["video"]]), int(h.leaf_end[keys["video"]])
    t0, t1 = int(h.leaf_start[keys["question"]]), int(h.leaf_end[keys["question"]])
    # the video's patches (a layout may put copies of the question among them)
    patches = v0 + torch.nonzero(batch.leaf_modality[v0:v1].cpu() == MODALITIES.index("video")).flatten()
    inputs = []
    hooks = [
        block.attn.register_forward_pre_hook(lambda _, args: inputs.append(args)) for block in module.encoder.blocks
    ]
    try:
        module.encode(batch)
    finally:
        for hook in hooks:
            hook.remove()
    # Attention rollout: each layer mixes a leaf with what it attends to (half residual, half attention,
    # heads averaged); the product over layers says how much of each input leaf reaches each output leaf.
    n = h.num_leaves
    eye = torch.eye(n, dtype=torch.float64)
    rollout = eye
    for block, args in zip(module.encoder.blocks, inputs):
        theta = block.attn.weights(*args).double().mean(0).cpu()  # [N, N]
        rollout = (0.5 * theta + 0.5 * eye) @ rollout
    share = rollout[t0:t1][:, patches].mean(0)
    share /= share.sum().clamp_min(1e-30)
    grid = clips[0].patches.shape[1:3]
    shares, at = [], 0
    for clip in clips:
        n = len(clip.frame_times) * grid[0] * grid[1]
        shares.append(share[at : at + n].view(len(clip.frame_times), *grid))
        at += n
    if at != len(share):
        raise AssertionError(f"{at} patches mapped of {len(share)}")
    return {
        "video": str(video),
        "text": text,
        "layers": len(inputs),
        "clips": [float(s.sum()) for s in shares],
        "frames": [s.sum((1, 2)).tolist() for s in shares],
        "patches": [s.tolist() for s in shares],
        "times": [(c.start, c.end) for c in clips],
        "frame_times": [c.frame_times for c in clips],
        "frame_indices": [c.frame_indices for c in clips],
    }


def plot_attention(result: dict, out: str | Path, top_frames: int = 3) -> Path:
    """Draw :func:`attention_map`'s result: clip shares, all frames with their shares, top frames' patches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    video = open_video(result["video"])
    indices = [i for clip in result["frame_indices"] for i in clip]
    pixels = video.frames(indices).numpy()  # [F, H, W, 3] uint8
    frame_share = [s for clip in result["frames"] for s in clip]
    patch_share = [np.array(p) for clip in result["patches"] for p in clip]
    owner = [c for c, clip in enumerate(result["frames"]) for _ in clip]
    order = sorted(range(len(indices)), key=lambda i: -frame_share[i])[:top_frames]
    columns = max(len(c) for c in result["frames"])
    rows = len(result["frames"])
    fig = plt.figure(figsize=(max(8.0, 1.6 * columns), 2.2 + 1.3 * rows + 2.8), constrained_layout=True)
    grid = fig.add_gridspec(3, 1, height_ratios=[1.4, 1.3 * rows, 2.8])
    ax = fig.add_subplot(grid[0])
    labels = [f"{s:.1f}-{e:.1f}s" for s, e in result["times"]]
    ax.bar(range(len(labels)), result["clips"], color="tab:orange")
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("share")
    ax.set_title(f'"{result["text"][:80]}": attention per clip (rollout over {result["layers"]} layers)', fontsize=9)
    frames = grid[1].subgridspec(rows, columns)
    at = 0
    for c, clip in enumerate(result["frames"]):
        for f, s in enumerate(clip):
            a = fig.add_subplot(frames[c, f])
            a.imshow(pixels[at])
            a.set_title(
                f"clip {c} t={result['frame_times'][c][f]:.1f}s {s:.3f}",
                fontsize=6,
                color="red" if at in order else "black",
            )
            a.axis("off")
            at += 1
    tops = grid[2].subgridspec(1, len(order))
    for j, i in enumerate(order):
        a = fig.add_subplot(tops[0, j])
        height, width = pixels[i].shape[:2]
        a.imshow(pixels[i])
        a.imshow(patch_share[i], cmap="inferno", alpha=0.55, extent=(0, width, height, 0), interpolation="nearest")
        a.set_title(f"top {j + 1}: clip {owner[i]}, frame {indices[i]} ({frame_share[i]:.3f})", fontsize=7)
        a.axis("off")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def explain(
    video: str,
    text: str,
    out: str,
    checkpoint: str | None = None,
    prepared: str | None = None,
    trust_checkpoint: bool = False,
) -> dict:
    """:func:`attention_map` with the QA model, drawn to ``out`` (PNG) and written next to it as JSON."""
    model = load_model(checkpoint, "qa", prepared=prepared, trust=trust_checkpoint)
    result = attention_map(model, video, text)
    plot_attention(result, out)
    Path(out).with_suffix(".json").write_text(json.dumps(result), encoding="utf-8")
    return result
