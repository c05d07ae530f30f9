import torch

from data_prep.assemble import ClipLeaves, TextLeaves, assemble
from data_prep.shards import ShardWriter
from mmhsa import hsa
from pipelines.train.batches import collate
from pipelines.train.data import ShardDataModule, SizeBucketSampler


def make_sample(i: int, split: str = "train"):
    g = torch.Generator().manual_seed(i)
    clips = [
        ClipLeaves(c, c + 1.0, [c, c + 0.5], torch.randn(2, 2, 2, 8, generator=g).half()) for c in range(1 + i % 3)
    ]
    texts = {"question": TextLeaves([[torch.randn(3 + i % 4, 6, generator=g).half()]])}
    return assemble(f"s{i}", video=clips, texts=texts, meta={"split": split})


def test_collate_packs_a_forest():
    samples = [make_sample(i) for i in range(3)]
    batch = collate(samples)
    assert batch.ids == ["s0", "s1", "s2"] and batch.hierarchy.num_trees == 3
    assert batch.features["video"].shape[0] == sum(s.features["video"].shape[0] for s in samples)
    # each modality's rows follow the forest's leaf order
    video_leaves = torch.nonzero(batch.leaf_modality == 0).flatten()
    assert len(video_leaves) == batch.features["video"].shape[0]
    assert torch.equal(batch.features["video"][-8:], samples[2].features["video"][-8:])
    n = batch.hierarchy.num_leaves
    out = hsa(torch.randn(n, 2, 4), torch.randn(n, 2, 4), torch.randn(n, 2, 4), batch.hierarchy)
    assert out.shape == (n, 2, 4)


def test_size_bucket_sampler():
    sizes = [int(x) for x in torch.randint(1, 1000, (103,), generator=torch.Generator().manual_seed(0))]
    sampler = SizeBucketSampler(sizes, batch_size=8, seed=3, window=4)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(103))
    assert first == list(SizeBucketSampler(sizes, batch_size=8, seed=3, window=4))  # deterministic
    sampler.set_epoch(1)
    assert list(sampler) != first  # but a new order every epoch
    # batches hold similar sizes: spread inside a batch far below the overall spread
    spread = sum(max(sizes[i] for i in b) - min(sizes[i] for i in b) for b in first) / len(first)
    assert spread < 0.3 * (max(sizes) - min(sizes))
    plain = list(SizeBucketSampler(sizes, batch_size=8, shuffle=False, drop_last=True))
    assert len(plain) == 12 and plain[0] == list(range(8))


def test_datamodule_splits(tmp_path):
    with ShardWriter(tmp_path, {"t": 1}, shard_size=4) as w:
        for i in range(10):
            w.add(make_sample(i, "train" if i < 7 else "val"))
    dm = ShardDataModule(str(tmp_path), batch_size=3)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert sum(len(b) for b in train) == 7 and {m["split"] for b in train for m in b.meta} == {"train"}
    assert sum(len(b) for b in dm.val_dataloader()) == 3
    try:
        dm.test_dataloader()
    except ValueError as err:
        assert "no samples in split 'test'" in str(err)
    else:
        raise AssertionError("a missing split must be an error")
