"""The embedded default corpus: generated videos of moving shapes, with captions and multiple-choice QA.

Each video is a sequence of 2-4 **scenes** joined by hard cuts. In a scene one coloured shape (circle,
square or triangle) moves across a dark, shaded background in one direction (up, down, left, right); no
two scenes of a video share a colour. The corpus is written as real H.264 mp4 files plus annotations in
the formats of the real benchmarks, so preparing it exercises the same decoders and adapters:

    <root>/videos/video0000.mp4 ...
    <root>/msrvtt.json              MSR-VTT style: videos (id, split) and captions (2 per video by default)
    <root>/nextqa/{train,val,test}.csv   NExT-QA style: question, a0..a4, answer, type
    <root>/ground_truth.jsonl       per video: scenes (colour, shape, direction, frames, seconds), cuts
    <root>/corpus.json              the config and counts, written last: present = complete

Captions describe the scenes in order. Question types:

- ``direction``: "which way does the red circle move?" (motion: a bag of frames cannot tell).
- ``colour_after``: "what colour is the shape after the red circle?"; the candidates hold every colour
  of the video, so recognising colours is not enough: the order of scenes decides.
- ``next`` / ``previous``: "what happens after the red circle moves up?"; candidates are the video's
  other scenes and the true answer with the direction changed.

Everything is deterministic in ``(seed, video index)``: a corpus of 10 videos is the first 10 of a
corpus of 1,000. Files are written atomically; re-running completes a partial corpus and skips a
complete one.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "QUESTION_TYPES",
    "SHAPES",
    "CorpusConfig",
    "Scene",
    "VideoSpec",
    "generate",
    "render",
    "video_spec",
]

COLOURS = {
    "red": (225, 40, 35),
    "green": (40, 200, 70),
    "blue": (45, 100, 240),
    "yellow": (240, 225, 40),
    "purple": (160, 60, 210),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}  # (dx, dy) in image axes
BACKGROUNDS = ((30, 30, 38), (95, 95, 45), (20, 85, 95), (100, 55, 30), (25, 35, 100), (105, 105, 110))
PATTERNS = ("gradient", "stripes", "checker", "diagonal", "radial", "horizon")
QUESTION_TYPES = ("direction", "colour_after", "next", "previous")
# Settings that change only the annotations (the scenes, hence the pixels, are drawn before the texts).
TEXT_FIELDS = ("captions_per_video", "questions_per_video")
SPLIT_OF_DIGIT = ["train"] * 7 + ["validate"] + ["test"] * 2  # by video index mod 10: 70/10/20
_CSV_SPLIT = {"train": "train", "validate": "val", "test": "test"}


@dataclass(frozen=True)
class CorpusConfig:
    """What to generate.

    Attributes:
        num_videos: how many videos (>= 1).
        seed: everything is a function of (seed, video index).
        height, width: frame size in pixels.
        fps: frame rate (a low rate keeps preparation cheap; motion stays visible).
        min_scenes, max_scenes: scenes per video (>= 2: order questions need two).
        min_scene_seconds, max_scene_seconds: scene length range.
        captions_per_video: captions per video (distinct templates, at most 3).
        questions_per_video: questions per video (distinct types, at most 4).

    A corpus made with other ``TEXT_FIELDS`` only is completed by writing its annotations again.
    """

    num_videos: int = 1000
    seed: int = 0
    height: int = 128
    width: int = 128
    fps: int = 6
    min_scenes: int = 2
    max_scenes: int = 4
    min_scene_seconds: float = 1.5
    max_scene_seconds: float = 2.5
    captions_per_video: int = 2
    questions_per_video: int = 2

    def __post_init__(self) -> None:
        checks = [
            (self.num_videos >= 1, "num_videos", "must be >= 1"),
            (
                self.height >= 32 and self.width >= 32 and self.height % 2 == 0 and self.width % 2 == 0,
                "height",
                "height and width must be even and >= 32",
            ),
            (self.fps >= 1, "fps", "must be >= 1"),
            (
                2 <= self.min_scenes <= self.max_scenes <= len(COLOURS),
                "min_scenes",
                f"need 2 <= min_scenes <= max_scenes <= {len(COLOURS)}",
            ),
            (
                0 < self.min_scene_seconds <= self.max_scene_seconds,
                "min_scene_seconds",
                "need 0 < min_scene_seconds <= max_scene_seconds",
            ),
            (self.min_scene_seconds * self.fps >= 2, "min_scene_seconds", "a scene needs >= 2 frames (x fps)"),
            (
                1 <= self.captions_per_video <= len(_CAPTION_TEMPLATES),
                "captions_per_video",
                f"must be in 1..{len(_CAPTION_TEMPLATES)}",
            ),
            (
                0 <= self.questions_per_video <= len(QUESTION_TYPES),
                "questions_per_video",
                f"must be in 0..{len(QUESTION_TYPES)}",
            ),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise ValueError(f"CorpusConfig.{name}: {rule}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Scene:
    """One scene: a shape of one colour moving one way over a background, frames [start, end)."""

    colour: str
    shape: str
    direction: str
    background: int  # index into BACKGROUNDS
    pattern: int  # index into PATTERNS
    start_frame: int
    end_frame: int
    x0: float  # centre at the scene's first frame, pixels
    y0: float
    radius: float

    def describe(self, verb: str = "moves") -> str:
        return f"a {self.colour} {self.shape} {verb} {self.direction}"

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class VideoSpec:
    """A video's content: scenes in order, captions and questions (NExT-QA rows without the video id)."""

    id: str
    index: int
    split: str  # "train", "validate" or "test" (MSR-VTT's names)
    num_frames: int
    scenes: tuple[Scene, ...]
    captions: tuple[str, ...]
    questions: tuple[dict, ...]  # {"question", "candidates" (5), "answer" (index), "type"}


