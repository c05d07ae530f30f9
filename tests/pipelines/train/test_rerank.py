"""The residual re-ranker (``a * prior + delta``) on tiny random samples: the dual encoder's order before any
training, a learnt change of it after a few steps, old checkpoints refused."""

import math
from types import SimpleNamespace

import pytest
import torch

from pipelines.train.batches import retrieval_collate
from pipelines.train.metrics import retrieval_ranks
from pipelines.train.rerank import RerankModule, _tree
from pipelines.train.retrieval import RetrievalModule
from tests.pipelines.samples import caption_sample

SIZES = dict(dim=32, depth=1, heads=2, pos_dim=4, dropout=0.0)


def save(module, path):
    """A checkpoint as Lightning's holds it for loading (weights, hyper-parameters, class)."""
    cls = type(module)
    state = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save({**state, "mmhsa_class": f"{cls.__module__}.{cls.__qualname__}"}, path)
    return path


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    torch.manual_seed(0)
    module = RetrievalModule(embed_dim=16, temperature=0.05, **SIZES)
    return save(module, tmp_path_factory.mktemp("dual") / "retrieval.ckpt")


def split(batch):
    videos = [_tree(batch.videos, i) for i in range(len(batch))]
    return videos, [_tree(batch.texts, i) for i in range(len(batch.text_video))]


def dual_sims(module, batch):
    with torch.no_grad():
        return module.dual.embed(batch.texts, "text") @ module.dual.embed(batch.videos, "video").T  # [T, V]


def ranks(scores, owner):
    """[T] rank of each caption's own video under scores [T, V]."""
    gallery = torch.arange(scores.shape[1])
    positive = lambda q: owner[q][:, None] == gallery[None, :]  # noqa: E731
    return retrieval_ranks(scores, torch.empty(scores.shape[1], 0), positive, score=lambda a, _: a)


def test_untrained_reranker_keeps_the_dual_encoders_order(dual):
    torch.manual_seed(1)
    module = RerankModule(dual_encoder=str(dual), rerank_k=4, head_hidden=16, **SIZES).eval()
    assert module.prior_log_scale.exp().item() == pytest.approx(1 / 0.05)  # the dual encoder's logit scale
    batch = retrieval_collate([caption_sample(i) for i in range(8)])
    videos, texts = split(batch)
    sims = dual_sims(module, batch)
    out = module.rerank(sims, videos, texts)
    assert torch.equal(out.argsort(1, descending=True), sims.argsort(1, descending=True))
    assert torch.equal(ranks(out, batch.text_video), ranks(sims, batch.text_video))
    pairs = [(v, 0) for v in range(len(videos))]
    scores = module.score_pairs(videos, texts, pairs, sims[0])
    assert torch.allclose(scores, sims[0] / 0.05)  # delta is exactly 0: the score is a * prior


def test_training_changes_the_order_through_the_correction(dual):
    torch.manual_seed(2)
    module = RerankModule(dual_encoder=str(dual), negatives=3, negative_temperature=0.0, head_hidden=16, **SIZES)
    batch = retrieval_collate([caption_sample(i) for i in range(8)])
    sims = dual_sims(module, batch)
    before = ranks(sims, batch.text_video)
    assert (before > 1).any()  # a random dual encoder gets some captions wrong: room to re-rank
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2
    module.eval()
    after = ranks(module.rerank(sims, *split(batch)), batch.text_video)
    assert not torch.equal(after, before) and after.float().mean() < before.float().mean()


def test_top_negatives_are_the_dual_encoders_hardest():
    module = RerankModule(negatives=2, negative_temperature=0.0, **SIZES)
    sims = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.2, 0.8, 0.3, 0.1]])
    assert module.negatives_for(sims, torch.tensor([0, 1])).tolist() == [[3, 2], [2, 0]]
    with pytest.raises(ValueError, match="at least 2 per batch"):
        module.negatives_for(sims[:, :1], torch.tensor([0, 0]))


def test_without_a_dual_encoder_the_scale_starts_at_the_retrieval_default():
    assert RerankModule(**SIZES).prior_log_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_a_checkpoint_of_the_earlier_non_residual_reranker_is_refused(tmp_path):
    path = save(RerankModule(head_hidden=16, **SIZES), tmp_path / "old.ckpt")
    state = torch.load(path, weights_only=True)
    del state["state_dict"]["prior_log_scale"]  # the earlier re-ranker scored pairs from the joint tree alone
    torch.save(state, path)
    with pytest.raises(ValueError, match="prior_log_scale.*retrain it"):
        RerankModule.from_checkpoint(path)


def test_the_correction_and_its_scale_train_at_head_lr():
    module = RerankModule(lr=1e-4, head_lr=5e-3, warmup_steps=0, **SIZES)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)  # all the schedule reads of the trainer
    optimizer = module.configure_optimizers()["optimizer"]
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert len(lr) == len(list(module.parameters()))  # every parameter once
    head = [*module.scorer.parameters(), module.prior_log_scale]
    assert {lr[id(p)] for p in head} == {5e-3} and lr[id(next(module.encoder.parameters()))] == 1e-4
    assert RerankModule(lr=1e-4, **SIZES).head_lr == 1e-4
