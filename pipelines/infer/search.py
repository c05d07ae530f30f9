"""``mmhsa search INDEX "text"``: exact text-to-video search over an index (:mod:`pipelines.infer.index`).

The query is embedded by the index's own model, a trained retrieval checkpoint or CLIP zero-shot
(:mod:`pipelines.infer.retrievers`; its version is checked against the one that built the index), and
compared with every video and every clip embedding (cosine, one matrix product in chunks: exact, no
approximate structure). Videos are ranked by their whole-video score, or, with
``level="clip"``, clips are ranked; each hit names the video, its best clip with timestamps and the scores.
With a re-rank checkpoint, ``rerank=True`` reorders the top videos with the cross-modal model
(:mod:`pipelines.train.rerank`) on the joint tree of the query and each video. :meth:`Searcher.evaluate`
scores an index against captions of its videos (an ``annotations.jsonl``), with the metrics retrieval
papers report: the same number for a trained model's index and a zero-shot one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from data_prep.datasets import read_jsonl_folder
from data_prep.text import check_text
from pipelines.train.metrics import recall_summary, retrieval_ranks

from .ann import load_ann
from .checkpoints import TrainedModel, load_model
from .exact import top_k
from .index import Index, IndexMismatch
from .retrievers import recorded_retriever
from .trees import text_trees, video_trees

__all__ = ["Searcher", "top_k"]


class Searcher:
    """An index and the model that built it.

    Args:
        index: the index directory.
        checkpoint: the retrieval checkpoint (default: the model recorded in the index, a checkpoint or
            CLIP zero-shot); it must be the model version the index was built with.
        prepared: featurization source for checkpoints that do not carry it.
        reranker: a cross-modal re-rank checkpoint (:class:`~pipelines.train.rerank.RerankModule`) for
            ``search(..., rerank=True)``.
        trust_checkpoint: see :func:`~pipelines.infer.checkpoints.load_model`.

    Raises:
        IndexMismatch: the checkpoint is another model version than the index's (both named).
    """

    def __init__(
        self,
        index: str,
        checkpoint: str | None = None,
        prepared: str | None = None,
        reranker: str | None = None,
        trust_checkpoint: bool = False,
    ):
        self.index = Index.open(index)
        self.reranker: TrainedModel | None = (
            load_model(reranker, "rerank", prepared=prepared, trust=trust_checkpoint) if reranker else None
        )
        recorded = self.index.manifest["model"]
        self.model = recorded_retriever(self.index.manifest, checkpoint, prepared, trust_checkpoint)
        self.ann, self.ann_warning = load_ann(self.index, self.index.root)
        if self.model.version != recorded["version"]:
            raise IndexMismatch(
                f"{index} was built with model {recorded['version']} ({recorded['path']}); the model "
                f"loaded is {self.model.version} ({self.model.path}): re-index with it, or search with "
                "the index's model"
            )
        dual = getattr(self.reranker.module, "dual_sha256", None) if self.reranker else None
        built = recorded.get("sha256") or recorded["version"].rsplit(":", 1)[-1]  # older indexes: 16 hex digits
        if dual and not dual.startswith(built):
            raise IndexMismatch(
                f"re-ranker {self.reranker.path} corrects the scores of the dual encoder {dual[:16]}; {index} was "
                f"built with {recorded['version']} ({recorded['path']}), whose scores it was not trained on: "
                "index with that dual encoder, or train a re-ranker over this index's model"
            )

    def embed(self, queries: list[str]) -> tuple[torch.Tensor, list[dict]]:
        """[Q, E] unit query vectors; and what the limits dropped of each (very long queries)."""
        return self.model.embed_texts(queries)

    def search(self, query: str, k: int = 10, level: str = "video", rerank: bool = False) -> dict:
        """The top ``k`` videos (``level="video"``) or clips (``level="clip"``) for ``query``; with
        ``rerank``, the top ``k`` videos reordered by the cross-modal re-ranker (each hit then also has
        ``rerank_score``; the videos are featurized again from their files, as the index keeps only
        embeddings).

        Returns:
            {"query", "level", "dropped", "warnings", "hits": [{"rank", "score", "video", "clip", "start",
            "end", "clip_score", "video_score"}]}: ``warnings`` says when part of the index is set aside
            (corrupt shards), when its ANN files are stale, and which hits point at files no longer on disk
            (those hits carry ``"missing": true``).

        Raises:
            ValueError: a query that is empty, not valid Unicode or too long (:func:`~data_prep.text.check_text`),
                or an unknown level.
        """
        return self.search_many([query], k, level, rerank)[0]

    def search_many(self, queries: list[str], k: int = 10, level: str = "video", rerank: bool = False) -> list[dict]:
        """:meth:`search` for several queries at once: one text-encoder pass and one gallery search for all."""
        if level not in ("video", "clip"):
            raise ValueError(f"level must be 'video' or 'clip', got {level!r}")
        if rerank and (self.reranker is None or level != "video"):
            raise ValueError("rerank needs a re-rank checkpoint (--rerank-ckpt) and level 'video'")
        for i, query in enumerate(queries):
            check_text(query, "query" if len(queries) == 1 else f"query {i + 1}")
        ix = self.index
        q, dropped = self.embed(queries)
        warnings = [self.ann_warning] if self.ann_warning else []
        if ix.corrupt or ix.set_aside:
            names = ix.corrupt + ix.set_aside
            warnings.append(
                f"{len(names)} shard(s) of {ix.root} are corrupt or set aside ({', '.join(names[:3])}): their "
                "videos are not searched until `mmhsa index` runs on the index again"
            )
        results = []
        if not len(ix.videos):
            return [{"query": t, "level": level, "dropped": d, "warnings": warnings, "hits": []}
                    for t, d in zip(queries, dropped)]  # fmt: skip
        gallery = "videos" if level == "video" else "clips"
        vectors = ix.video_vectors if level == "video" else ix.clip_vectors
        ann = self.ann.get(gallery)
        scores, rows = ann.search(q, k) if ann is not None else top_k(q, vectors, k)
        for i, query in enumerate(queries):
            hits = []
            for score, row in zip(scores[i].tolist(), rows[i].tolist()):
                if row < 0:  # FAISS pads with -1 when it finds fewer than k
                    continue
                v, c = (row, None) if level == "video" else (int(ix.clip_video[row]), row)
                hits.append(self._hit(len(hits) + 1, score, v, c, q[i]))
            if rerank:
                hits = self._rerank(query, hits)
            notes = list(warnings)
            for hit in hits:
                if not Path(hit["video"]).is_file():
                    hit["missing"] = True
                    notes.append(f"{hit['video']}: no longer on disk (deleted or moved since it was indexed)")
            results.append({"query": query, "level": level, "dropped": dropped[i], "warnings": notes, "hits": hits})
        return results

    def evaluate(self, annotations: str | Path, split: str = "test", batch_size: int = 256) -> dict:
        """Text-to-video and video-to-text retrieval over the index, the queries being the captions of
        ``split`` in an ``annotations.jsonl`` (:mod:`data_prep.datasets.jsonl`) whose videos the index holds.

        The gallery is every video of the index (index just the split's videos to score as a benchmark
        does); a query's correct video is its own. Returns ``{"t2v_R@1", ..., "t2v_MdR", "t2v_MnR", "v2t_...",
        "queries", "videos", "not_indexed"}`` (the split's videos the index lacks, by path).

        Raises:
            ValueError: the file has no caption of ``split`` for an indexed video (naming the file).
        """
        annotations = Path(annotations)
        items, _ = read_jsonl_folder(annotations.parent, annotations.name)
        row = {path: v for v, path in enumerate(v["path"] for v in self.index.videos)}
        queries, owner, not_indexed = [], [], []
        for item in items:
            if item.split != split or not getattr(item, "captions", None):
                continue
            v = row.get(str(Path(item.video).resolve()))
            if v is None:
                not_indexed.append(str(item.video))
                continue
            queries += item.captions
            owner += [v] * len(item.captions)
        if not queries:
            raise ValueError(
                f"{annotations}: no caption of split {split!r} belongs to a video of {self.index.root} "
                f"({len(not_indexed)} of its videos are not indexed)"
            )
        texts = torch.cat([self.embed(queries[at : at + batch_size])[0] for at in range(0, len(queries), batch_size)])
        videos, owner = self.index.video_vectors, torch.tensor(owner)
        described = torch.unique(owner)  # v2t: each described video against every query
        t2v = retrieval_ranks(texts, videos, lambda q: owner[q][:, None] == torch.arange(len(videos))[None])
        v2t = retrieval_ranks(videos[described], texts, lambda q: described[q][:, None] == owner[None])
        return {
            **{k: round(v, 4) for k, v in recall_summary(t2v, prefix="t2v_").items()},
            **{k: round(v, 4) for k, v in recall_summary(v2t, prefix="v2t_").items()},
            "queries": len(queries),
            "videos": len(videos),
            "not_indexed": not_indexed,
        }

    @torch.no_grad()
    def _rerank(self, query: str, hits: list[dict]) -> list[dict]:
        model = self.reranker
        featurizer = model.videos
        videos, kept = [], []
        for hit in hits:
            try:
                clips = featurizer.featurize(
                    featurizer.open_group([Path(hit["video"])])[0], model.featurization.limits.max_clips
                )
            except ValueError as err:  # moved or deleted since indexing: keep the dual-encoder order for it
                hit["rerank_error"] = str(err)
                continue
            videos.append(video_trees(clips, model.featurization.limits)[0])
            kept.append(hit)
        if not kept:
            return hits
        text, _ = text_trees(model, [query])
        # the prior of the residual re-ranker: each hit's first-stage score, the cosine of the query and the
        # video by the index's retrieval model (the re-ranker's dual encoder when the index was built with it)
        prior = torch.tensor([hit["score"] for hit in kept])
        pairs = [(v, 0) for v in range(len(videos))]
        scores = model.module.score_pairs(videos, [text], pairs, prior).float().cpu().tolist()
        for hit, score in zip(kept, scores):
            hit["rerank_score"] = round(score, 4)
        ordered = sorted(kept, key=lambda h: -h["rerank_score"]) + [h for h in hits if "rerank_score" not in h]
        for rank, hit in enumerate(ordered, 1):
            hit["rank"] = rank
        return ordered

    def _hit(self, rank: int, score: float, v: int, c: int | None, query: torch.Tensor) -> dict:
        """A hit on video ``v`` (and clip row ``c``; None: the video's best clip for ``query``)."""
        ix = self.index
        ptr = ix.clip_ptr
        own = ix.clip_vectors[ptr[v] : ptr[v + 1]] @ query  # only this video's clips: no pass over the gallery
        c = int(ptr[v] + own.argmax()) if c is None else c
        start, end = ix.clip_times[c].tolist()
        return {
            "rank": rank,
            "score": round(score, 4),
            "video": ix.videos[v]["path"],
            "clip": c - int(ptr[v]),
            "start": round(start, 2),
            "end": round(end, 2),
            "clip_score": round(float(own[c - int(ptr[v])]), 4),
            "video_score": round(float(ix.video_vectors[v] @ query), 4),
        }
