"""Encoder weights from the user's disk, loaded strictly: a checkpoint that does not fit fails, naming it.

timm models take a state dict (the classifier head and a ``module.`` prefix left out; a ViT's position table
resampled to the model's size); open_clip models take what open_clip reads (``.pt``/``.bin``/``.safetensors``
files, or a ``local-dir:`` snapshot folder), loaded strictly by open_clip itself.
"""

from __future__ import annotations

import torch

__all__ = ["load_timm_weights", "open_clip_model"]


def load_timm_weights(model: torch.nn.Module, path: str, name: str) -> None:
    """Load a checkpoint of the user's into a timm model, strictly: every weight must be there and fit.

    The classifier's weights are left out (the model is built without its head, ``num_classes=0``), and so
    is a ``module.`` prefix (a checkpoint saved from DataParallel/DDP).

    Raises:
        ValueError: naming the checkpoint: unreadable, weights missing or unexpected (counts and the first
            names), or of the wrong shape.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a file torch can read without running code
        raise ValueError(
            f"frame encoder weights {path}: not a readable state dict ({type(err).__name__}: {err})"
        ) from None
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"frame encoder weights {path}: holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    head = (getattr(model, "pretrained_cfg", {}) or {}).get("classifier") or "head"
    heads = head if isinstance(head, (list, tuple)) else (head,)
    state = {k: v for k, v in state.items() if not any(k == h or k.startswith(f"{h}.") for h in heads)}
    expected = model.state_dict()
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None and "pos_embed" in state and state["pos_embed"].shape != expected.get("pos_embed").shape:
        from timm.layers import resample_abs_pos_embed  # trained at another size: the usual bicubic resize

        prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=list(grid), num_prefix_tokens=prefix)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(v.shape)} (the model has {tuple(expected[k].shape)})" for k, v in state.items()
             if k in expected and tuple(v.shape) != tuple(expected[k].shape)]  # fmt: skip
    problems = [f"{len(found)} {what} ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})"
                for what, found in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong))
                if found]  # fmt: skip
    if problems:
        raise ValueError(f"frame encoder weights {path} do not fit timm {name!r}: " + "; ".join(problems))
    model.load_state_dict(state)


def open_clip_model(name: str, weights: str | None):
    """An open_clip model from the user's disk (``weights``: a ``.pt``/``.bin``/``.safetensors`` file; or a
    ``local-dir:`` name), loaded strictly by open_clip.

    Raises:
        ValueError: naming the model and the weights when they cannot be read or do not fit.
    """
    import open_clip

    try:
        return open_clip.create_model(name, pretrained=weights)
    except (RuntimeError, FileNotFoundError, KeyError, ValueError, OSError) as err:
        where = weights or name
        first = str(err).strip().split("\n")[0][:300]
        raise ValueError(
            f"open_clip {name!r} with weights {where}: cannot load ({type(err).__name__}: {first})"
        ) from None
