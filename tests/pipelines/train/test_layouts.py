import pytest
import torch

from data_prep.schema import MODALITIES
from pipelines.train.batches import collate, sample_part
from pipelines.train.layouts import apply_layout, question_in_clips
from pipelines.train.qa import QAModule
from tests.pipelines.samples import caption_sample, qa_sample


def rows(tree, node, modality):
    """The feature rows of ``modality`` under ``node``, in leaf order."""
    return sample_part(tree, node).features[modality]


@pytest.mark.parametrize("i", [0, 1, 2])  # 1, 2 and 3 clips
def test_question_in_clips_puts_a_copy_of_the_question_under_every_clip(i):
    sample = qa_sample(i)
    before = collate([sample])
    after = question_in_clips(before)
    h, old = after.hierarchy, before.hierarchy
    keys, old_keys = h.keyed_children(0), old.keyed_children(0)
    assert list(keys) == list(old_keys)  # video, question, answers: the same slots, in the same order
    question = old_keys["question"]
    q_rows, q_size = rows(before, question, "text"), int(old.leaf_end[question] - old.leaf_start[question])
    clips, old_clips = h.children(keys["video"]), old.children(old_keys["video"])
    assert len(clips) == len(old_clips) == 1 + i % 3
    for clip, old_clip in zip(clips, old_clips):
        frames, copy = h.children(clip)[:-1], h.children(clip)[-1]
        assert len(frames) == len(old.children(old_clip))
        assert h.kinds_of(torch.tensor([copy])) == old.kinds_of(torch.tensor([question]))
        assert int(h.domain[copy]) == int(old.domain[question]) and torch.equal(h.coord[copy], old.coord[question])
        assert torch.equal(rows(after, copy, "text"), q_rows)  # the question's tokens, in order
        assert torch.equal(rows(after, clip, "video"), rows(before, old_clip, "video"))  # frames untouched
        assert h.to_nested(0) is not None
    assert torch.equal(after.features["video"], before.features["video"])
    for key in old_keys:
        if key != "video":
            assert torch.equal(rows(after, keys[key], "text"), rows(before, old_keys[key], "text"))
    assert h.num_leaves == old.num_leaves + len(clips) * q_size
    assert int((after.leaf_modality == MODALITIES.index("text")).sum()) == len(after.features["text"])


def test_apply_layout_keeps_the_batch_and_refuses_trees_without_a_question():
    batch = collate([qa_sample(0), qa_sample(1, candidates=3), qa_sample(2)])
    laid = apply_layout(batch, "question_in_clips")
    assert laid.ids == batch.ids and laid.meta == batch.meta and laid.hierarchy.num_trees == 3
    for t in range(3):  # tree by tree, what the single-tree layout gives
        alone = question_in_clips(sample_part(batch, int(batch.hierarchy.tree_node_ptr[t])))
        mine = sample_part(laid, int(laid.hierarchy.tree_node_ptr[t]))
        assert torch.equal(mine.hierarchy.parent, alone.hierarchy.parent)
        assert all(torch.equal(mine.features[m], alone.features[m]) for m in alone.features)
    assert apply_layout(batch, "joint") is batch
    with pytest.raises(ValueError, match="needs 'video' and 'question'"):
        apply_layout(collate([caption_sample(0)]), "question_in_clips")
    with pytest.raises(ValueError, match="layout must be one of"):
        QAModule(dim=16, depth=1, heads=2, layout="sideways")
    with pytest.raises(ValueError, match="head must be one of"):
        QAModule(dim=16, depth=1, heads=2, head="guess")


def test_pointer_reads_the_clip_the_offsets_point_to():
    """With the anchor on clip 1 and all of the offset on +1, the read-out is clip 2's value."""
    torch.manual_seed(0)
    model = QAModule(dim=8, depth=1, heads=2, head="pointer", offsets=1)
    c = torch.randn(1, 3, 8)
    c[0, 1, 0] = 60.0  # clip 1's key stands out along e0 ...
    with torch.no_grad():
        model.key.weight.copy_(torch.eye(8)), model.key.bias.zero_()
        model.query.weight.zero_(), model.query.bias.zero_()
        model.query.bias[0] = 1.0  # ... which the question's query is
        model.offset.weight.zero_()
        model.offset.bias.copy_(torch.tensor([-1e4, -1e4, 0.0]))  # offsets -1, 0, +1: all on +1
        nothing, q = torch.zeros(1, 8), torch.zeros(1, 8)
        assert torch.allclose(model._point(q, c, torch.tensor([[5, 6, 7]])), model.value(c)[:, 2], atol=1e-4)
        # the anchor on the last clip: +1 points past it, nothing is read
        c[0, 1, 0], c[0, 2, 0] = 0.0, 60.0
        assert torch.allclose(model._point(q, c, torch.tensor([[5, 6, 7]])), nothing, atol=1e-4)
        # a padded clip (-1) takes no weight: the anchor on clip 1 of two, +1 again reads nothing
        c[0, 1, 0], c[0, 2, 0] = 60.0, 0.0
        assert torch.allclose(model._point(q, c, torch.tensor([[5, 6, -1]])), nothing, atol=1e-4)
