import json

import pytest
import torch

from data_prep.assemble import ClipLeaves, Limits, TextLeaves, assemble, even_subsample
from data_prep.shards import ShardDataset, ShardWriter, read_failures
from mmhsa import DOMAINS, Hierarchy, hsa


def clip(start, frames, grid=(2, 2), dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    times = [start + 0.25 * i for i in range(frames)]
    return ClipLeaves(start, start + 0.25 * frames, times, torch.randn(frames, *grid, dim, generator=g).half())


def text(*sections, dim=6):
    return TextLeaves([[torch.randn(n, dim).half() for n in section] for section in sections])


def sample(**kw):
    video = [clip(0.0, 2), clip(1.0, 3, seed=1), clip(2.5, 1, seed=2)]
    texts = {"captions": text([3, 2], [4]), "question": text([5])}
    return assemble("s1", video=video, texts=texts, **kw)


def test_cross_modal_hierarchy():
    s = sample()
    h = s.hierarchy
    patches, tokens = (2 + 3 + 1) * 4, 3 + 2 + 4 + 5
    assert h.num_trees == 1 and h.num_leaves == patches + tokens
    assert s.features["video"].shape == (patches, 8) and s.features["text"].shape == (tokens, 6)
    assert s.leaf_modality.tolist() == [0] * patches + [1] * tokens
    kinds = h.kinds_of()
    assert kinds[0] == "sample" and kinds[1] == "video"
    assert sum(k == "clip" for k in kinds) == 3 and sum(k == "frame" for k in kinds) == 6
    assert sum(k == "sentence" for k in kinds) == 4 and sum(k == "section" for k in kinds) == 3
    # the root's children are named keys
    roots_children = torch.nonzero(h.parent == 0).flatten()
    assert [h.key_names[int(c)] for c in h.coord[roots_children, 0]] == ["video", "captions", "question"]
    assert set(h.domain[roots_children].tolist()) == {DOMAINS.index("key")}
    # clip start times, frame timestamps and the patch grid are the positions
    clip_nodes = torch.tensor([i for i, k in enumerate(kinds) if k == "clip"])
    assert h.coord[clip_nodes, 0].tolist() == [0.0, 1.0, 2.5]
    frames = torch.tensor([i for i, k in enumerate(kinds) if k == "frame"])
    assert h.coord[frames, 0].tolist() == [0.0, 0.25, 1.0, 1.25, 1.5, 2.5]
    assert h.coord[h.leaf_node[:4]].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    # leaf features follow the leaf order: first frame's patches first
    torch.testing.assert_close(s.features["video"][:4], clip(0.0, 2).patches[0].reshape(4, 8))
    out = hsa(torch.randn(h.num_leaves, 2, 4), torch.randn(h.num_leaves, 2, 4), torch.randn(h.num_leaves, 2, 4), h)
    assert out.shape == (h.num_leaves, 2, 4) and torch.isfinite(out).all()


def test_limits_subsample_and_count():
    s = sample(limits=Limits(max_clips=2, max_frames=2, max_tokens=3, max_sentences=1))
    kinds = s.hierarchy.kinds_of()
    assert sum(k == "clip" for k in kinds) == 2
    # clips 0 and 2 kept (first and last); clip 0 has 2 frames, clip 2 has 1
    assert s.dropped["clips"] == 1 and s.dropped["frames"] == 0
    assert s.dropped["sentences"] == 1  # of the captions' first section's 2 sentences, the middle one stays
    assert s.dropped["tokens"] == (4 - 3) + (5 - 3)  # kept sentences of 2, 4 -> 3 and 5 -> 3 tokens
    assert s.features["text"].shape[0] == 2 + 3 + 3


def test_even_subsample():
    assert even_subsample(3, 5) == [0, 1, 2]
    assert even_subsample(10, 3) == [0, 4, 9] or even_subsample(10, 3) == [0, 5, 9]
    assert even_subsample(7, 1) == [3]
    assert len(even_subsample(1000, 16)) == 16


def test_empty_parts_are_skipped_or_refused():
    s = assemble("q", texts={"question": text([0, 4], [], [0])})
    assert s.hierarchy.kinds_of().count("section") == 1 and s.hierarchy.num_leaves == 4
    with pytest.raises(ValueError, match="sample 'x': neither video clips nor texts"):
        assemble("x")
    with pytest.raises(ValueError, match="sample 'x': text 'question' has no tokens"):
        assemble("x", texts={"question": text([0])})
    bad = clip(0.0, 2)
    bad.frame_times = [0.0]
    with pytest.raises(ValueError, match="sample 'x': clip 0: patches must be"):
        assemble("x", video=[bad])


def test_samples_batch_into_a_forest():
    a = sample()
    b = assemble("s2", texts={"question": text([2]), "answer_0": text([1])})
    forest = Hierarchy.batch([a.hierarchy, b.hierarchy])
    second_root_children = torch.nonzero(forest.parent == int(forest.tree_node_ptr[1])).flatten()
    assert [forest.key_names[int(c)] for c in forest.coord[second_root_children, 0]] == ["question", "answer_0"]


def make_samples(n):
    return [assemble(f"v{i}", video=[clip(0.0, 2, seed=i)], texts={"captions": text([i + 1])}) for i in range(n)]


def test_shards_round_trip_resume_and_failures(tmp_path):
    config = {"corpus": "test", "limits": [16, 8]}
    samples = make_samples(5)
    with ShardWriter(tmp_path, config, encoders={"video": "timm:x"}, shard_size=2) as w:
        for s in samples[:3]:
            w.add(s)
        w.fail("broken.mp4", "videos/broken.mp4", "decode", "truncated at frame 7")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == 3 and manifest["counts"]["shards"] == 2
    assert manifest["counts"]["failures"] == 1 and manifest["encoders"] == {"video": "timm:x"}
    assert read_failures(tmp_path)[0]["error"] == "truncated at frame 7"
    # a second run with the same config skips what is done and retries the failure
    w = ShardWriter(tmp_path, config, shard_size=2)
    assert [w.is_done(s.id) for s in samples] == [True, True, True, False, False]
    with pytest.raises(ValueError, match="already written"):
        w.add(samples[0])
    for s in samples[3:]:
        w.add(s)
    w.add(assemble("broken.mp4", texts={"q": text([1])}))
    w.close()
    assert read_failures(tmp_path) == []
    ds = ShardDataset(tmp_path)
    assert len(ds) == 6 and ds.ids[:5] == [s.id for s in samples]
    for s, back in zip(samples, ds):
        assert back.id == s.id and torch.equal(back.hierarchy.parent, s.hierarchy.parent)
        assert back.hierarchy.kinds_of() == s.hierarchy.kinds_of() and back.hierarchy.key_names == s.hierarchy.key_names
        assert torch.equal(back.features["video"], s.features["video"])
        assert torch.equal(back.leaf_modality, s.leaf_modality)
    with pytest.raises(ValueError, match="config"):
        ShardWriter(tmp_path, {"corpus": "other"})


def test_corrupt_shard_is_named(tmp_path):
    with ShardWriter(tmp_path, {}, shard_size=10) as w:
        for s in make_samples(2):
            w.add(s)
    shard = tmp_path / "shard-00000.pt"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="shard-00000.pt: checksum"):
        ShardDataset(tmp_path)[0]


def test_killed_run_keeps_complete_shards(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, {}, shard_size=2) as w:
            for s in make_samples(3):
                w.add(s)
            raise RuntimeError("killed")
    assert len(ShardDataset(tmp_path)) == 3  # flushed on the way out
    assert not list(tmp_path.glob(".*tmp*"))
