"""The self-attention modules of pretrained models, and how to divert each one's softmax attention.

An *attention site* is one self-attention module a model runs (one per transformer layer, in forward
order). Installing a site hands it an ``attend`` function,

    attend(q, k, v, key_valid, scale) -> out
        q, k: [B, H, L, D]; v: [B, H, L, Dv]; key_valid: [B, L] bool or None (no padding)
        out: [B, L, H, Dv]

that takes the place of ``softmax(scale q k^T) v``; everything around it (projections, norms, the
output projection) stays the model's own code and weights. Installing returns the function that
restores the module exactly (no parameter is touched, so the restored model is bit-identical).

Supported (one mechanism per framework, each the narrowest per-instance change that works):

- Hugging Face transformers 5.x BERT-family encoders (BERT, RoBERTa, ELECTRA, XLM-R, MiniLM ...):
  their ``*SelfAttention`` modules pick the attention function by name from
  ``self.config._attn_implementation`` through ``AttentionInterface``. We register one function there
  and give each replaced module a shallow copy of the config naming it; restoring puts back the shared
  config object. The attention mask the model built (sdpa bool, eager additive, or 2-D) is read back
  into key padding; anything that is not pure key padding (causal, biases) is refused.
- timm ``Attention`` (ViT blocks): the instance's ``forward`` is overridden with the same computation
  around an HSA core (qkv, q/k norms, scale norm, gate, proj as in timm).
- open_clip ``ResidualAttentionBlock.attn`` (an ``nn.MultiheadAttention``): the instance's
  ``forward`` is overridden (packed in-projection, out-projection, ``key_padding_mask``). Other
  ``nn.MultiheadAttention`` users are not diverted: ``nn.TransformerEncoderLayer``'s fast path, for one,
  bypasses the module's ``forward``.
"""

from __future__ import annotations

import copy
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionSite", "find_attention_sites", "key_padding_from_mask"]

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]
Restore = Callable[[], None]

#: The name HSA is registered under in transformers' AttentionInterface.
HF_ATTENTION_NAME = "mmhsa_hsa"
SUPPORTED = (
    "Hugging Face BERT-family encoder self-attention (transformers 5.x), timm Attention, "
    "nn.MultiheadAttention inside open_clip ResidualAttentionBlock"
)

# Replaced HF modules -> their attend function (weak: a dropped model leaves nothing behind).
_HF_ROUTES: weakref.WeakKeyDictionary[nn.Module, Attend] = weakref.WeakKeyDictionary()
# Every module currently diverted, whatever the framework (a second injection must not stack).
_DIVERTED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


@dataclass(frozen=True)
class AttentionSite:
    """One self-attention module of a model.

    Attributes:
        name: qualified module name in the model (for messages).
        module: the attention module.
        framework: "hf", "timm" or "open_clip".
    """

    name: str
    module: nn.Module
    framework: str

    def install(self, attend: Attend) -> Restore:
        """Divert the module's attention to ``attend``; return the function that undoes it."""
        if self.module in _DIVERTED:
            raise ValueError(f"{self.name}: attention is already replaced by HSA (restore the first injection)")
        undo = _INSTALLERS[self.framework](self, attend)
        _DIVERTED.add(self.module)

        def restore() -> None:
            undo()
            _DIVERTED.discard(self.module)

        return restore


def find_attention_sites(model: nn.Module) -> list[AttentionSite]:
    """The supported self-attention modules of ``model``, in forward (registration) order."""
    sites = []
    for name, module in model.named_modules():
        framework = _framework_of(module)
        if framework is not None:
            sites.append(AttentionSite(name or type(module).__name__, module, framework))
        if _is_clip_block(module):
            sites.append(AttentionSite(f"{name}.attn" if name else "attn", module.attn, "open_clip"))
    return sites


