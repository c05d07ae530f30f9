import torch

from pipelines.train.batches import collate
from pipelines.train.probes import other_video_accuracy, swapped_videos, video_shape
from pipelines.train.qa import QAModule
from tests.pipelines.samples import qa_sample


def questions(n: int):
    """QA samples whose answer is written into their video only (every sample has the same texts), with the
    metadata a prepared question has."""
    out = []
    for i in range(n):
        s = qa_sample(i)
        s.meta |= {"video_id": f"v{i}", "candidates": [f"c{k}" for k in range(5)]}
        s.features["text"] = out[0].features["text"] if out else s.features["text"]
        out.append(s)
    return out


def test_swapped_videos_trade_features_between_videos_of_one_shape():
    samples = questions(9)  # 1, 2 or 3 clips: three shapes of three videos each
    pairs = swapped_videos(samples)
    assert len(pairs) == 9
    for own, other in pairs:
        assert other.hierarchy is own.hierarchy and torch.equal(other.features["text"], own.features["text"])
        donors = [s for s in samples if torch.equal(s.features["video"], other.features["video"])]
        assert len(donors) == 1 and donors[0].meta["video_id"] != own.meta["video_id"]
        assert video_shape(donors[0]) == video_shape(own)
    assert swapped_videos(samples[:1]) == []  # a video alone of its shape has no partner


def test_a_model_that_reads_the_video_falls_with_another_video():
    torch.manual_seed(0)
    samples = questions(12)
    model = QAModule(dim=32, depth=2, heads=2, dropout=0.0)
    batch = collate(samples)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        loss = torch.nn.functional.cross_entropy(model(batch), model.answers(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rows = other_video_accuracy(model, samples)
    overall = rows[0]
    assert overall["type"] == "all" and overall["questions"] == 12 and abs(overall["chance"] - 0.2) < 1e-9
    assert [r["type"] for r in rows[1:]] == ["direction", "next"]
    assert overall["accuracy"] == 1.0  # the answers it learnt to read ...
    assert overall["accuracy_other_video"] < 0.5  # ... are the partner's with its video
