import pytest
import torch

from pipelines.train.metrics import qa_accuracy, recall_summary, retrieval_ranks


def brute_force_ranks(scores, positives):
    """Sort each row (score descending, index ascending) and find the first correct item."""
    ranks = []
    for row, pos in zip(scores.tolist(), positives.tolist()):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        ranks.append(1 + next(r for r, j in enumerate(order) if pos[j]))
    return torch.tensor(ranks)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_ranks_match_brute_force_with_ties(chunk):
    g = torch.Generator().manual_seed(0)
    q, v = torch.randint(-2, 3, (40, 3), generator=g).float(), torch.randint(-2, 3, (25, 3), generator=g).float()
    scores = q @ v.t()  # small integers: many ties
    truth = torch.randint(0, 25, (40,), generator=g)
    positives = torch.zeros(40, 25, dtype=torch.bool)
    positives[torch.arange(40), truth] = True
    positives[torch.arange(0, 40, 3), (truth[::3] + 5) % 25] = True  # some queries have two correct items
    expected = brute_force_ranks(scores, positives)
    ranks = retrieval_ranks(q, v, lambda idx: positives[idx], chunk=chunk)
    assert torch.equal(ranks, expected)


def test_recall_summary_and_qa():
    m = recall_summary(torch.tensor([1, 2, 6, 11]), prefix="t2v_")
    assert m == {"t2v_R@1": 0.25, "t2v_R@5": 0.5, "t2v_R@10": 0.75, "t2v_MdR": 4.0, "t2v_MnR": 5.0}
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    acc = qa_accuracy(scores, torch.tensor([1, 1, 1]), ["TN", "TP", "TP"])
    # NExT-QA's type codes: its groups and eval_mc's columns too (TP is scored with TN as Bef&Aft)
    assert acc == {"acc": 2 / 3, "acc_TN": 1.0, "acc_TP": 0.5, "Acc@T": 2 / 3, "Bef&Aft": 2 / 3}