def _framework_of(module: nn.Module) -> str | None:
    if _is_hf_self_attention(module):
        return "hf"
    timm_attention = sys.modules.get("timm.layers.attention")
    if timm_attention is not None and type(module) is timm_attention.Attention:  # exact: subclasses differ
        return "timm"
    return None


def _is_hf_self_attention(module: nn.Module) -> bool:
    transformers = sys.modules.get("transformers")
    if transformers is None or not isinstance(getattr(module, "config", None), transformers.PretrainedConfig):
        return False
    name = type(module).__name__
    defined_in = sys.modules.get(type(module).__module__)
    # transformers 5.x attention modules dispatch through ALL_ATTENTION_FUNCTIONS by config name.
    return name.endswith("SelfAttention") and hasattr(defined_in, "ALL_ATTENTION_FUNCTIONS")


def _is_clip_block(module: nn.Module) -> bool:
    open_clip_transformer = sys.modules.get("open_clip.transformer")
    return (
        open_clip_transformer is not None
        and type(module) is open_clip_transformer.ResidualAttentionBlock
        and isinstance(module.attn, nn.MultiheadAttention)
        and not hasattr(module, "ln_1_kv")
    )


# ------------------------------------------------------------------ masks
def key_padding_from_mask(mask, batch: int, length: int, where: str) -> torch.Tensor | None:
    """Key validity ``[B, L]`` bool from an attention mask a model built, or None (no padding).

    Accepts None, a 2-D ``[B, L]`` keep-mask, or a 4-D ``[B, 1|H, L, L]`` mask (bool: True = attend;
    float: additive, 0 = attend, very negative = masked). Raises ``ValueError`` when the mask is not
    pure key padding (every real query must see exactly the real keys): HSA is bidirectional and has
    no additive biases.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"{where}: attention mask of type {type(mask).__name__} is not supported "
            "(use attn_implementation 'sdpa' or 'eager')"
        )
    if mask.dim() == 2:
        valid = mask.bool()
        return None if bool(valid.all()) else valid
    if mask.dim() != 4 or mask.shape[0] != batch or mask.shape[-1] != length:
        raise ValueError(
            f"{where}: attention mask of shape {list(mask.shape)} is not a padding mask for "
            f"{batch} sequences of {length} tokens"
        )
    if mask.dtype == torch.bool:
        allowed = mask
    else:
        allowed = mask > torch.finfo(mask.dtype).min / 2
        if bool((mask[allowed] != 0).any()):
            raise ValueError(f"{where}: the attention mask carries additive biases; HSA supports padding only")
    if allowed.shape[1] != 1 and not bool((allowed == allowed[:, :1]).all()):
        raise ValueError(f"{where}: the attention mask differs between heads; HSA supports padding only")
    rows = allowed[:, 0].expand(batch, length, length)
    valid = rows.any(1)
    # Real queries must see exactly the real keys (padded queries' rows do not matter).
    if bool(((rows != valid[:, None, :]) & valid[:, :, None]).any()):
        raise ValueError(
            f"{where}: the attention mask is not a padding mask (causal or custom masks are not "
            "supported by HSA, which is bidirectional)"
        )
    return None if bool(valid.all()) else valid


# ------------------------------------------------------------------ Hugging Face
def _hf_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers AttentionInterface function: q, k, v [B, H, L, D] -> ([B, L, H, Dv], no weights)."""
    attend = _HF_ROUTES.get(module)
    if attend is None:
        raise RuntimeError(f"{type(module).__name__} was routed to HSA but is not registered (restored twice?)")
    batch, _, length, _ = query.shape
    valid = key_padding_from_mask(attention_mask, batch, length, type(module).__name__)
    return attend(query, key, value, valid, query.shape[-1] ** -0.5 if scaling is None else scaling), None


