"""Encoder weights from the user's disk, loaded strictly: a checkpoint that does not fit fails, naming it.

Every loader ends in :func:`fit_state`: weights missing from the checkpoint, weights the model does not
have and weights of the wrong shape are each counted and the first names given, with the checkpoint's
path. ``partial=True`` is the explicit way out: what fits is loaded, the rest stays at its random
initialisation, and a warning lists it (the names are also returned, for the prepared data's manifest).

- timm models take a state dict, a ``.safetensors`` file or a snapshot folder (the classifier head and a
  ``module.`` prefix left out; a ViT's position table resampled to the model's size).
- open_clip models take what open_clip reads (``.pt``/``.pth``/``.bin``/``.safetensors`` files, or a
  ``local-dir:`` Hugging Face snapshot folder), massaged by open_clip's own loader (third-party layouts
  converted, position tables resized) before the same strict check.
- Hugging Face encoder folders are loaded by transformers, whose loading report is checked the same way.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["fit_state", "hf_encoder", "load_timm_weights", "open_clip_model"]

log = logging.getLogger(__name__)

OPEN_CLIP_DIR = "local-dir:"  # open_clip's name for a model folder on disk (config + weights)
# in a Hugging Face snapshot folder, the weight files open_clip writes, best first
OPEN_CLIP_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)
TIMM_FILES = ("model.safetensors", "pytorch_model.bin")  # in a timm model's Hugging Face snapshot folder
# weights of pretraining or task heads a base encoder leaves out (BERT's MLM/NSP heads, a classifier)
HF_HEADS = ("cls.", "lm_head.", "classifier.", "pre_classifier.", "qa_outputs.", "discriminator_predictions.")


def first_line(err: BaseException) -> str:
    """An exception's first line (at most 300 characters): libraries' load errors run to pages."""
    return str(err).strip().split("\n")[0][:300]


def _first(names: list[str]) -> str:
    return f"{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"


def _report(path, target: str, missing: list[str], unexpected: list[str], wrong: list[str], partial: bool) -> None:
    """Raise (strict) or warn (partial) about what does not fit."""
    found = [(what, names) for what, names in (("missing", missing), ("unexpected", unexpected),
             ("of the wrong shape", wrong)) if names]  # fmt: skip
    if not found:
        return
    problems = "; ".join(f"{len(names)} {what} ({_first(names)})" for what, names in found)
    if not partial:
        raise ValueError(
            f"weights {path} do not fit {target}: {problems} (partial_weights: true loads what fits and "
            "leaves the rest random)"
        )
    log.warning("weights %s: partial load into %s: %s; %d weights stay random", path, target, problems,
                len(missing) + len(wrong))  # fmt: skip


def fit_state(model: torch.nn.Module, state: dict, path, target: str, partial: bool = False) -> list[str]:
    """Load ``state`` into ``model``: strictly, or with ``partial`` what fits. Returns the names of the
    model's weights left at their initial values (empty after a strict load).

    Raises:
        ValueError: (strict) naming ``path`` and ``target`` with the counts and first names of the weights
            missing, unexpected and of the wrong shape.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    _report(path, target, missing, unexpected,
            [f"{k} {tuple(state[k].shape)} (the model has {tuple(expected[k].shape)})" for k in wrong],
            partial)  # fmt: skip
    fitting = {k: v for k, v in state.items() if k in expected and k not in wrong}
    model.load_state_dict(fitting, strict=not partial)
    return missing + wrong