# ------------------------------------------------------------------ content
_CAPTION_TEMPLATES = (
    lambda scenes: ", then ".join(s.describe() for s in scenes) + ".",
    lambda scenes: " ".join(f"{w} {s.describe('goes')}." for w, s in zip(_ordinals(len(scenes)), scenes)),
    lambda scenes: "the video shows " + ", followed by ".join(s.describe("moving") for s in scenes) + ".",
)


def _ordinals(n: int) -> list[str]:
    middle = ["next", "then", "after that"]
    return ["first"] + middle[: n - 2] + ["finally"]


def _scenes(rng: np.random.Generator, config: CorpusConfig) -> tuple[list[Scene], int]:
    count = int(rng.integers(config.min_scenes, config.max_scenes + 1))
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    # Consecutive scenes differ in background colour and pattern: a hard cut.
    backgrounds = rng.permutation(len(BACKGROUNDS))[:count]
    patterns = rng.permutation(len(PATTERNS))[:count]
    scenes, frame = [], 0
    for colour, background, pattern in zip(colours, backgrounds, patterns):
        seconds = rng.uniform(config.min_scene_seconds, config.max_scene_seconds)
        length = max(2, round(seconds * config.fps))
        direction = str(rng.choice(list(DIRECTIONS)))
        radius = min(config.height, config.width) * rng.uniform(0.12, 0.16)
        dx, dy = DIRECTIONS[direction]
        travel = 0.45 * (config.width if dx else config.height)
        # Start so that the path stays inside the frame and is centred along the motion.
        along_x = config.width / 2 - dx * travel / 2
        along_y = config.height / 2 - dy * travel / 2
        across = rng.uniform(-0.2, 0.2)
        x0 = along_x if dx else config.width * (0.5 + across)
        y0 = along_y if dy else config.height * (0.5 + across)
        scenes.append(
            Scene(
                str(colour),
                str(rng.choice(SHAPES)),
                direction,
                int(background),
                int(pattern),
                frame,
                frame + length,
                float(x0),
                float(y0),
                float(radius),
            )
        )
        frame += length
    return scenes, frame


def _with_direction(scene: Scene, direction: str) -> str:
    return f"a {scene.colour} {scene.shape} moves {direction}"


