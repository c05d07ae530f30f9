"""Zero-shot HSA inside pretrained transformers: the real MiniLM-L6, tiny random timm and open_clip ViTs."""

import copy
import sys

import pytest
import torch
from torch import nn

from data_prep.text import sections_from_paragraphs
from mmhsa import Hierarchy, hsa
from mmhsa.inject import (
    TokenHierarchy,
    attention_flops,
    flat_hierarchy,
    grid_hierarchy,
    hsa_attention,
    text_hierarchy,
    window_hierarchy,
)
from mmhsa.inject.sites import key_padding_from_mask

TEXTS = [
    "The cat sat on the mat. It was happy there.\n\nLater it left the room! Nobody knows why.",
    "Short text.",
    "Rain is expected in Lisbon on Monday. Farmers hope it refills the reservoirs before summer.",
]


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel, AutoTokenizer

    from mmhsa.encoders.text import minilm_path

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def minilm64(minilm):
    return copy.deepcopy(minilm[0]).double(), minilm[1]


def _hidden(model, tokenizer, texts):
    """Last hidden states [B, L, 384] and the attention mask [B, L] bool."""
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).last_hidden_state, enc["attention_mask"].bool()


def _sentence_trees(tokenizer, texts):
    trees = []
    for text in texts:
        offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        sections = [[s.text for s in sec.sentences] for sec in sections_from_paragraphs(text)]
        trees.append(text_hierarchy(text, offsets, sections))
    return trees


# ------------------------------------------------------------------ Hugging Face MiniLM
def test_flat_hierarchy_is_the_models_own_attention(minilm, minilm64):
    """One flat family per text: every layer's HSA equals its softmax, so the outputs do too."""
    model, tokenizer = minilm64
    original, valid = _hidden(model, tokenizer, TEXTS)
    with hsa_attention(model, range(6), flat_hierarchy) as injection:
        assert injection.names[0] == "encoder.layer.0.attention.self"
        replaced, _ = _hidden(model, tokenizer, TEXTS)
    torch.testing.assert_close(replaced[valid], original[valid], rtol=0, atol=1e-12)
    model, tokenizer = minilm  # fp32, sdpa: to float rounding
    original, valid = _hidden(model, tokenizer, TEXTS)
    with hsa_attention(model, [-2, -1], flat_hierarchy):
        replaced, _ = _hidden(model, tokenizer, TEXTS)
    torch.testing.assert_close(replaced[valid], original[valid], rtol=0, atol=1e-5)


def test_restore_is_bit_identical(minilm):
    model, tokenizer = minilm
    shared = model.config
    original, _ = _hidden(model, tokenizer, TEXTS)
    with hsa_attention(model, [-2, -1], window_hierarchy) as injection:
        changed, valid = _hidden(model, tokenizer, TEXTS)
        assert model.encoder.layer[5].attention.self.config is not shared
    assert not injection.active
    assert all(layer.attention.self.config is shared for layer in model.encoder.layer)
    assert torch.isfinite(changed).all() and not torch.allclose(changed[valid], original[valid], atol=1e-3)
    assert torch.equal(_hidden(model, tokenizer, TEXTS)[0], original)
    injection.restore()  # idempotent


@pytest.mark.parametrize("source", ["windows", "sentences"])
def test_padding_and_batching_do_not_change_a_texts_outputs(minilm64, source):
    """A padded batch gives each text exactly what it gets alone; padded positions output zeros."""
    model, tokenizer = minilm64
    trees = _sentence_trees(tokenizer, TEXTS)
    batch_source = (lambda n: window_hierarchy(n, (2, 4))) if source == "windows" else trees
    with hsa_attention(model, [-3, -1], batch_source) as injection:
        batch, valid = _hidden(model, tokenizer, TEXTS)
        for i, text in enumerate(TEXTS):
            if source == "sentences":
                injection.hierarchy = [trees[i]]
            alone, _ = _hidden(model, tokenizer, [text])
            torch.testing.assert_close(batch[i, valid[i]], alone[0], rtol=0, atol=1e-12)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    self_attention = model.encoder.layer[-1].attention.self
    caught = {}

    def catch(module, args, out):
        caught["out"] = out[0]

    hook = self_attention.register_forward_hook(catch)
    with hsa_attention(model, [-1], window_hierarchy), torch.no_grad():
        model(**enc)
    hook.remove()
    assert (caught["out"][~enc["attention_mask"].bool()] == 0).all()