def _timm_file(path: str) -> Path:
    """The weight file: ``path``, or in a Hugging Face snapshot folder (timm's hub layout) its weights."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = next((path / f for f in TIMM_FILES if (path / f).is_file()), None)
    if found is None:
        raise ValueError(f"frame encoder weights {path}: a folder without {' or '.join(TIMM_FILES)}")
    return found


def load_timm_weights(model: torch.nn.Module, path: str, name: str, partial: bool = False) -> list[str]:
    """Load a checkpoint of the user's into a timm model, strictly unless ``partial`` (:func:`fit_state`).

    ``path``: a state dict (``.pth``/``.pt``/``.bin``, read without running code; a ``state_dict`` or
    ``model`` entry of a training checkpoint is taken), a ``.safetensors`` file, or a Hugging Face snapshot
    folder holding ``model.safetensors`` or ``pytorch_model.bin``.

    The classifier's weights are left out (the model is built without its head, ``num_classes=0``), and so
    is a ``module.`` prefix (a checkpoint saved from DataParallel/DDP).

    Raises:
        ValueError: naming the checkpoint: unreadable, or not fitting (:func:`fit_state`).
    """
    path = _timm_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
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
    return fit_state(model, state, path, f"timm {name!r}", partial)


def _open_clip_weights(name: str, weights: str | None) -> str | None:
    """The weight file to load: ``weights``, or the one in a ``local-dir:`` folder (None: none given)."""
    if not name.startswith(OPEN_CLIP_DIR):
        return weights
    folder = Path(name.removeprefix(OPEN_CLIP_DIR))
    found = next((folder / f for f in OPEN_CLIP_FILES if (folder / f).is_file()), None)
    if found is None:
        raise ValueError(f"open_clip {name!r}: no weights in {folder} (looked for {', '.join(OPEN_CLIP_FILES)})")
    return str(found)


class _NotLoadedYet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextmanager
def _quiet_open_clip():
    """open_clip warns that a model it builds without weights is random; the weights are loaded next."""
    quiet = _NotLoadedYet()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


def open_clip_model(name: str, weights: str | None, partial: bool = False):
    """An open_clip model from the user's disk: ``weights`` a ``.pt``/``.bin``/``.safetensors`` file, or
    ``name`` a ``local-dir:`` folder; None (or "random"): untrained, for tests. Loaded strictly unless
    ``partial``; the names left random are in the model's ``left_random``.

    Raises:
        ValueError: naming the model and the weights when they cannot be read or do not fit.
    """
    import open_clip

    weights = None if weights == "random" else weights
    try:
        with _quiet_open_clip():
            model = open_clip.create_model(name, pretrained=None, load_weights=False)
        path = _open_clip_weights(name, weights)
        model.left_random = []
        if path is None:
            return model
        captured = {}
        # open_clip's loader converts third-party layouts and resizes position tables, then loads; catch
        # the massaged state it would load, to check it strictly here
        model.load_state_dict = lambda state, strict=True: captured.setdefault("state", state)
        try:
            open_clip.load_checkpoint(model, path, strict=True)
        finally:
            del model.load_state_dict
    except Exception as err:  # whatever a damaged or foreign file makes the readers raise (SafetensorError, ...)
        raise ValueError(
            f"open_clip {name!r} with weights {weights or name}: cannot load ({type(err).__name__}: {first_line(err)})"
        ) from None
    model.left_random = fit_state(model, captured["state"], path, f"open_clip {name!r}", partial)
    return model


def hf_encoder(folder: str, partial: bool = False):
    """A Hugging Face encoder (``AutoModel``) from a local folder, strictly unless ``partial``: transformers'
    loading report is checked (a pretraining head's weights, e.g. BERT's ``cls.*``, may be left out).
    The names left random are in the model's ``left_random``.

    Raises:
        ValueError: naming the folder: not loadable, or weights missing, unexpected or of the wrong shape.
    """
    from transformers import AutoModel

    try:
        model, info = AutoModel.from_pretrained(  # mismatches are reported, then refused below unless partial
            folder, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except Exception as err:  # whatever a damaged or foreign folder makes transformers raise
        raise ValueError(f"text encoder {folder}: cannot load ({type(err).__name__}: {first_line(err)})") from None
    missing = sorted(info["missing_keys"])
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith(HF_HEADS))
    wrong = sorted(str(k if isinstance(k, str) else k[0]) for k in info.get("mismatched_keys", ()))
    _report(folder, f"{type(model).__name__}", missing, unexpected, wrong, partial)
    model.left_random = missing + wrong
    return model
