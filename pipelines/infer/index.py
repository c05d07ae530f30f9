"""``mmhsa index``: embed a corpus of videos once, through Lightning ``predict``, into a resumable index.

Layout of an index directory::

    index.json                the model (path, version, kind, sha256), its featurization, embedding width;
                              written once
    shards/<name>.pt          per batch of videos: video embeddings [V, E], clip embeddings [C, E],
                              clip times [C, 2], each clip's video row and the videos' paths
    shards/<name>.json        the shard's commit record: sha256 and size of the .pt, the model version and
                              featurization hash that wrote it, its videos' metadata (path, duration, fps,
                              frames, clips), the failures of that batch
    failures.jsonl            the videos that failed (path, stage, message), rewritten after every run

A shard counts only once its record exists, and the record is written (atomically) after the shard:
a run killed at any moment (kill -9 included) loses nothing already recorded and duplicates nothing
(a shard without a record is ignored and its videos are embedded again), and a search running during
indexing sees complete shards only. Re-running skips every video of a valid shard and retries
failures; a shard whose checksum fails is reported, set aside (renamed ``*.corrupt``) and its videos
redone. So is a record that is not JSON, was written by another model or featurization, or does not
match its shard (other paths, other counts of videos or clips). A video's path is its key: it has one
entry in force, whatever copies of records lie in ``shards/``. The failures-only records that runs over
failing files leave are merged into one after each run. Each DDP rank embeds its share of the videos
(Lightning's unrepeated distributed sampler) and writes its own shards. The model is a trained retrieval
checkpoint, or (``zero_shot=``, no training needed) CLIP meanP over the open_clip frame encoder of a data
recipe (:mod:`pipelines.infer.retrievers`).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from data_prep.datasets import VIDEO_EXTENSIONS
from data_prep.datasets.items import not_a_file
from data_prep.featurize import hashed_options
from data_prep.locking import DirectoryLock, first_process
from data_prep.shards import (
    atomic_write,
    config_hash,
    file_sha256,
    load_tensors,
    read_json_object,
    remove_temporaries,
    tensor_bytes,
)

from .ann import AUTO_VECTORS, build_ann, load_ann
from .retrievers import ClipMeanP, TrainedRetriever, load_retriever

__all__ = ["Index", "IndexMismatch", "IndexModule", "IndexWriter", "build_index", "list_videos"]

FORMAT = 1
FINGERPRINT_BYTES = 1 << 20


class IndexMismatch(ValueError):
    """An index that cannot be used as asked (another model version, not an index, ...)."""


def list_videos(sources: Sequence[str | Path], skipped: list[dict] | None = None) -> list[Path]:
    """Video files from folders (searched recursively), list files (``.txt``: one path per line, relative
    to the list) and single files; resolved, deduplicated, sorted. ``skipped`` receives what a folder holds
    that is not taken, once per path with the reason (``{"path", "reason"}``).

    Raises:
        FileNotFoundError: a source that does not exist (named); ValueError: no video found at all.
    """
    found: set[Path] = set()
    skipped = [] if skipped is None else skipped
    for source in map(Path, sources):
        if source.is_dir():
            for p in sorted(source.rglob("*")):
                reason = _not_a_video(p)
                if reason is None:
                    found.add(p.resolve())
                elif reason:
                    skipped.append({"path": str(p), "reason": reason})
        elif source.is_file() and source.suffix.lower() == ".txt":
            for line in source.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    found.add((source.parent / line.strip()).resolve())
        elif source.is_file():
            found.add(source.resolve())
        else:
            raise FileNotFoundError(f"{source}: no such video, folder or list")
    if not found:
        raise ValueError(
            f"no video files found in {', '.join(map(str, sources))} (extensions: {', '.join(VIDEO_EXTENSIONS)})"
        )
    return sorted(found)


def _not_a_video(path: Path) -> str | None:
    """Why a folder entry is not indexed (None: it is a video file; "": a folder to descend into)."""
    if path.is_dir() and path.suffix.lower() not in VIDEO_EXTENSIONS:
        return ""
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        return f"not a video file extension ({path.suffix or 'none'}; indexed: {', '.join(VIDEO_EXTENSIONS)})"
    return not_a_file(path)


def featurization_hash(featurization: dict) -> str:
    """What identifies how an index's videos were featurized (recorded in each shard record; options added
    later count only when set otherwise than their default, so older indexes keep their hash)."""
    return config_hash(hashed_options(featurization))


# ------------------------------------------------------------------ reading
@dataclass
class Index:
    """The committed content of an index directory (what a search sees).

    Attributes:
        videos: metadata per video (path, duration, fps, frames, clips), row order of ``video_vectors``.
        video_vectors: [V, E] unit vectors.
        clip_vectors: [C, E] unit vectors; clip_video: [C] row of each clip's video; clip_times: [C, 2] s.
        failures: the latest failure per video not indexed since.
        corrupt: records (or their shards) that cannot be used: missing or failing the checksum, not JSON,
            of another model or featurization, not matching their shard.
        incomplete: shard files without a record (a run was killed while writing them).
        set_aside: shards an earlier run found corrupt and renamed (their videos wait to be indexed again).
    """

    root: Path
    manifest: dict
    videos: list[dict] = field(default_factory=list)
    video_vectors: torch.Tensor = None
    clip_vectors: torch.Tensor = None
    clip_video: torch.Tensor = None
    clip_times: torch.Tensor = None
    failures: list[dict] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)
    records: list[tuple[Path, dict]] = field(default_factory=list)  # the valid ones, in the order written

    @property
    def version(self) -> str:
        return self.manifest["model"]["version"]

    @cached_property
    def clip_ptr(self) -> torch.Tensor:
        """[V + 1]: video v's clips are rows ``clip_ptr[v]:clip_ptr[v + 1]`` (shards keep a video's clips
        together and in video order)."""
        return torch.searchsorted(self.clip_video, torch.arange(len(self.videos) + 1))

    @property
    def indexed(self) -> set[str]:
        return {v["path"] for v in self.videos}

    @classmethod
    def open(cls, root: str | Path, set_aside: bool = False) -> Index:
        """Read every valid shard; ``set_aside`` renames corrupt shards so the next run redoes their videos.

        Records are read in the order they were written: a video indexed again (it changed) replaces its
        earlier entry, and a record's ``removed`` paths (deleted videos) drop theirs.

        Raises:
            FileNotFoundError: ``root`` is not an index (no index.json).
        """
        root = Path(root)
        manifest_path = root / "index.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{root}: not an index (no index.json); build one with `mmhsa index`")
        manifest = read_json_object(manifest_path, "index manifest")
        if manifest.get("format") != FORMAT:
            raise IndexMismatch(f"{root}: index format {manifest.get('format')} is not the supported {FORMAT}")
        index = cls(root, manifest)
        shards = root / "shards"
        records = sorted(shards.glob("*.json")) if shards.is_dir() else []
        recorded = {r.with_suffix(".pt") for r in records}
        index.incomplete = sorted(str(p) for p in shards.glob("*.pt") if p not in recorded) if shards.is_dir() else []
        index.set_aside = sorted(p.name for p in shards.glob("*.pt.corrupt")) if shards.is_dir() else []
        loaded, failed = [], {}  # loaded: (record path, record, shard tensors)
        for record_path in records:
            try:
                record, data = _checked_record(record_path, manifest)
            except ValueError as problem:
                index.corrupt.append(f"{record_path.with_suffix('.pt').name}: {problem}")
                if set_aside:
                    for p in (record_path.with_suffix(".pt"), record_path):
                        if p.exists():
                            p.rename(p.with_name(p.name + ".corrupt"))
                continue
            loaded.append((record_path, record, data))
        loaded.sort(key=lambda rd: rd[1].get("created", 0.0))  # the order written
        index.records = [(path, record) for path, record, _ in loaded]
        loaded = [(record, data) for _, record, data in loaded]
        latest: dict[str, tuple[int, int]] = {}  # path -> (record, row) of its entry in force
        for r, (record, _) in enumerate(loaded):
            for failure in record["failures"]:
                failed[failure["path"]] = failure
            for path in record.get("removed", []):
                latest.pop(path, None)
                failed.pop(path, None)
            for v, video in enumerate(record["videos"]):
                latest[video["path"]] = (r, v)
        vectors, clips, clip_video, clip_times = [], [], [], []
        for r, (record, data) in enumerate(loaded):
            for v, video in enumerate(record["videos"]):
                if latest.get(video["path"]) != (r, v):
                    continue  # indexed again later, or removed
                rows = data["clip_video"] == v
                clip_video.append(torch.full((int(rows.sum()),), len(index.videos)))
                index.videos.append(video)
                vectors.append(data["video_vectors"][v : v + 1])
                clips.append(data["clip_vectors"][rows])
                clip_times.append(data["clip_times"][rows])
        empty = torch.zeros(0, manifest["embed_dim"])
        index.video_vectors = torch.cat(vectors) if vectors else empty
        index.clip_vectors = torch.cat(clips) if clips else empty
        index.clip_video = torch.cat(clip_video) if clip_video else torch.zeros(0, dtype=torch.long)
        index.clip_times = torch.cat(clip_times) if clip_times else torch.zeros(0, 2)
        done = index.indexed
        index.failures = [f for path, f in sorted(failed.items()) if path not in done]
        return index


def _checked_record(record_path: Path, manifest: dict) -> tuple[dict, dict]:
    """A shard record and its shard's tensors, once both are shown to be this index's and to agree.

    Raises:
        ValueError: what is wrong (the caller names the shard).
    """
    record = read_json_object(record_path, "shard record")
    if not {"sha256", "bytes", "videos", "failures"} <= record.keys():
        raise ValueError(f"{record_path.name}: not a shard record (fields missing)")
    if record.get("model", manifest["model"]["version"]) != manifest["model"]["version"]:
        raise ValueError(f"written by model {record['model']}, the index's is {manifest['model']['version']}")
    featurized = featurization_hash(manifest["featurization"])
    if record.get("featurization", featurized) != featurized:
        raise ValueError(f"written with featurization {record['featurization']}, the index's is {featurized}")
    shard = record_path.with_suffix(".pt")
    if not shard.is_file():
        raise ValueError("shard file missing")
    if shard.stat().st_size != record["bytes"] or file_sha256(shard) != record["sha256"]:
        raise ValueError("checksum mismatch")
    data = load_tensors(shard, "index shard")
    videos, width = record["videos"], data["video_vectors"].shape[1]
    if width != manifest["embed_dim"]:
        raise ValueError(f"embeddings of width {width}, the index's is {manifest['embed_dim']}")
    if "paths" in data and data["paths"] != [v["path"] for v in videos]:
        raise ValueError(f"the record's {len(videos)} video paths are not the shard's {len(data['paths'])}")
    clips = torch.bincount(data["clip_video"], minlength=len(videos)).tolist()
    if len(data["video_vectors"]) != len(videos) or clips != [len(v["clips"]) for v in videos]:
        raise ValueError(
            f"the record's {len(videos)} videos with {[len(v['clips']) for v in videos]} clips are not the "
            f"shard's {len(data['video_vectors'])} with {clips}"
        )
    return record, data


# ------------------------------------------------------------------ writing (Lightning predict)
class _VideoPaths(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path]):
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        return self.paths[i]


class IndexModule(pl.LightningModule):
    """Batches of video paths -> embeddings with the dual encoder (featurization on the same device)."""

    def __init__(self, model: TrainedRetriever | ClipMeanP):
        super().__init__()
        self.model = model
        self.retrieval = model.module  # registered: Lightning moves it to the rank's device

    def predict_step(self, paths: list[str], batch_idx: int) -> dict:
        featurizer = self.model.videos
        videos, encoded, failures = [], [], []
        for opened in featurizer.open_group([Path(p) for p in paths]):
            if opened.video is None:
                failures.append({"path": str(opened.path), "stage": opened.stage, "error": opened.error})
                continue
            try:
                clips = featurizer.featurize(opened)
            except ValueError as err:
                failures.append({"path": str(opened.path), "stage": "encode", "error": str(err)})
                continue
            v = opened.video
            videos.append(
                {
                    "path": str(opened.path),
                    **file_identity(opened.path),
                    "duration": round(v.duration, 3),
                    "fps": round(v.fps, 3),
                    "frames": v.num_frames,
                    "clips": [[round(c.start, 3), round(c.end, 3)] for c in clips],
                }
            )
            encoded.append(clips)
        embedded = self.model.embed_videos(encoded) if encoded else []
        return {"videos": videos, "failures": failures, "embeddings": embedded}


class IndexWriter(BasePredictionWriter):
    """Writes each predicted batch as a shard and then its record (the commit)."""

    def __init__(self, root: Path, model: str, featurization: str):
        super().__init__(write_interval="batch")
        self.shards = root / "shards"
        self.model, self.featurization = model, featurization  # the version and hash each record carries
        self.written = {"videos": 0, "clips": 0, "failures": 0, "shards": 0}

    def write_on_batch_end(
        self, trainer, pl_module, prediction: dict, batch_indices, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        embedded = prediction["embeddings"]
        embed_dim = pl_module.model.embed_dim
        clip_rows = [c for _, c in embedded]
        data = {
            "video_vectors": torch.stack([v for v, _ in embedded]) if embedded else torch.zeros(0, embed_dim),
            "clip_vectors": torch.cat(clip_rows) if clip_rows else torch.zeros(0, embed_dim),
            "clip_video": torch.cat([torch.full((len(c),), i) for i, c in enumerate(clip_rows)])
            if clip_rows
            else torch.zeros(0, dtype=torch.long),
            "clip_times": torch.tensor(
                [c for v in prediction["videos"] for c in v["clips"]], dtype=torch.float32
            ).reshape(-1, 2),
        }
        self.commit(data, prediction["videos"], prediction["failures"], rank=trainer.global_rank)
        self.written["videos"] += len(prediction["videos"])
        self.written["clips"] += len(data["clip_times"])
        self.written["failures"] += len(prediction["failures"])
        self.written["shards"] += 1

    def commit(self, data: dict, videos: list[dict], failures: list[dict], rank: int = 0, removed=()) -> None:
        """Write a shard, then its record: from then on it counts. ``removed``: paths whose entries it drops."""
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-r{rank}-{uuid.uuid4().hex[:8]}"
        shard = self.shards / f"{name}.pt"
        self.shards.mkdir(parents=True, exist_ok=True)
        atomic_write(shard, tensor_bytes({**data, "paths": [v["path"] for v in videos]}))
        record = {
            "shard": shard.name,
            "sha256": file_sha256(shard),
            "bytes": shard.stat().st_size,
            "model": self.model,
            "featurization": self.featurization,
            "rank": rank,
            "created": time.time(),
            "videos": videos,
            "failures": failures,
            **({"removed": list(removed)} if removed else {}),
        }
        atomic_write(shard.with_suffix(".json"), json.dumps(record, indent=1).encode())

    def remove(self, paths: list[str], embed_dim: int) -> None:
        """Drop the entries of ``paths`` (deleted videos): an empty shard whose record names them."""
        self.commit(_empty(embed_dim), [], [], removed=paths)

    def merge_failures(self, index: Index) -> int:
        """Replace the records holding only failures (one per run over failing files) by one holding the
        index's current failures; returns how many were merged."""
        only = [path for path, r in index.records if not r["videos"] and not r.get("removed")]
        if len(only) < 2:
            return 0
        self.commit(_empty(index.manifest["embed_dim"]), [], index.failures)
        for record in only:  # after the merged one is committed: a crash in between only repeats failures
            record.with_suffix(".pt").unlink(missing_ok=True)
            record.unlink(missing_ok=True)
        return len(only)