def test_eager_masks_work_like_sdpa_masks(minilm64):
    model, tokenizer = minilm64
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with hsa_attention(model, [-1], window_hierarchy), hsa_attention(eager, [-1], window_hierarchy):
        a, valid = _hidden(model, tokenizer, TEXTS)
        b, _ = _hidden(eager, tokenizer, TEXTS)
    torch.testing.assert_close(a[valid], b[valid], rtol=0, atol=1e-12)


def test_key_padding_from_mask():
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    as_bool = valid[:, None, None, :].expand(2, 1, 4, 4)
    additive = torch.zeros(2, 1, 4, 4).masked_fill(~as_bool, torch.finfo(torch.float32).min)
    assert torch.equal(key_padding_from_mask(as_bool, 2, 4, "x"), valid)
    assert torch.equal(key_padding_from_mask(additive, 2, 4, "x"), valid)
    assert key_padding_from_mask(torch.ones(2, 4), 2, 4, "x") is None
    causal = torch.ones(4, 4).tril().bool().expand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="not a padding mask"):
        key_padding_from_mask(causal, 2, 4, "layer 3")
    with pytest.raises(ValueError, match="additive biases"):
        key_padding_from_mask(additive + 0.5, 2, 4, "layer 3")


# ------------------------------------------------------------------ hierarchies
def test_window_hierarchy_puts_special_tokens_at_the_root():
    assert window_hierarchy(10, (2, 4)).to_nested() == [0, [1, 2], [3, 4], [5, 6], [7, 8], 9]
    assert window_hierarchy(10, (2, 4), prefix=0, suffix=0).to_nested() == [[[0, 1], [2, 3], [4, 5], [6, 7]], [[8, 9]]]
    assert window_hierarchy(5, ()).to_nested() == [0, 1, 2, 3, 4] == flat_hierarchy(5).to_nested()
    assert window_hierarchy(3).to_nested() == [0, 1, 2] and window_hierarchy(2).to_nested() == [0, 1]
    assert window_hierarchy(1).num_leaves == 1


def test_text_hierarchy_maps_word_pieces_to_sentences(minilm):
    tokenizer = minilm[1]
    text = "Dr. Smith arrived. It rained!\n\nThen  the sun\ncame out."
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    sections = [[s.text for s in sec.sentences] for sec in sections_from_paragraphs(text)]
    tree = text_hierarchy(text, offsets, sections)
    words = [
        [[pieces[i] for i in sentence] for sentence in section] if isinstance(section, list) else pieces[section]
        for section in tree.to_nested()
    ]
    assert words == [
        "[CLS]",
        [["dr", ".", "smith", "arrived", "."], ["it", "rained", "!"]],
        [["then", "the", "sun", "came", "out", "."]],
        "[SEP]",
    ]
    one = text_hierarchy(
        "A b. C d.", tokenizer("A b. C d.", return_offsets_mapping=True)["offset_mapping"], [["A b.", "C d."]]
    )
    assert one.to_nested() == [0, [1, 2, 3], [4, 5, 6], 7]  # one section: root -> sentences
    with pytest.raises(ValueError, match="not found"):
        text_hierarchy(text, offsets, [["Something else entirely."]])