def _question(kind: str, scenes: list[Scene], rng: np.random.Generator) -> dict:
    """One multiple-choice question of the given type, 5 distinct candidates, answer shuffled in."""
    if kind == "direction":
        scene = scenes[int(rng.integers(len(scenes)))]
        question = f"which way does the {scene.name} move?"
        answer, others = scene.direction, [d for d in DIRECTIONS if d != scene.direction] + ["it does not move"]
    elif kind == "colour_after":
        i = int(rng.integers(len(scenes) - 1))
        question = f"what colour is the shape after the {scenes[i].name}?"
        answer = scenes[i + 1].colour
        present = [s.colour for s in scenes if s.colour != answer]  # the video's own colours come first
        absent = [c for c in rng.permutation(list(COLOURS)) if c not in present and c != answer]
        others = present + absent
    else:  # next / previous
        i = int(rng.integers(len(scenes) - 1)) + (kind == "previous")
        target = scenes[i + 1] if kind == "next" else scenes[i - 1]
        word = "after" if kind == "next" else "before"
        question = f"what happens {word} the {scenes[i].name} moves {scenes[i].direction}?"
        answer = target.describe()
        turned = [_with_direction(target, d) for d in rng.permutation(list(DIRECTIONS)) if d != target.direction]
        own = [s.describe() for s in scenes if s is not target]  # the asked-about scene included
        others = list(dict.fromkeys(own[:2] + turned))
    candidates = [answer] + list(others[:4])
    if len(candidates) != 5 or len(set(candidates)) != 5:
        raise AssertionError(f"question {question!r}: candidates {candidates} are not 5 distinct answers")
    order = rng.permutation(5)
    shuffled = [candidates[j] for j in order]
    return {"question": question, "candidates": shuffled, "answer": int(np.flatnonzero(order == 0)[0]), "type": kind}


def video_spec(index: int, config: CorpusConfig) -> VideoSpec:
    """The content of video ``index`` (a pure function of the seed and the index)."""
    rng = np.random.default_rng([config.seed, index])
    scenes, num_frames = _scenes(rng, config)
    templates = rng.permutation(len(_CAPTION_TEMPLATES))[: config.captions_per_video]
    captions = tuple(_CAPTION_TEMPLATES[t](scenes) for t in sorted(templates))
    kinds = rng.permutation(QUESTION_TYPES)[: config.questions_per_video]
    questions = tuple(_question(str(k), scenes, rng) for k in kinds)
    return VideoSpec(
        f"video{index:04d}", index, SPLIT_OF_DIGIT[index % 10], num_frames, tuple(scenes), captions, questions
    )


# ------------------------------------------------------------------ pixels
def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if shape == "square":
        half = 0.85 * r  # same area as the circle, roughly
        return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    # triangle, apex up: the half-width grows from 0 at the top to 1.15 r at the bottom
    top, bottom = cy - r, cy + r
    return (y >= top) & (y <= bottom) & (np.abs(x - cx) <= 1.15 * r * (y - top) / (2 * r))