def _empty(embed_dim: int) -> dict:
    """A shard's tensors for no video."""
    empty = torch.zeros(0, embed_dim)
    return {"video_vectors": empty, "clip_vectors": empty, "clip_video": torch.zeros(0, dtype=torch.long),
            "clip_times": torch.zeros(0, 2)}  # fmt: skip


def file_identity(path: Path) -> dict:
    """What tells a video file apart from a changed one: its size, mtime (ns) and a fingerprint (sha256 of the
    size and the first and last MiB: cheap on long videos, and any re-encode or truncation changes it)."""
    stat = path.stat()
    digest = hashlib.sha256(str(stat.st_size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
        if stat.st_size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, stat.st_size - FINGERPRINT_BYTES))
            digest.update(f.read(FINGERPRINT_BYTES))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "fingerprint": digest.hexdigest()[:32]}


def _changed(entry: dict) -> bool:
    """Whether an indexed video's file differs from when it was indexed (entries from before fingerprints:
    never). Size and mtime are checked first; the fingerprint settles a touched but unchanged file."""
    if "fingerprint" not in entry:
        return False
    stat = Path(entry["path"]).stat()
    if stat.st_size == entry["size"] and stat.st_mtime_ns == entry["mtime_ns"]:
        return False
    return file_identity(Path(entry["path"]))["fingerprint"] != entry["fingerprint"]