def test_grid_hierarchy_orders_leaves_by_window():
    tree = grid_hierarchy((3, 3), ((2, 2),), prefix=1)
    assert tree.order.tolist() == [0, 1, 2, 4, 5, 3, 6, 7, 8, 9]
    assert tree.hierarchy.to_nested() == [0, [1, 2, 3, 4], [5, 6], [7, 8], [9]]
    assert grid_hierarchy((4, 4), ((2, 2), (2, 2))).hierarchy.num_leaves == 17


def test_attention_flops_formula():
    n, heads, d = 6, 12, 32
    flat = attention_flops(flat_hierarchy(n), heads, d)
    assert flat.softmax == 2 * heads * n * n * 2 * d
    edges = n  # a root over n leaves
    assert flat.hsa == 2 * heads * (n * n * 2 * d + edges * 3 * d + edges * d + n * 2 * d)
    tree = window_hierarchy(512, (2, 4, 8, 16))  # 510 body tokens: 255 pairs, 64 fours, 8 eights; root: [CLS], 8, [SEP]
    families = 255 * 4 + 63 * 16 + 9 + 8 * 64 + 100
    nodes = 1 + 2 + 510 + 255 + 64 + 8
    expected = families * 2 * d + (nodes - 1) * 4 * d + 512 * 2 * d
    cost = attention_flops(tree, heads, d)
    assert cost.hsa == 2 * heads * expected and cost.softmax == 2 * heads * 512**2 * 2 * d
    assert cost.saved > 0.95
    forest = attention_flops(Hierarchy.batch([tree, tree]), heads, d)
    assert forest.hsa == 2 * cost.hsa and forest.softmax == 2 * cost.softmax


# ------------------------------------------------------------------ timm and open_clip ViTs
@pytest.fixture(scope="module")
def tiny_vits():
    import open_clip.transformer
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    timm_vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    clip_vit = open_clip.transformer.VisionTransformer(
        image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=16
    )
    images = torch.randn(3, 3, 32, 32)
    return {"timm": timm_vit.double().eval(), "open_clip": clip_vit.double().eval()}, images.double()


@pytest.mark.parametrize("framework", ["timm", "open_clip"])
def test_vit_injection(tiny_vits, framework):
    """Flat: identical outputs; 2-D windows: different but finite; restore: bit-identical."""
    models, images = tiny_vits
    model = models[framework]
    with torch.no_grad():
        original = model(images)
        with hsa_attention(model, [0, 1], flat_hierarchy) as injection:
            assert len(injection.names) == 2
            flat = model(images)
        tree = grid_hierarchy((4, 4), ((2, 2),))
        with hsa_attention(model, [-1], lambda n: tree):
            windows = model(images)
        restored = model(images)
    torch.testing.assert_close(flat, original, rtol=0, atol=1e-12)
    assert torch.isfinite(windows).all() and not torch.allclose(windows, original, atol=1e-4)
    assert torch.equal(restored, original)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_token_order_of_a_grid_hierarchy_reaches_the_operator(tiny_vits):
    """A timm block's attention under a permuted (2-D window) hierarchy is HSA over the permuted tokens."""
    models, images = tiny_vits
    attn = models["timm"].blocks[1].attn
    x = torch.randn(2, 17, 32, dtype=torch.float64)
    tree = grid_hierarchy((4, 4), ((2, 2), (2, 2)))
    with hsa_attention(models["timm"], [1], [tree, tree]), torch.no_grad():
        out = attn(x)
    with torch.no_grad():
        q, k, v = attn.qkv(x).view(2, 17, 3, 2, 16).unbind(2)  # [B, L, H, D]
        leaves = [t[:, tree.order].reshape(34, 2, 16) for t in (q, k, v)]
        mixed = hsa(*leaves, Hierarchy.batch([tree.hierarchy] * 2), include_self=True, backend="reference")
        expected = torch.empty_like(q)
        expected[:, tree.order] = mixed.view(2, 17, 2, 16)
        expected = attn.proj(expected.reshape(2, 17, 32))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_open_clip_key_padding_mask(tiny_vits):
    attn = tiny_vits[0]["open_clip"].transformer.resblocks[0].attn
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    with hsa_attention(tiny_vits[0]["open_clip"], [0], lambda n: window_hierarchy(n, (2,))), torch.no_grad():
        both = attn(x, x, x, key_padding_mask=pad)[0]
        short = x[1:, :4]
        alone = attn(short, short, short)[0]
    torch.testing.assert_close(both[1, :4], alone[0], rtol=0, atol=1e-12)


