"""The benchmark readers on replicas of the real downloads (tests/data_prep/replicas.py), and the documented
commands (prepare, fit, test, predict) run on them."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from data_prep.datasets import read_activitynet, read_didemo, read_msrvtt, read_msvd, read_nextqa
from pipelines.cli import main
from pipelines.train.metrics import NEXTQA_TYPES, nextqa_accuracy, qa_accuracy
from tests.data_prep import replicas


def by_split(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item.split] = out.get(item.split, 0) + 1
    return out


# ------------------------------------------------------------------ MSR-VTT
def test_msrvtt_official_release(tmp_path):
    root = replicas.msrvtt_official(tmp_path / "MSR-VTT")
    items, problems = read_msrvtt(root, root)  # the folder: both JSON files, videos below it
    assert problems == [] and by_split(items) == {"train": 4, "val": 2, "test": 3}
    assert all(len(i.captions) == 20 for i in items)  # every caption, test videos too ("full")
    assert {i.video.parent.name for i in items if i.split == "test"} == {"TestVideo"}
    one, _ = read_msrvtt(root / "train_val_videodatainfo.json", root)  # one file: its own splits
    assert by_split(one) == {"train": 4, "val": 2}
    with pytest.raises(ValueError, match="reads CLIP4Clip's folder"):
        read_msrvtt(root / "train_val_videodatainfo.json", root, "9k-1kA")
    with pytest.raises(FileNotFoundError, match="MSRVTT_data.json, MSRVTT_train.9k.csv, MSRVTT_JSFUSION_test.csv"):
        read_msrvtt(root, root, "9k-1kA")


def test_msrvtt_clip4clip_protocols(tmp_path):
    folder, videos = replicas.msrvtt_clip4clip(tmp_path)
    items, problems = read_msrvtt(folder, videos)  # 9k-1kA by default
    assert problems == [] and by_split(items) == {"train": 6, "test": 3}
    train = [i for i in items if i.split == "train"]
    test = [i for i in items if i.split == "test"]
    assert all(len(i.captions) == 20 for i in train)  # every caption of a training video
    assert [i.captions for i in test] == [[f"the one test sentence of {i.id}"] for i in test]  # JSFusion: one each
    items, _ = read_msrvtt(folder, videos, "7k-1kA")
    assert by_split(items) == {"train": 5, "test": 3}
    items, _ = read_msrvtt(folder, videos, "full")  # MSRVTT_data.json's own splits, all captions
    assert by_split(items) == {"train": 6, "test": 3} and all(len(i.captions) == 20 for i in items)
    with pytest.raises(ValueError, match="protocol must be one of"):
        read_msrvtt(folder, videos, "1kB")
    (folder / "MSRVTT_train.7k.csv").unlink()
    with pytest.raises(FileNotFoundError, match="protocol 7k-1kA needs MSRVTT_train.7k.csv"):
        read_msrvtt(folder, videos, "7k-1kA")


def test_msrvtt_missing_and_ambiguous_videos_are_problems(tmp_path):
    folder, videos = replicas.msrvtt_clip4clip(tmp_path)
    (videos / "video0.mp4").unlink()
    (videos.parent / "other").mkdir()
    shutil.copyfile(videos / "video1.mp4", videos.parent / "other" / "video1.mp4")  # a second file named video1
    items, problems = read_msrvtt(folder, videos.parent)
    messages = dict(problems)
    assert "video0" in messages and "not found" in messages["video0"]
    assert "2 files of that name" in messages["video1"]
    assert by_split(items) == {"train": 4, "test": 3}


# ------------------------------------------------------------------ NExT-QA
def test_nextqa_as_distributed(tmp_path):
    folder, videos = replicas.nextqa(tmp_path)
    files = {split: folder / f"{split}.csv" for split in ("train", "val", "test")}
    items, problems = read_nextqa(files, videos)  # the map beside the CSVs puts each video in its folder
    assert problems == [] and by_split(items) == {"train": 12, "val": 8, "test": 8}
    first = items[0]
    assert first.id == "2909445186_0" and first.video.parent.name == "1000"
    assert first.question == "why did the man wave 0?" and first.candidates[1] == "the dog"  # stray spaces
    assert first.candidates[0] == first.candidates[2] and first.candidates[3] == "a café owner"
    assert {i.type for i in items} == set(NEXTQA_TYPES)
    (folder / "map_vid_vidorID.json").unlink()  # without the map: found below the video folder
    again, problems = read_nextqa(files, videos)
    assert problems == [] and [i.video for i in again] == [i.video for i in items]
    (folder / "map_vid_vidorID.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not NExT-QA's video map"):
        read_nextqa(files, videos)


def test_nextqa_metrics_as_eval_mc_groups_them():
    g = torch.Generator().manual_seed(0)
    types = [list(NEXTQA_TYPES)[i % 8] for i in range(200)]
    correct = (torch.rand(200, generator=g) < 0.6).double()
    got = nextqa_accuracy(correct, types)
    for group in "CTD":  # pooled over the questions of the group (TP is temporal)
        sel = [t[0] == group for t in types]
        assert got[f"Acc@{group}"] == pytest.approx(float(correct[torch.tensor(sel)].mean()))
    sel = torch.tensor([t in ("TN", "TP") for t in types])
    assert got["Bef&Aft"] == pytest.approx(float(correct[sel].mean()))
    assert set(got) == {"Acc@C", "Acc@T", "Acc@D", "Why", "How", "Bef&Aft", "When", "Cnt", "Loc", "Other"}
    scores = torch.nn.functional.one_hot(torch.zeros(3, dtype=torch.long), 5).float()
    assert "Acc@C" not in qa_accuracy(scores, torch.zeros(3, dtype=torch.long), ["direction", "next", "next"])


# ------------------------------------------------------------------ the documented commands
SMALL_MODEL = ["--model.init_args.dim", "32", "--model.init_args.depth", "1", "--model.init_args.heads", "2",
               "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]  # fmt: skip


@pytest.mark.slow
def test_nextqa_prepare_fit_test_predict(tmp_path, capsys):
    replicas.nextqa(tmp_path / "download")
    out = tmp_path / "prepared"
    # the recipe's command, with --output so that the test writes into its own folder
    assert main(["prepare", "-c", "configs/data/nextqa.yaml", "--data_root", str(tmp_path / "download"),
                         "--output", str(out), "--progress", "false"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "task qa: 28 samples (train 12, val 8, test 8)" in printed
    run = ["-c", "configs/nextqa_qa.yaml", "--data.data_dir", str(out / "qa"), "--trainer.default_root_dir",
           str(tmp_path / "run"), *SMALL_MODEL]  # fmt: skip
    assert main(["fit", *run]) == 0
    best = next((tmp_path / "run").rglob("best-*.ckpt"))
    capsys.readouterr()
    assert main(["test", *run, "--ckpt_path", str(best)]) == 0
    printed = capsys.readouterr().out
    for name in ("test/Acc@C", "test/Acc@T", "test/Acc@D", "test/acc", "test/Bef&Aft", "test/Why"):
        assert name in printed
    assert main(["predict", *run, "--ckpt_path", str(best)]) == 0
    scored = json.loads((tmp_path / "run" / "predictions" / "eval_mc.json").read_text())
    assert len(scored) == 8 and all(set(v) == {"prediction", "answer"} for v in scored.values())
    assert "2909445186_0" not in scored and all(k.count("_") == 1 for k in scored)  # <video>_<qid> of test


@pytest.mark.slow
def test_msrvtt_protocols_prepare_and_train(tmp_path, capsys):
    folder, _ = replicas.msrvtt_clip4clip(tmp_path / "msrvtt")
    replicas.msrvtt_official(tmp_path / "MSR-VTT")
    recipes = {
        "9k-1kA": ([], tmp_path / "msrvtt", "train 6, test 3"),
        "7k-1kA": (["-c", "configs/data/msrvtt_7k.yaml"], tmp_path / "msrvtt", "train 5, test 3"),
        "full": (["-c", "configs/data/msrvtt_official.yaml"], tmp_path / "MSR-VTT", "train 4, val 2, test 3"),
    }
    for protocol, (overlay, root, splits) in recipes.items():  # fmt: skip
        out = tmp_path / f"prepared-{protocol}"
        assert main(["prepare", "-c", "configs/data/msrvtt.yaml", *overlay, "--data_root", str(root),
                             "--output", str(out), "--progress", "false"]) == 0  # fmt: skip
        assert f"({splits})" in capsys.readouterr().out, protocol
        manifest = json.loads((out / "retrieval" / "manifest.json").read_text())
        assert manifest["config"]["task"]["protocol"] == protocol
        assert manifest["counts"]["dropped_by_limits"].get("captions", 0) == 0  # all 20 captions kept
    run = ["-c", "configs/msrvtt_retrieval.yaml", "--data.data_dir", str(tmp_path / "prepared-9k-1kA" / "retrieval"),
           "--trainer.default_root_dir", str(tmp_path / "run"), "--data.batch_size", "4", *SMALL_MODEL]  # fmt: skip
    assert main(["fit", *run]) == 0  # validates on the 1kA test videos (the recipe's val_split: test)
    capsys.readouterr()
    assert main(["test", *run, "--ckpt_path", str(next((tmp_path / "run").rglob("best-*.ckpt")))]) == 0
    printed = capsys.readouterr().out
    for name in ("test/t2v_R@1", "test/t2v_R@5", "test/t2v_R@10", "test/t2v_MdR", "test/t2v_MnR"):
        assert name in printed
    # the official protocol has a validation split, 9k-1kA none: asking for it is a usage error, not a traceback
    assert main(["fit", *run, "--data.val_split", "val"]) == 2
    assert "no samples in split 'val'" in capsys.readouterr().err
    full = [*run, "--data.data_dir", str(tmp_path / "prepared-full" / "retrieval"), "--data.val_split", "val"]
    assert main(["fit", *full, "--trainer.default_root_dir", str(tmp_path / "run-full")]) == 0


def test_prepare_names_the_missing_protocol_file(tmp_path, capsys):
    folder, _ = replicas.msrvtt_clip4clip(tmp_path)
    (folder / "MSRVTT_JSFUSION_test.csv").unlink()
    code = main(["prepare", "-c", "configs/data/msrvtt.yaml", "--data_root", str(tmp_path), "--output",
                         str(tmp_path / "out"), "--progress", "false"])  # fmt: skip
    assert code == 2 and "MSRVTT_JSFUSION_test.csv" in capsys.readouterr().err


def test_recipes_name_files_relative_to_data_root():
    for recipe in Path("configs/data").glob("*.yaml"):
        text = recipe.read_text()
        assert "--tasks.0" not in text, f"{recipe}: documents an override that does not parse"


# ------------------------------------------------------------------ MSVD, DiDeMo, ActivityNet Captions
def test_msvd(tmp_path):
    folder, clips = replicas.msvd(tmp_path)
    items, problems = read_msvd(folder, clips)
    assert problems == [] and by_split(items) == {"train": 3, "val": 1, "test": 2}
    assert items[0].captions[0] == "a man is slicing a tomato 0" and items[0].video.suffix == ".avi"
    assert [len(i.captions) for i in items] == [3, 4, 5, 3, 3, 4]  # every caption of a video
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    (folder / "raw-captions.pkl").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        read_msvd(folder, clips)


def test_didemo_paragraphs(tmp_path):
    folder, videos = replicas.didemo(tmp_path)
    items, problems = read_didemo(folder, videos)
    assert problems == [] and by_split(items) == {"train": 3, "val": 1, "test": 2}
    assert items[0].captions == [" ".join(f"the camera pans left {d}" for d in range(4))]  # one paragraph
    assert items[0].id.endswith(".mov") and items[1].video.name.endswith(".avi.mp4")  # as the downloader saves


def test_activitynet_paragraphs(tmp_path):
    folder, videos = replicas.activitynet(tmp_path)
    items, problems = read_activitynet(folder, videos)
    assert problems == [] and by_split(items) == {"train": 3, "test": 2}  # val_1 is the test split
    assert items[0].id == "v_QOlSCBRm000" and items[0].video.name == "QOlSCBRm000.mp4"
    assert items[0].captions == ["A young woman is seen standing 0. She then dances."]
    (videos / "QOlSCBRm001.mp4").rename(videos / "v_QOlSCBRm001.mp4")  # named with its v_: found too
    items, problems = read_activitynet(folder, videos)
    assert problems == [] and items[1].video.name == "v_QOlSCBRm001.mp4"


@pytest.mark.slow
@pytest.mark.parametrize(
    "benchmark, splits",
    [("msvd", "train 3, val 1, test 2"), ("didemo", "train 3, val 1, test 2"), ("activitynet", "train 3, test 2")],
)
def test_retrieval_benchmarks_prepare_and_fit(benchmark, splits, tmp_path, capsys):
    getattr(replicas, benchmark)(tmp_path / "download")
    out = tmp_path / "prepared"
    assert main(["prepare", "-c", f"configs/data/{benchmark}.yaml", "--data_root", str(tmp_path / "download"),
                 "--output", str(out), "--progress", "false"]) == 0  # fmt: skip
    assert f"({splits})" in capsys.readouterr().out
    run = ["-c", f"configs/{benchmark}_retrieval.yaml", "--data.data_dir", str(out / "retrieval"),
           "--trainer.default_root_dir", str(tmp_path / "run"), "--data.batch_size", "4", *SMALL_MODEL]  # fmt: skip
    assert main(["fit", *run]) == 0
    capsys.readouterr()
    assert main(["test", *run, "--ckpt_path", str(next((tmp_path / "run").rglob("best-*.ckpt")))]) == 0
    assert "test/t2v_R@1" in capsys.readouterr().out
