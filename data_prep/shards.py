"""Prepared datasets on disk: shards of assembled samples, a manifest and a failure report.

    <dir>/manifest.json     config and its hash, encoder ids, feature widths, library versions, counts, shard list
                            (file, samples, sha256, ids, the video digests it stores and refers to)
    <dir>/shard-00000.pt    {"records": samples (hierarchy arrays + metadata + fp16 text features, and the digest of
                            their video's features), "videos": digest -> fp16 video features}: a video's features
                            are stored once, in the first shard holding one of its samples, however many
                            questions and captions share it
    <dir>/failures.jsonl    one line per input that failed: id, source, stage, error

Every file is written atomically (temp file + rename) and the manifest last, so a killed run leaves
only complete shards; re-running with the same config skips the samples already written (and
retries the failed ones). A re-run first verifies what it believes done: a listed shard that is missing
or fails its checksum is set aside (``*.corrupt``) with the shards that refer to video features it held,
and their samples are prepared again; shard files the manifest does not list are removed, and a new
shard never takes the name of one listed or set aside. A full disk stops the run with :class:`DiskFull`
(the directory, the bytes needed and free), its temporary file removed and the directory as it was
before that write.
:class:`ShardDataset` reads it back for training, checking checksums, sample counts and every tree.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from mmhsa import Hierarchy

from .schema import Sample

__all__ = [
    "DiskFull",
    "ShardDataset",
    "ShardWriter",
    "atomic_write",
    "config_hash",
    "file_sha256",
    "load_tensors",
    "read_failures",
    "read_json_object",
    "read_manifest",
    "remove_temporaries",
    "tensor_bytes",
]

MANIFEST, FAILURES = "manifest.json", "failures.jsonl"
TMP_PREFIX = "."  # temporary files are hidden: ".<name>.tmp-<pid>"
# Sample meta counted per value in each shard entry and the manifest's counts: meta key -> counts key.
COUNTED_META = {"split": "splits", "subtitles_encoding": "subtitle_encodings"}
FORMAT_VERSION = 2  # 2: video features stored once per video (1: in every sample; still read)
READ_FORMATS = (1, 2)


def config_hash(config: dict) -> str:
    """Stable short hash of a JSON-able config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


class DiskFull(OSError):
    """No space left to write a file: names the directory, the bytes needed and the bytes free."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    Raises:
        DiskFull: the disk (or quota) is full; the temporary file is removed and ``path`` is as it was.
    """
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(path.parent).free
        raise DiskFull(
            err.errno,
            f"{path.parent}: no space left to write {path.name} ({len(data):,} bytes needed, {free:,} free); "
            "what was written before is intact: free some space and run the same command again",
        ) from None