def _install_hf(site: AttentionSite, attend: Attend) -> Restore:
    from transformers import AttentionInterface

    module = site.module
    if getattr(module, "is_causal", False) or getattr(module.config, "is_decoder", False):
        raise TypeError(
            f"{site.name}: causal (decoder) self-attention cannot be replaced by HSA, which is bidirectional"
        )
    if HF_ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(HF_ATTENTION_NAME, _hf_attention)
    shared = module.config
    own = copy.copy(shared)  # shallow: only the attention implementation name differs
    own._attn_implementation = HF_ATTENTION_NAME
    _HF_ROUTES[module] = attend
    module.config = own

    def restore() -> None:
        module.config = shared
        _HF_ROUTES.pop(module, None)

    return restore


# ------------------------------------------------------------------ forward overrides
def _override_forward(module: nn.Module, forward: Callable) -> Restore:
    """Shadow ``module.forward`` on this instance only; the restore puts back what was there."""
    missing = object()
    previous = module.__dict__.get("forward", missing)
    module.forward = forward

    def restore() -> None:
        if previous is missing:
            del module.forward
        else:
            module.forward = previous

    return restore


def _install_timm(site: AttentionSite, attend: Attend) -> Restore:
    m = site.module
    needed = ("qkv", "q_norm", "k_norm", "norm", "proj", "proj_drop", "num_heads", "head_dim", "scale")
    if not all(hasattr(m, a) for a in needed):
        raise TypeError(
            f"{site.name}: this timm Attention lacks {[a for a in needed if not hasattr(m, a)]} "
            "(unsupported timm version)"
        )

    def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """x: [B, L, C] -> [B, L, C_out], timm's Attention with HSA in place of softmax attention."""
        if attn_mask is not None or is_causal:
            raise ValueError(
                f"{site.name}: HSA replaces unmasked bidirectional attention; got "
                f"{'is_causal' if is_causal else 'attn_mask'}"
            )
        b, n, _ = x.shape
        gate = m.gate(x).sigmoid() if getattr(m, "gate", None) is not None else None
        q, k, v = m.qkv(x).reshape(b, n, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = m.q_norm(q), m.k_norm(k)
        x = m.norm(attend(q, k, v, None, m.scale).reshape(b, n, m.num_heads * m.head_dim))
        if gate is not None:
            x = x * gate
        return m.proj_drop(m.proj(x))

    return _override_forward(m, forward)


def _install_open_clip(site: AttentionSite, attend: Attend) -> Restore:
    m: nn.MultiheadAttention = site.module
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise TypeError(
            f"{site.name}: nn.MultiheadAttention with separate q/k/v dims, bias_k/bias_v or "
            "add_zero_attn is not supported"
        )
    heads = m.num_heads
    head_dim = m.embed_dim // heads

    def forward(
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        """query: [B, L, E] (batch_first) or [L, B, E] -> (same shape, None), HSA self-attention."""
        if key is not query or value is not query:
            raise ValueError(
                f"{site.name}: HSA replaces self-attention only (query, key and value must be the same tensor)"
            )
        if attn_mask is not None or is_causal:
            raise ValueError(
                f"{site.name}: HSA replaces unmasked bidirectional attention; got "
                f"{'is_causal' if is_causal else 'attn_mask'} (a causal text tower?)"
            )
        x = query if m.batch_first else query.transpose(0, 1)
        b, n, e = x.shape
        qkv = F.linear(x, m.in_proj_weight, m.in_proj_bias).view(b, n, 3, heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        valid = None
        if key_padding_mask is not None:  # True (bool) or -inf (float) marks padding
            pad = key_padding_mask if key_padding_mask.dtype == torch.bool else key_padding_mask < 0
            valid = None if not bool(pad.any()) else ~pad
        out = m.out_proj(attend(q, k, v, valid, head_dim**-0.5).reshape(b, n, e))
        return (out if m.batch_first else out.transpose(0, 1)), None

    return _override_forward(m, forward)


_INSTALLERS = {"hf": _install_hf, "timm": _install_timm, "open_clip": _install_open_clip}
