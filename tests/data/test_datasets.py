import json
import pickle
import sys
import types

import numpy as np
import pytest
from PIL import Image

from anchoropt.data import (DataError, Datum, base_novel_labels, build_dataset, fewshot_splits, load_descriptions,
                            subsample)
from anchoropt.data.datasets import SPLIT_DATASETS
from anchoropt.data.fewshot import read_dassl_fewshot
from anchoropt.features import load_image
from tests.helpers import make_split_dataset, write_image

CLASSES = ["face", "leopard", "motorbike", "airplane", "accordion"]


@pytest.mark.parametrize("name", sorted(SPLIT_DATASETS))
def test_split_file_datasets_load_in_their_real_layout(tmp_path, name):
    spec = SPLIT_DATASETS[name]
    make_split_dataset(tmp_path, spec.folder, spec.image_dir, spec.split_file, CLASSES, per_class=(2, 1, 1))
    data = build_dataset(tmp_path, name)
    assert data.classnames == CLASSES
    assert (len(data.train), len(data.val), len(data.test)) == (10, 5, 5)
    assert data.template == spec.template
    assert all(Image.open(d.impath).size == (32, 32) for d in data.test)


def test_imagenet_layout_with_repeated_class_names(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imagenet"
    wnids = {"n03773504": "missile", "n04008634": "missile", "n01440764": "tench"}
    (folder).mkdir()
    (folder / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in wnids.items()))
    for sub in ("train", "val"):
        for w in wnids:
            for i in range(2):
                write_image(folder / "images" / sub / w / f"{i}.JPEG", (10, 20, 30), rng)
    data = build_dataset(tmp_path, "imagenet")
    assert data.classnames == ["tench", "missile", "missile"]  # labels follow sorted wnids
    assert len(data.train) == 6 and data.val == data.test


