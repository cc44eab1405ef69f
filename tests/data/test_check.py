"""Faults found before training: ``anchoropt data check`` and the check every run makes on its images."""
import json

import pytest
from PIL import Image

import anchoropt.data.images as images
import anchoropt.train as train_mod
from anchoropt.cli import main
from anchoropt.config import load_config
from anchoropt.data import DataError, build_dataset
from anchoropt.data.check import check_dataset, check_run_images
from tests.conftest import TINY
from tests.helpers import make_split_dataset, write_dassl_pickle, write_descriptions

CLASSES = ["banded", "dotted", "striped", "zigzagged"]
SPLIT = "split_zhou_DescribableTextures.json"


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def dtd(tmp_path):
    """A DTD tree with JPEG images and a CuPL file, as CoOp lays it out."""
    split = make_split_dataset(tmp_path, "dtd", "images", SPLIT, CLASSES, per_class=(4, 2, 3))
    image_dir = tmp_path / "dtd" / "images"
    for part in split.values():  # real DTD images are JPEGs; a truncated JPEG still opens lazily
        for entry in part:
            png = image_dir / entry[0]
            entry[0] = entry[0].replace(".png", ".jpg")
            Image.open(png).save(image_dir / entry[0], "JPEG")
            png.unlink()
    (tmp_path / "dtd" / SPLIT).write_text(json.dumps(split))
    write_descriptions(tmp_path / "texture_prompts_full.json", CLASSES)
    return tmp_path, split, image_dir


def test_data_check_finds_a_truncated_jpeg_no_protocol_reads(dtd, capsys):
    root, split, image_dir = dtd
    unread = image_dir / split["train"][3][0]  # 4th shot of 'banded': shots=2 never reads it
    _truncate(unread)
    build_dataset(root, "dtd")  # present on disk: the cheap structural check passes
    result = check_dataset(root, "dtd", descriptions_dir=str(root))
    assert len(result.faults) == 1
    assert result.faults[0].startswith(f"dataset 'dtd': train: 1/16 images cannot be decoded (first: {unread} (")
    assert "truncated" in result.faults[0].lower()
    with pytest.raises(SystemExit) as exit_:
        main(["data", "check", "dtd", f"data_root={root}", "--descriptions-dir", str(root), "--per-class"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and err.count("\n") == 1 and "faults found in 1 of 1 datasets: dtd (1)" in err
    assert "train: 16 images, 4/4 classes, per class 4..4" in out and "test: 12 images" in out
    assert "4/4 classes with >= 10 sentences" in out and "FAULT dataset 'dtd': train: 1/16" in out
    assert "zigzagged  train     4  val     2  test     3" in out


def test_data_check_reports_every_fault_of_a_dataset(dtd, capsys):
    root, split, image_dir = dtd
    split["test"] = [e for e in split["test"] if e[2] != "zigzagged"]
    (image_dir / split["val"][0][0]).unlink()
    (root / "dtd" / SPLIT).write_text(json.dumps(split))
    write_descriptions(root / "texture_prompts_full.json", CLASSES[:3])
    write_dassl_pickle(root / "dtd" / "split_fewshot" / "shot_1-seed_1.pkl",
                       {"train": [("/old/dtd/images/banded/gone.jpg", 0, "banded")], "val": []})
    faults = check_dataset(root, "dtd", descriptions_dir=str(root)).faults
    assert len(faults) == 4, faults
    assert "test split has no image of 1 of 4 classes: 'zigzagged' (label 3)" in faults[0]
    assert f"val: 1/8 missing (first: {image_dir / split['val'][0][0]})" in faults[1]
    assert "no entry for class 'zigzagged' (index 3)" in faults[2]
    assert "shot_1-seed_1.pkl does not match" in faults[3] and "1 of 1 train items differ" in faults[3]
    with pytest.raises(SystemExit):
        main(["data", "check", "dtd", "nosuch", f"data_root={root}"])
    out = capsys.readouterr().out
    assert "FAULT unknown dataset 'nosuch'" in out


def _run_cfg(root, tmp_path, **extra):
    return load_config(overrides=dict(dataset="dtd", data_root=str(root), backbone=TINY, pretrained="",
                                      descriptions_dir=str(root), cache_dir=str(tmp_path / "cache"), shots=2,
                                      epochs=1, anchor_epochs=1, train_views=1, batch_size=8, device="cpu", **extra))


def _no_backbone(*args):
    raise AssertionError("the backbone was built before the data fault was found")


def test_run_refuses_undecodable_images_it_reads_before_the_backbone(dtd, tmp_path, monkeypatch):
    root, split, image_dir = dtd
    _truncate(image_dir / split["test"][5][0])
    _truncate(image_dir / split["test"][7][0])
    monkeypatch.setattr(train_mod, "cached_backbone", _no_backbone)
    with pytest.raises(DataError) as err:
        train_mod.train(_run_cfg(root, tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "2 of the 20 images this run reads cannot be decoded" in msg
    assert str(image_dir / split["test"][5][0]) in msg and "anchoropt data check dtd" in msg


def test_run_check_decodes_unchanged_images_once(dtd, tmp_path, monkeypatch):
    root, split, image_dir = dtd
    cfg = _run_cfg(root, tmp_path)
    data = build_dataset(root, "dtd")
    calls = []
    real = images.decode_error
    monkeypatch.setattr(images, "decode_error", lambda p: calls.append(p) or real(p))
    check_run_images(cfg, data)
    assert len(calls) == 8 + 12  # 2 shots x 4 classes, 12 test images
    check_run_images(cfg, data)
    assert len(calls) == 20  # remembered: nothing decoded again
    _truncate(image_dir / split["test"][0][0])  # a changed file is checked again
    with pytest.raises(DataError, match="1 of the 20 images"):
        check_run_images(cfg, data)


@pytest.mark.parametrize("fault", ["empty_test", "missing_class"])
def test_cli_train_stops_on_data_faults_before_the_backbone(dtd, tmp_path, monkeypatch, capsys, fault):
    root, split, image_dir = dtd
    if fault == "empty_test":
        split["test"] = []
    else:
        split["test"] = [e for e in split["test"] if e[2] != "zigzagged"]
    (root / "dtd" / SPLIT).write_text(json.dumps(split))
    monkeypatch.setattr(train_mod, "cached_backbone", _no_backbone)
    overrides = [f"{k}={v}" for k, v in _run_cfg(root, tmp_path).to_dict().items()
                 if k in ("dataset", "data_root", "backbone", "pretrained", "cache_dir", "shots", "device")]
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--out", str(tmp_path / "run"), *overrides])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert ("test split is empty" if fault == "empty_test" else "'zigzagged' (label 3)") in err
    assert "dataset 'dtd'" in err and SPLIT in err


def test_data_check_of_a_sound_dataset_exits_0_without_torch(dtd):
    from tests.test_cli import _probe
    root, _, _ = dtd
    loaded, code, out = _probe("data", "check", "dtd", f"data_root={root}", "--descriptions-dir", str(root))
    assert code == 0 and loaded == [] and "no faults in dtd" in out.stdout