def _pattern(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Brightness factor in [0.6, 1.4] over the frame (x, y in [0, 1)): scenes differ in texture too."""
    if name == "gradient":
        return 0.6 + 0.8 * y
    if name == "stripes":
        return np.where((y * 8).astype(int) % 2 == 0, 0.7, 1.3)
    if name == "checker":
        return np.where(((x * 4).astype(int) + (y * 4).astype(int)) % 2 == 0, 0.7, 1.3)
    if name == "diagonal":
        return np.where(((x + y) * 6).astype(int) % 2 == 0, 0.75, 1.25)
    if name == "radial":
        return 1.4 - 1.1 * np.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2)
    return np.where(y < 0.45, 1.35, 0.65)  # horizon


def render(spec: VideoSpec, config: CorpusConfig) -> np.ndarray:
    """The video's frames: [num_frames, height, width, 3] uint8 RGB."""
    h, w = config.height, config.width
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((spec.num_frames, h, w, 3), np.uint8)
    for scene in spec.scenes:
        shade = _pattern(PATTERNS[scene.pattern], x / w, y / h)[..., None]
        background = np.clip(np.array(BACKGROUNDS[scene.background], np.float32) * shade, 0, 255).astype(np.uint8)
        dx, dy = DIRECTIONS[scene.direction]
        travel = 0.45 * (w if dx else h)
        length = scene.end_frame - scene.start_frame
        for t in range(length):
            step = travel * t / (length - 1)
            cx, cy = scene.x0 + dx * step, scene.y0 + dy * step
            frame = frames[scene.start_frame + t]
            frame[:] = background
            frame[_shape_mask(scene.shape, x, y, cx, cy, scene.radius)] = COLOURS[scene.colour]
    return frames


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """H.264/yuv420p mp4, single-threaded and without x264's SIMD code (bit-exact across runs), written to a
    temp file then renamed.

    With SIMD, some videos came out as one of 2-4 bitstreams in 8 encodings within one process (measured; the
    decoded frames differ slightly, so would the features prepared from them); x264's C code gives one.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------ annotations
def _msrvtt(specs: list[VideoSpec], config: CorpusConfig) -> str:
    videos = [
        {
            "video_id": s.id,
            "id": s.index,
            "split": s.split,
            "category": 0,
            "url": "",
            "start time": 0.0,
            "end time": s.num_frames / config.fps,
        }
        for s in specs
    ]
    sentences = [
        {"video_id": s.id, "caption": c, "sen_id": n}
        for n, (s, c) in enumerate((s, c) for s in specs for c in s.captions)
    ]
    info = {"description": "mmhsa synthetic corpus (moving shapes)", "config": asdict(config)}
    return json.dumps({"info": info, "videos": videos, "sentences": sentences}, indent=1)


def _nextqa(specs: list[VideoSpec], config: CorpusConfig, split: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["video", "frame_count", "width", "height", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"]
    )
    for s in specs:
        if _CSV_SPLIT[s.split] != split:
            continue
        for qid, q in enumerate(s.questions):
            writer.writerow(
                [
                    s.id,
                    s.num_frames,
                    config.width,
                    config.height,
                    q["question"],
                    q["answer"],
                    qid,
                    q["type"],
                    *q["candidates"],
                ]
            )
    return out.getvalue()


def _ground_truth(spec: VideoSpec, config: CorpusConfig) -> dict:
    scenes = [
        {**asdict(s), "start_seconds": s.start_frame / config.fps, "end_seconds": s.end_frame / config.fps}
        for s in spec.scenes
    ]
    return {
        "video_id": spec.id,
        "split": spec.split,
        "num_frames": spec.num_frames,
        "fps": config.fps,
        "cuts": [s.start_frame for s in spec.scenes[1:]],
        "scenes": scenes,
        "captions": list(spec.captions),
        "questions": list(spec.questions),
    }


def generate(root: str | os.PathLike, config: CorpusConfig = CorpusConfig(), progress: bool = False) -> dict:
    """Write the corpus under ``root`` (created); skip it if a complete one with this config is there.

    Returns:
        ``corpus.json``'s content: the config, counts and the seconds it took.

    Raises:
        ValueError: ``root`` holds a corpus made with another config (named, with both configs).
    """
    root = Path(root)
    done = root / "corpus.json"
    if done.exists():
        existing = json.loads(done.read_text(encoding="utf-8"))
        if existing["config"] == asdict(config):
            return existing
        pixels = {k: v for k, v in asdict(config).items() if k not in TEXT_FIELDS}
        if {k: v for k, v in existing["config"].items() if k not in TEXT_FIELDS} != pixels:
            raise ValueError(
                f"{root}: holds a synthetic corpus made with {existing['config']}, not {asdict(config)}; "
                "use another directory or delete it"
            )
        # Only the texts differ: the videos are the same pixels (drawn before the texts), so they are kept and
        # the annotations written again.
        done.unlink()
    started = time.perf_counter()
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "nextqa").mkdir(exist_ok=True)
    specs = [video_spec(i, config) for i in range(config.num_videos)]
    written = 0
    for spec in _progress(specs, progress, "generate"):
        path = root / "videos" / f"{spec.id}.mp4"
        if not path.exists():  # written atomically: an existing file is complete
            _write_mp4(path, render(spec, config), config.fps)
            written += 1
    _write_text(root / "msrvtt.json", _msrvtt(specs, config))
    for split in ("train", "val", "test"):
        _write_text(root / "nextqa" / f"{split}.csv", _nextqa(specs, config, split))
    _write_text(root / "ground_truth.jsonl", "".join(json.dumps(_ground_truth(s, config)) + "\n" for s in specs))
    summary = {
        "config": asdict(config),
        "videos": len(specs),
        "written_now": written,
        "frames": sum(s.num_frames for s in specs),
        "captions": sum(len(s.captions) for s in specs),
        "questions": sum(len(s.questions) for s in specs),
        "splits": {k: sum(s.split == k for s in specs) for k in ("train", "validate", "test")},
        "seconds": round(time.perf_counter() - started, 2),
    }
    _write_text(done, json.dumps(summary, indent=1))
    return summary


def _progress(items, enabled: bool, what: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=what, unit="video")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the embedded synthetic video-text corpus.")
    parser.add_argument("root", help="output directory")
    defaults = CorpusConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    root = args.pop("root")
    summary = generate(root, CorpusConfig(**args), progress=True)
    print(
        f"{root}: {summary['videos']} videos ({summary['frames']} frames), {summary['captions']} captions, "
        f"{summary['questions']} questions, splits {summary['splits']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