def load_tensors(path: Path, what: str, mmap: bool = False):
    """A file the project wrote (tensors and plain values), read without running code; ``mmap``: tensors
    are mapped from the file, read only when used.

    Raises:
        ValueError: naming ``path`` when it cannot be read that way (truncated, crafted, foreign).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # an UnpicklingError for a crafted file; EOFError, RuntimeError for a cut one
        first = str(err).strip().split("\n", 1)[0][:200]
        raise ValueError(f"{path}: not a readable {what} ({type(err).__name__}: {first})") from None


def tensor_bytes(obj) -> bytes:
    """``torch.save`` of ``obj`` into memory (then written with :func:`atomic_write`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def remove_temporaries(directory: Path) -> list[str]:
    """Delete the temporary files crashed runs left in ``directory`` (call only while holding its lock);
    returns their names."""
    found = sorted(p for p in directory.glob(f"{TMP_PREFIX}*.tmp*") if p.is_file()) if directory.is_dir() else []
    for path in found:
        path.unlink(missing_ok=True)
    return [p.name for p in found]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _to_record(sample: Sample) -> dict:
    h = sample.hierarchy
    return {
        "id": sample.id,
        "parent": torch.from_numpy(h._np["parent"].astype(np.int32)),
        "kind": torch.from_numpy(h._np["kind"].astype(np.int16)),
        "kind_names": list(h.kind_names),
        "domain": torch.from_numpy(h._np["domain"].astype(np.int8)),
        "coord": torch.from_numpy(h._np["coord"]),
        "key_names": list(h.key_names),
        "features": {k: v.to(torch.float16).contiguous() for k, v in sample.features.items()},
        "leaf_modality": sample.leaf_modality.to(torch.int8),
        "dropped": dict(sample.dropped),
        "meta": dict(sample.meta),
    }


def _mapped_records(path: Path) -> list[dict]:
    """A shard's records, memory-mapped (their features are not read unless used)."""
    content = load_tensors(path, "prepared shard", mmap=True)
    return content if isinstance(content, list) else content["records"]


def _digest(features: torch.Tensor) -> str:
    """Content address of a video's features (shape and bytes)."""
    h = hashlib.sha256(str(tuple(features.shape)).encode())
    h.update(features.contiguous().view(torch.uint8).numpy())  # the buffer itself: no copy of the bytes
    return h.hexdigest()[:32]


def _from_record(record: dict, video: torch.Tensor | None = None, validated: bool = False) -> Sample:
    """A sample from its record; ``video``: its video features when the record refers to them; ``validated``:
    its tree was checked before (a parent cycle or out-of-range index raises ``ValueError`` otherwise)."""
    features = dict(record["features"])
    if video is not None:
        features["video"] = video
    hierarchy = Hierarchy(
        record["parent"].numpy(),
        kind=record["kind"].numpy(),
        kind_names=record["kind_names"],
        domain=record["domain"].numpy(),
        coord=record["coord"].numpy(),
        key_names=record["key_names"],
        _validated=validated,
    )
    return Sample(record["id"], hierarchy, features, record["leaf_modality"].long(), record["dropped"], record["meta"])


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object the project wrote (a manifest, a record).

    Raises:
        ValueError: naming the file and ``what`` it should be when it is not one.
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable {what} ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a readable {what} (a JSON {type(value).__name__}, not an object)")
    return value


def read_manifest(path: Path) -> dict:
    """A prepared directory's manifest.

    Raises:
        ValueError: naming the file when it is not a manifest (the list of what is done is lost: move the
            directory aside and prepare into an empty one).
    """
    try:
        manifest = read_json_object(path, "manifest")
    except ValueError as err:
        raise ValueError(f"{err}; prepare into an empty directory") from None
    if not isinstance(manifest.get("shards"), list):
        raise ValueError(f"{path}: not a prepared-data manifest (no shard list); prepare into an empty directory")
    return manifest


def read_failures(directory: str | Path) -> list[dict]:
    """The failure report of a prepared dataset (empty if none)."""
    path = Path(directory) / FAILURES
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class ShardWriter:
    """Write samples into shards; resumable.

    Args:
        directory: output directory (created).
        config: everything that determines the content (hashed; a different config in an existing
            directory is refused, naming both hashes).
        encoders: encoder ids (and what a partial weight load left random), recorded in the manifest.
        shard_size: samples per shard.
    """

    def __init__(self, directory: str | Path, config: dict, encoders: dict | None = None, shard_size: int = 256):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config, self.hash = config, config_hash(config)
        self.shard_size = shard_size
        manifest = self.dir / MANIFEST
        if manifest.exists():
            old = read_manifest(manifest)
            if old.get("config_hash") != self.hash:
                raise ValueError(
                    f"{self.dir}: holds data prepared with config {old.get('config_hash')}, this run has "
                    f"config {self.hash}; use another directory or delete it"
                )
            self.shards = old["shards"]
            self.feature_dims: dict[str, int] = dict(old.get("feature_dims", {}))
        else:
            self.shards, self.feature_dims = [], {}
        self.encoders = dict(encoders or {})
        self.failures = {f["id"]: f for f in read_failures(self.dir)}
        self.repaired = self._verify()  # what was found damaged, set aside and will be prepared again
        self.stored_videos = {d for shard in self.shards for d in shard.get("videos", [])}
        self.done_ids = {i for s in self.shards for i in s["ids"]}
        self.buffer: list[Sample] = []
        self.started = time.time()

    def _verify(self) -> list[str]:
        """Check every listed shard (present, checksum); set aside the bad ones and the shards that refer
        to video features only they held; remove shard files the manifest does not list. Returns one line
        per problem."""
        problems, bad = [], set()  # bad: positions in self.shards
        for s, info in enumerate(self.shards):
            path = self.dir / info["file"]
            if not path.is_file():
                problems.append(f"{path}: listed in the manifest but missing; its {info['samples']} samples are redone")
            elif file_sha256(path) != info["sha256"]:
                problems.append(f"{path}: checksum mismatch; set aside as {path.name}.corrupt, its samples redone")
            elif info["samples"] != len(info["ids"]) or [r["id"] for r in _mapped_records(path)] != info["ids"]:
                problems.append(f"{path}: holds other samples than the manifest lists; set aside, its samples redone")
            else:
                continue
            bad.add(s)
        kept = {d for s, info in enumerate(self.shards) if s not in bad for d in info.get("videos", [])}
        lost = {d for s in bad for d in self.shards[s].get("videos", [])} - kept
        for s, info in enumerate(self.shards):
            if lost and s not in bad and lost & set(self._refs(info)):
                problems.append(f"{self.dir / info['file']}: refers to video features a bad shard held; set aside, "
                                "its samples redone")  # fmt: skip
                bad.add(s)
        for s in bad:
            path = self.dir / self.shards[s]["file"]
            if path.is_file():
                path.replace(path.with_name(path.name + ".corrupt"))
        self.shards = [info for s, info in enumerate(self.shards) if s not in bad]
        listed = {info["file"] for info in self.shards}
        for path in sorted(self.dir.glob("shard-*.pt")):
            if path.name not in listed:
                problems.append(f"{path}: not listed in the manifest (left by a stopped run); removed")
                path.unlink()
        if problems:
            atomic_write(self.dir / MANIFEST, json.dumps(self.manifest(), indent=1).encode("utf-8"))
        return problems

    def _refs(self, info: dict) -> list[str]:
        """The video digests a shard's records refer to (read from the shard for manifests before ``refs``)."""
        if "refs" in info:
            return info["refs"]
        return [r["video_ref"] for r in _mapped_records(self.dir / info["file"]) if "video_ref" in r]

    def _next_file(self) -> str:
        """A shard name no listed, set-aside or leftover file has."""
        taken = [int(p.name[6:11]) for p in self.dir.glob("shard-[0-9][0-9][0-9][0-9][0-9].pt*")]
        taken += [int(info["file"][6:11]) for info in self.shards]
        return f"shard-{max(taken, default=-1) + 1:05d}.pt"

    def adopt(self, directory: Path) -> list[str]:
        """Take over the shards another writer of the same config wrote into ``directory`` (a DDP rank's
        own): each verified shard is moved in under a new name and listed, the failures of
        samples not done are kept, and ``directory`` is removed. Returns one line per shard not taken (its
        samples are prepared again by the next run).

        Raises:
            ValueError: ``directory`` holds data of another config (named).
        """
        other = ShardWriter(directory, self.config, self.encoders, self.shard_size)  # verifies its shards
        problems = list(other.repaired)
        for info in other.shards:
            if self.done_ids.intersection(info["ids"]):
                problems.append(f"{directory / info['file']}: holds samples already done; not taken")
                continue
            name = self._next_file()
            (directory / info["file"]).replace(self.dir / name)
            self.shards.append({**info, "file": name})
            self.done_ids.update(info["ids"])
            self.stored_videos.update(info.get("videos", []))
            for modality, width in other.feature_dims.items():
                self.feature_dims.setdefault(modality, width)
        for sample_id, failure in other.failures.items():
            if sample_id not in self.done_ids:
                self.failures[sample_id] = failure
        for sample_id in self.done_ids.intersection(self.failures):
            del self.failures[sample_id]
        self.flush()
        shutil.rmtree(directory)
        return problems

    def is_done(self, sample_id: str) -> bool:
        return sample_id in self.done_ids

    def add(self, sample: Sample) -> None:
        if sample.id in self.done_ids or any(s.id == sample.id for s in self.buffer):
            raise ValueError(f"sample {sample.id!r} was already written")
        for modality, rows in sample.features.items():  # the model's input widths (data_prep.schema.feature_dims)
            width = int(rows.shape[-1])
            if self.feature_dims.setdefault(modality, width) != width:
                raise ValueError(
                    f"sample {sample.id!r}: {modality} features are {width} wide, the samples before "
                    f"it in {self.dir} {self.feature_dims[modality]}"
                )
        self.buffer.append(sample)
        self.failures.pop(sample.id, None)
        if len(self.buffer) >= self.shard_size:
            self.flush()

    def fail(self, sample_id: str, source: str, stage: str, error: str) -> None:
        """Record a failed input (kept until it succeeds on a later run)."""
        self.failures[sample_id] = {"id": sample_id, "source": source, "stage": stage, "error": error}

    def flush(self) -> None:
        """Write the buffered samples as one shard, then the failure report and the manifest."""
        if self.buffer:
            path = self.dir / self._next_file()
            records, videos = [], {}
            for sample in self.buffer:
                record = _to_record(sample)
                video = record["features"].pop("video", None)
                if video is not None:  # stored once: the first shard holding it keeps it, the rest refer to it
                    record["video_ref"] = digest = _digest(video)
                    if digest not in self.stored_videos:
                        videos.setdefault(digest, video)
                records.append(record)
            atomic_write(path, tensor_bytes({"records": records, "videos": videos}))
            self.stored_videos.update(videos)
            self.shards.append(
                {
                    "file": path.name,
                    "samples": len(records),
                    "videos": sorted(videos),
                    "refs": sorted({r["video_ref"] for r in records if "video_ref" in r}),
                    "sha256": file_sha256(path),
                    "ids": [s.id for s in self.buffer],
                    "leaves": {
                        m: int(sum(s.features[m].shape[0] for s in self.buffer if m in s.features))
                        for m in sorted({m for s in self.buffer for m in s.features})
                    },
                    "dropped": _sum_dicts(s.dropped for s in self.buffer),
                    **{
                        counts: _sum_dicts({str(s.meta[key]): 1} for s in self.buffer if key in s.meta)
                        for key, counts in COUNTED_META.items()
                    },
                }
            )
            self.done_ids.update(s.id for s in self.buffer)
            self.buffer = []
        lines = "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in self.failures.values())
        atomic_write(self.dir / FAILURES, lines.encode("utf-8"))
        atomic_write(self.dir / MANIFEST, json.dumps(self.manifest(), indent=1).encode("utf-8"))

    def manifest(self) -> dict:
        import mmhsa

        return {
            "format": FORMAT_VERSION,
            "config": self.config,
            "config_hash": self.hash,
            "encoders": self.encoders,
            "feature_dims": self.feature_dims,
            "versions": {"mmhsa": mmhsa.__version__, "torch": torch.__version__},
            "counts": {
                "samples": sum(s["samples"] for s in self.shards),
                "shards": len(self.shards),
                "failures": len(self.failures),
                "leaves": _sum_dicts(s["leaves"] for s in self.shards),
                "dropped_by_limits": _sum_dicts(s["dropped"] for s in self.shards),
                **{counts: _sum_dicts(s.get(counts, {}) for s in self.shards) for counts in COUNTED_META.values()},
            },
            "shards": self.shards,
        }

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # also on an exception: what was assembled so far is kept


def _sum_dicts(dicts: Iterable[dict]) -> dict:
    total: dict = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


class ShardDataset(torch.utils.data.Dataset):
    """Samples of a prepared directory, in manifest order. Each shard's checksum is verified when
    it is first read; a mismatch raises ``ValueError`` naming the shard."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        path = self.dir / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{self.dir}: no {MANIFEST} (not a prepared dataset; run make prepare)")
        self.manifest = read_manifest(path)
        if self.manifest.get("format") not in READ_FORMATS:
            raise ValueError(f"{path}: format {self.manifest.get('format')}, this mmhsa reads {READ_FORMATS}")
        for shard in self.manifest["shards"]:
            if shard["samples"] != len(shard["ids"]):
                raise ValueError(
                    f"{path}: {shard['file']} is listed with {shard['samples']} samples and {len(shard['ids'])} "
                    "ids (run the same prepare again: it redoes damaged shards)"
                )
        self.index = [(s, i) for s, shard in enumerate(self.manifest["shards"]) for i in range(shard["samples"])]
        self.ids = [i for shard in self.manifest["shards"] for i in shard["ids"]]
        self.video_shard = {d: s for s, shard in enumerate(self.manifest["shards"]) for d in shard.get("videos", [])}
        self.videos: dict[str, torch.Tensor] = {}  # every video's features read so far, shared by its samples
        self._cached: tuple[int, list] | None = None
        self._checked: set[int] = set()  # samples whose tree was validated (once: it costs ~1 ms)

    def __len__(self) -> int:
        return len(self.index)

    def _shard(self, s: int) -> list:
        """Shard ``s``'s records (its videos go into :attr:`videos`)."""
        if self._cached is None or self._cached[0] != s:
            info = self.manifest["shards"][s]
            path = self.dir / info["file"]
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: shard listed in {self.dir / MANIFEST} is missing (prepare the "
                    "dataset again into an empty directory)"
                )
            actual = file_sha256(path)
            if actual != info["sha256"]:
                raise ValueError(f"{path}: checksum {actual[:12]} does not match the manifest's {info['sha256'][:12]}")
            content = load_tensors(path, "prepared shard")
            if isinstance(content, list):  # format 1: every record holds its video features
                content = {"records": content, "videos": {}}
            ids = [r.get("id") for r in content["records"]]
            if ids != info["ids"]:
                raise ValueError(
                    f"{path}: holds {len(ids)} samples, the manifest lists {len(info['ids'])}"
                    + ("" if len(ids) != len(info["ids"]) else " with other ids")
                    + " (run the same prepare again: it redoes damaged shards)"
                )
            self.videos.update(content["videos"])
            self._cached = (s, content["records"])
        return self._cached[1]

    def _video(self, digest: str) -> torch.Tensor:
        if digest not in self.videos:
            if digest not in self.video_shard:
                raise ValueError(f"{self.dir}: a sample refers to video features {digest} that no shard holds")
            self._shard(self.video_shard[digest])
        return self.videos[digest]

    def __getitem__(self, i: int) -> Sample:
        s, j = self.index[i]
        record = self._shard(s)[j]
        try:
            video = self._video(record["video_ref"]) if "video_ref" in record else None
            sample = _from_record(record, video, validated=i in self._checked)
        except ValueError as err:  # a tree that is not one (a cycle, a parent out of range) or bad metadata
            shard = self.dir / self.manifest["shards"][s]["file"]
            raise ValueError(f"{shard}: sample {record['id']!r}: {err}") from None
        self._checked.add(i)
        return sample