# ------------------------------------------------------------------ bad inputs
def test_bad_layers_and_unsupported_models(minilm, tiny_vits):
    model, tokenizer = minilm
    with pytest.raises(ValueError, match=r"index 6 is out of range .* 6 attention layers \(valid: -6..5\)"):
        hsa_attention(model, [6], window_hierarchy)
    with pytest.raises(ValueError, match="twice"):
        hsa_attention(model, [5, -1], window_hierarchy)
    with pytest.raises(TypeError, match="no supported self-attention"):
        hsa_attention(nn.TransformerEncoderLayer(8, 2, batch_first=True), [0], window_hierarchy)
    with hsa_attention(model, [-1], window_hierarchy):
        with pytest.raises(ValueError, match="already replaced"):
            hsa_attention(model, [4, 5], window_hierarchy)
        assert model.encoder.layer[4].attention.self.config is model.config  # the failed injection undid layer 4
    from transformers import BertConfig, BertModel

    decoder = BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, is_decoder=True)
    )
    with pytest.raises(TypeError, match="causal"):
        hsa_attention(decoder, [0], window_hierarchy)


def test_hierarchy_that_does_not_fit_the_sequence(minilm):
    model, tokenizer = minilm
    enc = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    lengths = enc["attention_mask"].sum(1).tolist()
    wrong = [window_hierarchy(lengths[0]), window_hierarchy(lengths[1] + 2)]
    with hsa_attention(model, [-2, -1], wrong) as injection, torch.no_grad():
        with pytest.raises(
            ValueError,
            match=rf"layer 4 \(encoder.layer.4.attention.self\), sample 1: the hierarchy "
            rf"has {lengths[1] + 2} leaves but the sequence has {lengths[1]} real",
        ):
            model(**enc)
        injection.hierarchy = wrong[:1]
        with pytest.raises(ValueError, match="1 hierarchies given for a batch of 2"):
            model(**enc)
        injection.hierarchy = [TokenHierarchy(w) for w in wrong[:1]] + [window_hierarchy(lengths[1])]
        assert torch.isfinite(model(**enc).last_hidden_state).all()


def test_causal_text_tower_is_refused_at_forward():
    import open_clip.transformer

    text = open_clip.transformer.TextTransformer(
        context_length=8, vocab_size=50, width=16, heads=2, layers=1, output_dim=8
    )
    with hsa_attention(text, [0], flat_hierarchy), pytest.raises(ValueError, match="causal text tower"):
        text(torch.randint(0, 50, (2, 8)))


# ------------------------------------------------------------------ the benchmark
def test_bench_inject_smoke(tmp_path, monkeypatch):
    """`make bench-inject ARGS=--quick` on three short texts: the table's numbers land in the JSON."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_inject.py"
    spec = importlib.util.spec_from_file_location("bench_inject", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_inject", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    result = bench.main(["--quick", "--texts", "3", "--max-tokens", "200", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "fidelity_vs_flops.png").exists()
    assert [r["hierarchy"] for r in saved["text"]] == ["windows", "sentences"]
    for row in saved["text"]:
        assert row["layers"] == [4, 5] and 0.5 < row["cos_mean"] <= 1 and 0.8 < row["saved"] < 1
    assert (
        saved["meta"]["texts"] == 3 and 128 <= saved["meta"]["tokens"]["min"] <= saved["meta"]["tokens"]["max"] <= 200
    )
    assert saved == json.loads(json.dumps(result))
