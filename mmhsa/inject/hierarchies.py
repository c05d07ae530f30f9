"""Hierarchies over the tokens of a pretrained model's input, for zero-shot HSA.

A model's sequence is ``[special tokens] body [special tokens]`` (BERT: ``[CLS] ... [SEP]``; ViT:
class/register tokens then patches). The builders here put every special token as its **own leaf,
a child of the root**, next to the top-level nodes of the body's tree. Why: a special token is no part
of any window or sentence, yet pretrained heads use [CLS]/[SEP] as global "sinks"; as root children
they stay reachable from every node with the coarsest (one block per top-level node) weights, and they
attend to the whole text through those same blocks.

- :func:`window_hierarchy`: fixed hopping windows (the paper's zero-shot hierarchy, section 5.3).
- :func:`text_hierarchy`: the text's own structure, sections -> sentences -> word pieces.
- :func:`grid_hierarchy`: 2-D windows of ViT patches; leaves are not in token order, so it returns a
  :class:`TokenHierarchy` that carries the token behind each leaf.
- :func:`flat_hierarchy`: one family of all tokens, where HSA (include_self) equals softmax attention.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..hierarchy import Hierarchy

__all__ = ["TokenHierarchy", "flat_hierarchy", "grid_hierarchy", "text_hierarchy", "window_hierarchy"]


@dataclass(frozen=True)
class TokenHierarchy:
    """A hierarchy over a sequence's tokens whose leaves need not be in token order.

    Attributes:
        hierarchy: one tree; leaves in its depth-first order.
        order: [N] long, the token (position among the sequence's real tokens) behind each leaf;
            None when leaf i is token i.
    """

    hierarchy: Hierarchy
    order: torch.Tensor | None = None

    @property
    def num_leaves(self) -> int:
        return self.hierarchy.num_leaves

    @classmethod
    def of(cls, tree: Hierarchy | TokenHierarchy) -> TokenHierarchy:
        return tree if isinstance(tree, TokenHierarchy) else cls(tree)


def flat_hierarchy(num_tokens: int) -> Hierarchy:
    """The root over all ``num_tokens`` tokens: HSA with include_self is then exactly softmax attention."""
    return Hierarchy.windows(num_tokens, ())


def window_hierarchy(
    num_tokens: int, branching: Sequence[int] = (2, 4, 8, 16), *, prefix: int = 1, suffix: int = 1
) -> Hierarchy:
    """Hopping windows over the body, special tokens as root children.

    Args:
        num_tokens: the sequence's real tokens, specials included.
        branching: window sizes bottom-up (the paper's (2, 4, 8, 16): pairs, then 4 pairs, ...); see
            :meth:`Hierarchy.windows`. ``()`` gives the flat hierarchy.
        prefix, suffix: special tokens before and after the body ([CLS] and [SEP]: 1 and 1); 0 puts
            every token in the windows.
    """
    if prefix < 0 or suffix < 0:
        raise ValueError(f"window_hierarchy: prefix and suffix must be >= 0, got {prefix} and {suffix}")
    body = num_tokens - prefix - suffix
    if body < 1:
        return flat_hierarchy(num_tokens)
    tree = _shift(Hierarchy.windows(body, branching).to_nested(), prefix)
    top = tree if isinstance(tree, list) else [tree]
    return _splice(list(range(prefix)) + top + list(range(prefix + body, num_tokens)))


def text_hierarchy(
    text: str, offsets: Sequence[Sequence[int]] | torch.Tensor, sections: Sequence[Sequence[str]]
) -> Hierarchy:
    """Sections -> sentences -> word pieces of one tokenised text; special tokens as root children.

    Word pieces are mapped to sentences through their character offsets: a piece belongs to the last
    sentence that starts at or before it. A text with one section drops the section level (root ->
    sentences); sentences that got no pieces (cut off by truncation) are left out.

    Args:
        text: the text exactly as tokenised.
        offsets: [T, 2] character span of each of the sample's tokens (a fast tokenizer's
            ``offset_mapping``, padding removed); special tokens have empty spans (start == end).
        sections: the sentences of each section in text order, e.g.
            ``[[s.text for s in sec.sentences] for sec in data_prep.text.sections_from_paragraphs(text)]``.
            Sentences may have their whitespace normalised; they are located in ``text`` in order.

    Raises:
        ValueError: a sentence that cannot be found in the text (after the previous one).
    """
    starts, section_of = [], []
    cursor = 0
    for si, sentences in enumerate(sections):
        for sentence in sentences:
            words = sentence.split()
            if not words:
                continue
            found = re.compile(r"\s+".join(map(re.escape, words))).search(text, cursor)
            if found is None:
                raise ValueError(
                    f"text_hierarchy: sentence {len(starts)} ({sentence[:40]!r}) not found in the text "
                    f"after character {cursor}"
                )
            starts.append(found.start())
            section_of.append(si)
            cursor = found.end()
    if not starts:
        raise ValueError("text_hierarchy: no sentences given")
    spans = offsets.tolist() if isinstance(offsets, torch.Tensor) else [list(o) for o in offsets]
    placed = []  # (section, sentence) per token, None for a special token
    for start, end in spans:
        if start == end:
            placed.append(None)
        else:
            sentence = max(bisect.bisect_right(starts, start) - 1, 0)
            placed.append((section_of[sentence], sentence))
    by_section = len({p[0] for p in placed if p is not None}) > 1
    root: list = []
    section_node = sentence_node = None
    last = None
    for token, where in enumerate(placed):
        if where is None:
            root.append(token)
            section_node = sentence_node = last = None
            continue
        if by_section and (section_node is None or where[0] != last[0]):
            section_node, sentence_node = [], None
            root.append(section_node)
        if sentence_node is None or where != last:
            sentence_node = []
            (section_node if by_section else root).append(sentence_node)
        sentence_node.append(token)
        last = where
    return _splice(root)


def grid_hierarchy(
    grid: tuple[int, int], windows: Sequence[tuple[int, int]] = ((2, 2), (2, 2), (2, 2)), *, prefix: int = 1
) -> TokenHierarchy:
    """2-D hopping windows over a ViT's patch grid, prefix (class/register) tokens as root children.

    Tokens are ``prefix`` tokens then the ``rows x cols`` patches row-major (timm, open_clip). Level by
    level from the bottom, ``(a, b)`` windows group a x b neighbouring nodes (partial at the edges);
    the root joins the prefix tokens and whatever remains.

    Returns:
        a :class:`TokenHierarchy` (a window's patches are not consecutive tokens).
    """
    rows, cols = grid
    if rows < 1 or cols < 1 or prefix < 0:
        raise ValueError(f"grid_hierarchy: grid must be positive and prefix >= 0, got {grid} and {prefix}")
    if any(a < 1 or b < 1 or a * b < 2 for a, b in windows):
        raise ValueError(f"grid_hierarchy: every window must cover 2+ nodes, got {list(windows)}")
    nodes: list[list] = [[prefix + r * cols + c for c in range(cols)] for r in range(rows)]
    for a, b in windows:
        if len(nodes) * len(nodes[0]) == 1:
            break
        nodes = [
            [
                [nodes[i][j] for i in range(r, min(r + a, len(nodes))) for j in range(c, min(c + b, len(nodes[0])))]
                for c in range(0, len(nodes[0]), b)
            ]
            for r in range(0, len(nodes), a)
        ]
    top = [node for row in nodes for node in row]
    if len(top) == 1 and isinstance(top[0], list):
        top = top[0]
    tree = list(range(prefix)) + top
    order = _leaves(tree)
    renumbered = _renumber(tree, {token: leaf for leaf, token in enumerate(order)})
    identity = order == list(range(len(order)))
    return TokenHierarchy(_splice(renumbered), None if identity else torch.tensor(order))


# ------------------------------------------------------------------ nested lists
def _splice(children: list) -> Hierarchy:
    """A root over ``children`` (nested lists of leaf ids in depth-first order); a lone leaf is its own tree."""
    if len(children) == 1 and not isinstance(children[0], list):
        return Hierarchy.from_nested(children[0])
    return Hierarchy.from_nested(children)


def _shift(tree, by: int):
    return tree + by if isinstance(tree, int) else [_shift(child, by) for child in tree]


def _leaves(tree) -> list[int]:
    return [tree] if isinstance(tree, int) else [leaf for child in tree for leaf in _leaves(child)]


def _renumber(tree, new: dict[int, int]):
    return new[tree] if isinstance(tree, int) else [_renumber(child, new) for child in tree]
