import pytest
import torch

from pipelines.infer.checkpoints import load_model
from pipelines.infer.explain import attention_map


def test_explain_follows_the_models_layout(corpus, models):
    """A model that reads the question inside every clip is explained on that tree: the shares still cover
    exactly the video's patches (the question's copies among them are left out)."""
    video = corpus / "videos" / "video0002.mp4"
    model = load_model(str(models["qa"]), "qa")
    seen, encode = [], model.module.encode
    model.module.encode = lambda trees: seen.append(trees.hierarchy.num_leaves) or encode(trees)
    joint = attention_map(model, video, "the green circle moves down")
    model.module.layout = "question_in_clips"
    laid = attention_map(model, video, "the green circle moves down")
    clips, words = len(joint["clips"]), seen[0] - sum(torch.tensor(p).numel() for p in joint["patches"])
    assert seen[1] == seen[0] + clips * words  # the encoder saw the question once more in every clip
    assert sum(laid["clips"]) == pytest.approx(1.0, abs=1e-6)
    assert [torch.tensor(p).shape for p in laid["patches"]] == [torch.tensor(p).shape for p in joint["patches"]]
