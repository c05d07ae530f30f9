import os
import random
import re
import subprocess

import av
import imageio_ffmpeg
import numpy as np
import pytest
import torch

from data_prep.video import Video, VideoError, open_video, resize
from tests.data_prep.videos import N_FRAMES, frame_ids, indexed_frames, write_audio_only

DECODERS = ["decord", "pyav"]


def expected_rotated(height: int, width: int, rotation: int) -> torch.Tensor:
    """Frame 0 of :func:`indexed_frames` as a player shows it: turned counterclockwise by ``rotation``."""
    return torch.rot90(torch.from_numpy(indexed_frames(1, height, width)[0]), rotation // 90, dims=(0, 1))


# ------------------------------------------------------------------ good videos
@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_mp4_frame_table_and_frames(mp4, backend):
    video = open_video(mp4, backend)
    assert isinstance(video, Video) and video.backend == ("pyav" if backend == "pyav" else "decord")
    assert (video.num_frames, video.width, video.height, video.rotation) == (N_FRAMES, 64, 48, 0)
    assert video.fps == pytest.approx(25)
    assert video.duration == pytest.approx(N_FRAMES / 25)
    assert video.timestamps.dtype == torch.float64
    assert torch.allclose(video.timestamps, torch.arange(N_FRAMES, dtype=torch.float64) / 25)
    frames = video.frames(range(N_FRAMES))
    assert frames.shape == (N_FRAMES, 48, 64, 3) and frames.dtype == torch.uint8
    assert frame_ids(frames) == list(range(N_FRAMES))
    assert frame_ids(video.frames([47, 0, 5, 5, 20])) == [47, 0, 5, 5, 20]  # any order, repeats kept
    assert video.frames([]).shape == (0, 48, 64, 3)
    for bad in (N_FRAMES, -1):
        with pytest.raises(IndexError, match=f"frame {bad} is outside"):
            video.frames([0, bad])


def test_backends_give_the_same_pixels(mp4):
    a = open_video(mp4, "decord").frames(range(N_FRAMES)).int()
    b = open_video(mp4, "pyav").frames(range(N_FRAMES)).int()
    assert (a - b).abs().max() <= 2  # both are FFmpeg's swscale; measured identical here


@pytest.mark.parametrize("backend", DECODERS)
@pytest.mark.parametrize(
    "name, codec, pix_fmt",
    [
        ("seek.mp4", "libx264", "yuv420p"),
        ("seek.mkv", "libx264", "yuv420p"),
        ("seek.webm", "libvpx-vp9", "yuv420p"),
        ("seek.avi", "mpeg4", "yuv420p"),
    ],
)
def test_random_access_equals_sequential_decoding(make_video, backend, name, codec, pix_fmt):
    path = make_video(name, codec=codec, pix_fmt=pix_fmt, options={"g": "8"})
    video = open_video(path, backend)
    everything = video.frames(range(N_FRAMES))
    rng = random.Random(0)
    for _ in range(12):
        indices = rng.sample(range(N_FRAMES), rng.randint(1, 5))
        assert torch.equal(video.frames(indices), everything[indices])


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
@pytest.mark.parametrize("name, codec", [("c.mkv", "libx264"), ("c.webm", "libvpx-vp9"), ("c.avi", "mpeg4")])
def test_containers(make_video, backend, name, codec):
    video = open_video(make_video(name, codec=codec, options={"b": "2M"}), backend)  # MPEG-4 Part 2 needs the bits
    assert video.backend == ("pyav" if backend == "pyav" else "decord")  # decord reads all three
    assert (video.num_frames, video.width, video.height) == (N_FRAMES, 64, 48)
    assert torch.allclose(video.timestamps, torch.arange(N_FRAMES, dtype=torch.float64) / 25)
    assert frame_ids(video.frames(range(N_FRAMES))) == list(range(N_FRAMES))


def test_gif_falls_back_to_pyav(make_video):
    grey = indexed_frames(N_FRAMES, 48, 64)[..., 0]  # a grey palette keeps the levels exact
    path = make_video("anim.gif", grey, codec="gif", pix_fmt="gray")
    video = open_video(path)
    assert video.backend == "pyav"  # decord cannot open GIFs
    assert (video.num_frames, video.width, video.height) == (N_FRAMES, 64, 48)
    assert torch.allclose(video.timestamps, torch.arange(N_FRAMES, dtype=torch.float64) / 25)
    assert frame_ids(video.frames([30, 2, 47])) == [30, 2, 47]
    with pytest.raises(VideoError, match="decord cannot open it.*backend 'pyav' or 'auto'"):
        open_video(path, "decord")


@pytest.mark.parametrize("backend", DECODERS)
@pytest.mark.parametrize("name, codec", [("odd.mkv", "ffv1"), ("odd.mp4", "libx264")])
def test_odd_size(make_video, backend, name, codec):
    original = indexed_frames(8, 9, 17)
    video = open_video(make_video(name, original, codec=codec, pix_fmt="yuv444p"), backend)  # 4:2:0 needs even sizes
    assert (video.width, video.height, video.num_frames) == (17, 9, 8)
    frames = video.frames(range(8))
    assert frames.shape == (8, 9, 17, 3)
    assert (frames.float() - torch.from_numpy(original).float()).abs().mean() < 3


@pytest.mark.parametrize("backend", ["pyav", "auto"])
@pytest.mark.parametrize("width", [64, 48])
def test_grayscale(make_video, backend, width):
    grey = indexed_frames(8, 32, width)[..., 0]
    video = open_video(make_video(f"grey{width}.mkv", grey, codec="ffv1", pix_fmt="gray"), backend)
    frames = video.frames(range(8))
    assert frames.shape == (8, 32, width, 3)
    assert torch.equal(frames, torch.from_numpy(grey)[..., None].expand(-1, -1, -1, 3))  # lossless, 3 channels
    # decord 0.6.0 fails on 48-wide frames it must convert: "auto" switched to PyAV, pixels unchanged.
    assert video.backend == ("pyav" if backend == "pyav" or width == 48 else "decord")


@pytest.mark.parametrize("backend", DECODERS)
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata(make_video, backend, rotation):
    video = open_video(make_video(f"rot{rotation}.mp4", indexed_frames(4, 32, 64), rotation=rotation), backend)
    assert video.rotation == rotation
    assert (video.width, video.height) == ((32, 64) if rotation in (90, 270) else (64, 32))  # displayed size
    frame = video.frames([0])[0]
    assert frame.shape == (video.height, video.width, 3)
    assert (frame.float() - expected_rotated(32, 64, rotation).float()).abs().mean() < 4


@pytest.mark.parametrize("backend", DECODERS)
def test_rotation_matches_ffmpeg_player(make_video, backend):
    """FFmpeg's command line turns frames upright by default: the same picture a player shows."""
    path = make_video("rot90.mp4", indexed_frames(4, 32, 64), rotation=90)
    shown = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(path),
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    shown = torch.frombuffer(bytearray(shown), dtype=torch.uint8).reshape(64, 32, 3)
    assert (open_video(path, backend).frames([0])[0].int() - shown.int()).abs().max() <= 2


def test_auto_switches_to_pyav_when_decord_fails_mid_way(make_video):
    path = make_video("rot90_small.mp4", indexed_frames(4, 24, 32), rotation=90)
    video = open_video(path)
    assert video.backend == "decord"  # decord opens it, then fails to rotate 24-wide frames
    frame = video.frames([0])[0]
    assert video.backend == "pyav"
    assert (frame.float() - expected_rotated(24, 32, 90).float()).abs().mean() < 4
    with pytest.raises(VideoError, match="decord cannot decode it .*backend 'pyav' or 'auto' can"):
        open_video(path, "decord").frames([0])


PTS_MS = [0, 40, 80, 200, 240, 1000, 1040, 1500]


@pytest.mark.parametrize("backend", DECODERS)
@pytest.mark.parametrize("name", ["vfr.mp4", "vfr.mkv"])
def test_variable_frame_rate_timestamps(make_video, backend, name):
    video = open_video(make_video(name, indexed_frames(8, 32, 32), pts_ms=PTS_MS, options={"bf": "2"}), backend)
    assert video.num_frames == 8
    assert torch.allclose(video.timestamps, torch.tensor(PTS_MS, dtype=torch.float64) / 1000, atol=1e-9)
    assert video.duration == pytest.approx(1.54)  # the last frame lasts as long as the muxer says (40 ms)
    assert video.fps == pytest.approx(8 / 1.54)
    assert frame_ids(video.frames(range(8))) == list(range(8))
    assert frame_ids(video.frames([6, 3])) == [6, 3]


@pytest.mark.parametrize("backend", DECODERS)
def test_one_frame_video(make_video, backend):
    video = open_video(make_video("one.mp4", indexed_frames(1, 32, 32)), backend)
    assert (video.num_frames, video.duration, video.fps) == (1, pytest.approx(0.04), pytest.approx(25))
    assert video.timestamps.tolist() == [0.0]
    assert frame_ids(video.frames([0, 0])) == [0, 0]


def test_stream_without_timestamps(make_video):
    """A raw H.264 elementary stream has no presentation times: frames are evenly spaced at its rate."""
    path = make_video("raw.h264", container_format="h264", options={"bf": "2"})
    video = open_video(path)
    assert video.backend == "pyav"  # decord cannot open raw streams
    assert torch.allclose(video.timestamps, torch.arange(N_FRAMES, dtype=torch.float64) / 25)
    assert frame_ids(video.frames([40, 3, 17])) == [40, 3, 17]


@pytest.mark.parametrize("backend", DECODERS)
def test_space_and_non_ascii_path(mp4, media, backend):
    path = media / "a clip — été 東京.mp4"
    path.write_bytes(mp4.read_bytes())
    video = open_video(path, backend)
    assert frame_ids(video.frames([0, 47])) == [0, 47]


# ------------------------------------------------------------------ bad inputs
@pytest.fixture(scope="session")
def bad(media, mp4, make_video):
    """Bad inputs by name: (path, what the message must say)."""
    folder = media / "bad"
    folder.mkdir()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("This is a text file, not a video.\n" * 20)
    write_audio_only(folder / "speech.m4a")
    whole = mp4.read_bytes()  # moov (the index) at the end: cutting it loses the index
    (folder / "cut_index.mp4").write_bytes(whole[: len(whole) // 2])
    faststart = make_video("faststart.mp4", container_options={"movflags": "faststart"}, options={"g": "8"})
    data = faststart.read_bytes()
    (folder / "cut_data.mp4").write_bytes(data[: len(data) * 2 // 3])
    mkv = make_video("whole.mkv").read_bytes()
    (folder / "cut.mkv").write_bytes(mkv[: len(mkv) * 2 // 3])
    return {
        "empty": (folder / "empty.mp4", r"empty file \(0 bytes\)"),
        "text": (folder / "notes.mp4", "not a media file"),
        "audio": (folder / "speech.m4a", r"no video stream \(it has only audio\)"),
        "cut_index": (folder / "cut_index.mp4", "truncated or corrupt MP4/MOV file: FFmpeg cannot read its header"),
        "cut_data": (
            folder / "cut_data.mp4",
            rf"truncated or corrupt: the container lists {N_FRAMES} frames but the data breaks off at frame \d+",
        ),
        "cut_mkv": (
            folder / "cut.mkv",
            r"truncated or corrupt: the container says the video lasts 1.920 s but its "
            r"frames end at \d\.\d+ s",
        ),
        "missing": (folder / "nothing here.mp4", "no such file"),
        "directory": (folder, "is a directory, not a video file"),
    }


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
@pytest.mark.parametrize("case", ["empty", "text", "audio", "cut_index", "cut_data", "cut_mkv", "missing", "directory"])
def test_bad_inputs_raise_video_error(bad, backend, case):
    path, message = bad[case]
    with pytest.raises(VideoError, match=message) as error:
        open_video(path, backend)
    assert isinstance(error.value, ValueError) and f"video '{path}'" in str(error.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(mp4, media):
    path = media / "locked.mp4"
    path.write_bytes(mp4.read_bytes())
    path.chmod(0)
    with pytest.raises(VideoError, match="permission denied"):
        open_video(path)


def overwrite_packet(path, frame: int, out_name: str):
    """A copy of ``path`` with the data of one frame (in presentation order) replaced by random bytes."""
    with av.open(str(path)) as container:
        packets = sorted((p.pts, p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size)
    _, position, size = packets[frame]
    data = bytearray(path.read_bytes())
    data[position : position + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    corrupt = path.with_name(out_name)
    corrupt.write_bytes(bytes(data))
    return corrupt


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_corrupt_data_names_the_frame(make_video, backend):
    """Garbage over one keyframe's data (frame 24): frames before it decode, decoding through it fails."""
    corrupt = overwrite_packet(make_video("to_corrupt.mp4", options={"g": "8"}), 24, "corrupt.mp4")
    video = open_video(corrupt, backend)
    with pytest.raises(VideoError, match=r"truncated or corrupt: decoding fails at frame (\d+) of 48") as error:
        video.frames(range(N_FRAMES))
    assert str(corrupt) in str(error.value)
    failed = int(re.search(r"fails at frame (\d+)", str(error.value)).group(1))
    assert 0 < failed <= 24
    try:
        before = open_video(corrupt, backend).frames(range(failed))
    except VideoError as err:  # decord's decoding thread reads ahead into the damage, depending on timing
        assert backend == "decord" and "decord cannot decode it" in str(err) and "'pyav' or 'auto' can" in str(err)
        before = open_video(corrupt, "auto").frames(range(failed))
    assert frame_ids(before) == list(range(failed))


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_corrupt_first_frame(make_video, backend):
    corrupt = overwrite_packet(make_video("to_corrupt.mp4", options={"g": "8"}), 0, "corrupt0.mp4")
    with pytest.raises(VideoError, match="corrupt: frame 0 cannot be decoded"):
        open_video(corrupt, backend)


def test_unknown_backend(mp4):
    with pytest.raises(ValueError, match="backend must be one of"):
        open_video(mp4, "opencv")


# ------------------------------------------------------------------ resize
def test_resize():
    frames = torch.from_numpy(indexed_frames(3, 240, 320))
    small = resize(frames, (27, 48))
    assert small.shape == (3, 27, 48, 3) and small.dtype == torch.uint8
    as_float = resize(frames, (27, 48), dtype=torch.float32)
    assert as_float.dtype == torch.float32 and 0 <= as_float.min() and as_float.max() <= 1
    assert torch.equal((as_float * 255).round().to(torch.uint8), small)
    flat = torch.full((2, 9, 17, 3), 77, dtype=torch.uint8)
    assert torch.equal(resize(flat, (112, 112)), torch.full((2, 112, 112, 3), 77, dtype=torch.uint8))
    assert frame_ids(small) == [0, 1, 2]  # antialiased: the corner block does not take over the median
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\] uint8"):
        resize(frames.float(), (27, 48))
    with pytest.raises(ValueError, match="floating dtype"):
        resize(frames, (27, 48), dtype=torch.int32)