def _clean(root: Path, index: Index) -> dict:
    """Under the lock: remove what crashed runs left (temporary files, shards that never got a record)."""
    temporaries = remove_temporaries(root) + remove_temporaries(root / "shards")
    for orphan in index.incomplete:
        Path(orphan).unlink(missing_ok=True)
    return {"temporaries": len(temporaries), "unrecorded_shards": len(index.incomplete)}


def _open_or_create(root: Path, model: TrainedRetriever | ClipMeanP) -> Index:
    """The existing index (checked against the model and its featurization), or a new one."""
    recorded = {"path": str(model.path.resolve()), "version": model.version, "kind": model.kind}
    if model.path.is_file():  # a checkpoint: what search checks before loading it again
        recorded["sha256"] = file_sha256(model.path)
    manifest = {
        "format": FORMAT,
        "model": recorded,
        "embed_dim": model.embed_dim,
        "featurization": model.featurization.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = root / "index.json"
    if path.is_file():
        existing = read_json_object(path, "index manifest")
        old = existing.get("model", {}).get("version")
        if old != model.version:
            raise IndexMismatch(
                f"{root} was built with model {old} ({existing.get('model', {}).get('path')}); the "
                f"model given is {model.version} ({model.path}): use a new index directory, or that model"
            )
        old, new = (featurization_hash(f) for f in (existing.get("featurization", {}), manifest["featurization"]))
        if old != new:
            raise IndexMismatch(
                f"{root} holds videos featurized with {old}; this run's featurization is {new} (another "
                "--prepared recipe?): one featurization per index; use a new index directory"
            )
    elif list((root / "shards").glob("*.json")):
        raise IndexMismatch(
            f"{root} holds shards but no index.json (deleted?): their model is unknown, so nothing is added "
            "to them; use a new index directory"
        )
    else:
        root.mkdir(parents=True, exist_ok=True)
        if first_process():
            atomic_write(path, json.dumps(manifest, indent=1).encode())
    return Index.open(root, set_aside=True) if path.is_file() else Index(root, manifest)


def build_index(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    checkpoint: str | None = None,
    prepared: str | None = None,
    zero_shot: str | None = None,
    trust_checkpoint: bool = False,
    ann: bool | None = None,
    batch_size: int = 8,
    accelerator: str = "auto",
    devices="auto",
    strategy: str = "auto",
    progress: bool = True,
) -> dict:
    """Embed the videos of ``sources`` that ``out`` does not hold yet; returns the run's report.

    Args:
        sources: folders, list files or videos (:func:`list_videos`).
        out: the index directory (created, or resumed).
        checkpoint: a retrieval checkpoint (default: the one ``make train`` leaves).
        prepared: featurization source for checkpoints that do not carry it (see
            :func:`~pipelines.infer.checkpoints.load_model`).
        zero_shot: instead of a checkpoint, a data recipe (or prepared directory) whose frame encoder is
            open_clip: CLIP meanP embeddings, no training needed (:class:`~pipelines.infer.retrievers.ClipMeanP`).
        trust_checkpoint: see :func:`~pipelines.infer.checkpoints.load_model`.
        ann: build the approximate-search files (:mod:`pipelines.infer.ann`); None: when the index passes
            :data:`~pipelines.infer.ann.AUTO_VECTORS` clips, or already has them (then they are rebuilt when
            the index changed).
        batch_size: videos per predict step (TransNetV2 scores a batch in one packed stream).
        accelerator, devices, strategy: Lightning's (e.g. ``devices=2, strategy="ddp"``).
    """
    started = time.perf_counter()
    model = load_retriever(checkpoint, prepared, zero_shot, trust=trust_checkpoint)
    root = Path(out)
    skipped: list[dict] = []
    videos = list_videos(sources, skipped)
    with DirectoryLock(root, "mmhsa index"):
        report = _build(root, videos, model, ann, batch_size, accelerator, devices, strategy, progress, started)
    return {**report, "skipped": skipped}


def _build(root, videos, model, ann, batch_size, accelerator, devices, strategy, progress, started) -> dict:
    """:func:`build_index` once the index directory is this run's."""
    index = _open_or_create(root, model)
    cleaned = _clean(root, index) if first_process() else {}
    entries = {v["path"]: v for v in index.videos}
    deleted = sorted(p for p in entries if not Path(p).is_file())
    changed = [p for p in videos if str(p) in entries and _changed(entries[str(p)])]
    todo = [p for p in videos if str(p) not in entries or p in changed]
    writer = IndexWriter(root, model.version, featurization_hash(model.featurization.to_dict()))
    if deleted and first_process():
        writer.remove(deleted, model.embed_dim)
    report = {
        "index": str(root),
        "model": model.version,
        "videos": len(videos),
        "already_indexed": len(videos) - len(todo),
        "changed": [str(p) for p in changed],
        "deleted": deleted,
        "corrupt_set_aside": index.corrupt,
        "cleaned": cleaned,
    }
    if todo:
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            logger=False,
            callbacks=[writer],
            enable_progress_bar=progress,
            enable_model_summary=False,
        )
        loader = DataLoader(_VideoPaths(todo), batch_size=batch_size, collate_fn=list)
        trainer.predict(IndexModule(model), loader, return_predictions=False)
        trainer.strategy.barrier()  # every rank's shards are recorded before rank 0 reads them back
        if trainer.global_rank != 0:
            return report
    final = Index.open(root)
    if writer.merge_failures(final):
        final = Index.open(root)
    atomic_write(root / "failures.jsonl", "".join(json.dumps(f) + "\n" for f in final.failures).encode())
    had_ann = (root / "ann" / "ann.json").is_file()
    if len(final.videos) and (ann or (ann is None and (had_ann or len(final.clip_vectors) >= AUTO_VECTORS))):
        if ann or not had_ann or load_ann(final, root)[1] is not None:  # asked, new, or stale
            report["ann"] = build_ann(final, root)
    seconds = time.perf_counter() - started
    report.update(
        written=writer.written,
        indexed_total=len(final.videos),
        clips_total=len(final.clip_vectors),
        failed=[f["path"] for f in final.failures],
        seconds=round(seconds, 1),
        videos_per_minute=round(writer.written["videos"] * 60 / seconds, 1) if seconds > 0 else None,
        stages=model.stages.table(),
    )
    return report