def test_aircraft_layout(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "fgvc_aircraft"
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("707-320\nA300B4\nF-16A/B\n")
    for part, ids in (("train", [1, 2, 3]), ("val", [4, 5, 6]), ("test", [7, 8, 9])):
        lines = [f"{i:07d} {v}" for i, v in zip(ids, ["707-320", "A300B4", "F-16A/B"])]
        (folder / f"images_variant_{part}.txt").write_text("\n".join(lines))
        for i in ids:
            write_image(folder / "images" / f"{i:07d}.jpg", (1, 2, 3), rng)
    data = build_dataset(tmp_path, "fgvc_aircraft")
    assert data.classnames == ["707-320", "A300B4", "F-16A/B"]
    assert [d.label for d in data.test] == [0, 1, 2]


def test_custom_meta_dataset(tmp_path):
    make_split_dataset(tmp_path, "toy_x", "images", "split_zhou_ToyX.json", CLASSES, per_class=(2, 1, 1))
    (tmp_path / "toy_x" / "meta.json").write_text(json.dumps(
        {"name": "toy_x", "split_file": "split_zhou_ToyX.json", "image_dir": "images",
         "template": "a toy {}.", "descriptions": "descriptions.json"}))
    data = build_dataset(tmp_path, "toy_x")
    assert data.template == "a toy {}." and data.descriptions == tmp_path / "toy_x" / "descriptions.json"


def test_base_novel_rule_and_relabel():
    base, novel = base_novel_labels([4, 0, 2, 1, 3, 2])
    assert (base, novel) == ([0, 1, 2], [3, 4])
    items = [Datum("a", 3, "d"), Datum("b", 4, "e"), Datum("c", 0, "a")]
    assert [(d.impath, d.label) for d in subsample(items, novel)] == [("a", 0), ("b", 1)]


def test_fewshot_sampling_is_seeded_and_per_class(tmp_path):
    make_split_dataset(tmp_path, "eurosat", "2750", "split_zhou_EuroSAT.json", CLASSES, per_class=(6, 5, 1))
    data = build_dataset(tmp_path, "eurosat")
    train, val = fewshot_splits(data, 4, seed=1)
    assert [sum(d.label == c for d in train) for c in range(5)] == [4] * 5
    assert [sum(d.label == c for d in val) for c in range(5)] == [4] * 5
    assert fewshot_splits(data, 4, seed=1) == (train, val)
    assert fewshot_splits(data, 4, seed=2)[0] != train
    assert len(fewshot_splits(data, 16, seed=1)[0]) == 30  # fewer than K: keep all


def _fake_dassl_module(monkeypatch):
    mod = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum:  # the fields of Dassl's Datum
        def __init__(self, impath, label, domain, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname
    Datum.__module__, Datum.__qualname__ = "dassl.data.datasets.base_dataset", "Datum"
    mod.Datum = Datum
    for name in ("dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"):
        monkeypatch.setitem(sys.modules, name, mod)
    return Datum


def test_dassl_fewshot_pickle_is_reused_without_dassl(tmp_path, monkeypatch):
    make_split_dataset(tmp_path, "eurosat", "2750", "split_zhou_EuroSAT.json", CLASSES, per_class=(6, 2, 1))
    DasslDatum = _fake_dassl_module(monkeypatch)
    chosen = {"train": [DasslDatum(f"/home/else/DATA/eurosat/2750/{c}/train_{i}.png", lab, 0, c)
                        for lab, c in enumerate(CLASSES) for i in (5, 3)],
              "val": [DasslDatum(f"/home/else/DATA/eurosat/2750/{c}/val_0.png", lab, 0, c)
                      for lab, c in enumerate(CLASSES)]}
    (tmp_path / "eurosat" / "split_fewshot").mkdir()
    with open(tmp_path / "eurosat" / "split_fewshot" / "shot_2-seed_1.pkl", "wb") as f:
        pickle.dump(chosen, f, protocol=pickle.HIGHEST_PROTOCOL)
    for name in ("dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"):
        monkeypatch.delitem(sys.modules, name)
    train, val = fewshot_splits(build_dataset(tmp_path, "eurosat"), 2, seed=1)
    assert train[0].impath == str(tmp_path / "eurosat" / "2750" / "face" / "train_5.png")
    assert len(train) == 10 and len(val) == 5


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_other_types(tmp_path):
    path = tmp_path / "shot_1-seed_1.pkl"
    path.write_bytes(pickle.dumps({"train": [_Evil()]}))
    with pytest.raises(DataError, match="refusing to load .*system"):
        read_dassl_fewshot(path, tmp_path)


def test_missing_folder_and_malformed_split(tmp_path):
    with pytest.raises(DataError, match="dataset 'dtd': folder not found: .*dtd"):
        build_dataset(tmp_path, "dtd")
    (tmp_path / "dtd").mkdir()
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text('{"train": [["a.jpg", "x"]], "val": [], "test": []}')
    with pytest.raises(DataError, match=r"split_zhou_DescribableTextures.json train\[0\]"):
        build_dataset(tmp_path, "dtd")
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        build_dataset(tmp_path, "dtd")
    with pytest.raises(DataError, match="unknown dataset 'imagenet21k'"):
        build_dataset(tmp_path, "imagenet21k")


def test_label_out_of_range_and_missing_image(tmp_path):
    split = make_split_dataset(tmp_path, "eurosat", "2750", "split_zhou_EuroSAT.json", CLASSES, per_class=(1, 1, 1))
    split["test"][2][1] = 9
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match=r"test\[2\] label 9 out of range 0..4"):
        build_dataset(tmp_path, "eurosat")
    split["test"][2][1] = 2
    split["val"][1][0] = "leopard/gone.png"
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match=r"val\[1\] image not found: .*gone.png"):
        build_dataset(tmp_path, "eurosat")


def test_corrupt_and_non_rgb_images(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    with pytest.raises(DataError, match="corrupt image .*bad.jpg"):
        load_image(str(bad))
    Image.new("L", (8, 8)).save(tmp_path / "grey.png")
    Image.new("RGBA", (8, 8)).save(tmp_path / "rgba.png")
    assert load_image(str(tmp_path / "grey.png")).mode == "RGB"
    assert load_image(str(tmp_path / "rgba.png")).mode == "RGB"


def test_descriptions_matched_after_normalisation(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"Annual_Crop-Land": [f"s{i}" for i in range(12)], "forest.": ["f"] * 10}))
    out = load_descriptions(path, ["annual crop land", "Forest"], 10)
    assert out[0] == [f"s{i}" for i in range(10)] and out[1] == ["f"] * 10
    with pytest.raises(DataError, match="no entry for class 'Highway' \\(index 1\\)"):
        load_descriptions(path, ["Forest", "Highway"], 10)
    with pytest.raises(DataError, match="'annual crop land' has 12 sentences, fewer than n_descriptions=20"):
        load_descriptions(path, ["annual crop land"], 20)


def test_repeated_class_names_get_their_own_descriptions_or_an_error(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"missile": ["rocket"], "tench": ["fish"], "missile": ["projectile"]}')
    assert load_descriptions(path, ["missile", "tench", "missile"], 1) == [["rocket"], ["fish"], ["projectile"]]
    path.write_text('{"missile": ["rocket"], "tench": ["fish"]}')
    with pytest.raises(DataError, match="'missile' is used by 2 classes \\(indices \\[0, 2\\]\\) but has 1 entries"):
        load_descriptions(path, ["missile", "tench", "missile"], 1)
