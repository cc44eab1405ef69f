import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from anchoropt.data import (DataError, DatasetSplits, Datum, base_novel_labels, build_dataset, fewshot_splits, load_descriptions,
                            subsample)
from anchoropt.data.datasets import SPLIT_DATASETS, read_dataset
from anchoropt.data.fewshot import read_dassl_fewshot
from anchoropt.data.images import load_image
from tests.helpers import make_split_dataset, write_dassl_pickle, write_image

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


def test_dassl_fewshot_pickle_is_reused_without_dassl(tmp_path):
    make_split_dataset(tmp_path, "eurosat", "2750", "split_zhou_EuroSAT.json", CLASSES, per_class=(6, 2, 1))
    chosen = {"train": [(f"/home/else/DATA/eurosat/2750/{c}/train_{i}.png", lab, c)
                        for lab, c in enumerate(CLASSES) for i in (5, 3)],
              "val": [(f"/home/else/DATA/eurosat/2750/{c}/val_{i}.png", lab, c)
                      for lab, c in enumerate(CLASSES) for i in (1, 0)]}
    write_dassl_pickle(tmp_path / "eurosat" / "split_fewshot" / "shot_2-seed_1.pkl", chosen)
    train, val = fewshot_splits(build_dataset(tmp_path, "eurosat"), 2, seed=1)
    assert train[0].impath == str(tmp_path / "eurosat" / "2750" / "face" / "train_5.png")
    assert len(train) == 10 and len(val) == 10


@pytest.mark.parametrize("name", ["oxford_pets", "stanford_cars"])
def test_dassl_pickle_rerooted_under_a_root_holding_the_image_folder_name(tmp_path, name):
    """Pets' image folder is ``images``; a data root ``.../images/D`` holds that name too. Cars has none."""
    spec = SPLIT_DATASETS[name]
    root = tmp_path / "images" / "D"
    split = make_split_dataset(root, spec.folder, spec.image_dir, spec.split_file, CLASSES, per_class=(3, 1, 1))
    old = "/".join(p for p in ("/mnt/old/images/DATA", spec.folder, spec.image_dir) if p)
    chosen = {"train": [(f"{old}/{rel}", lab, c) for rel, lab, c in split["train"][::3]],
              "val": [(f"{old}/{rel}", lab, c) for rel, lab, c in split["val"]]}
    write_dassl_pickle(root / spec.folder / "split_fewshot" / "shot_1-seed_1.pkl", chosen)
    data = build_dataset(root, name)
    train, val = fewshot_splits(data, 1, seed=1)
    image_dir = root / spec.folder / spec.image_dir
    assert [d.impath for d in train] == [str(image_dir / rel) for rel, _, _ in split["train"][::3]]
    assert all(os.path.isfile(d.impath) for d in train + val)


def test_dassl_pickle_from_another_split_is_refused_in_one_line(tmp_path):
    split = make_split_dataset(tmp_path, "eurosat", "2750", "split_zhou_EuroSAT.json", CLASSES, per_class=(3, 1, 1))
    old = "/home/else/DATA/eurosat/2750"
    chosen = {"train": [(f"{old}/{rel}", lab, c) for rel, lab, c in split["train"][::3]],
              "val": [(f"{old}/{rel}", lab, c) for rel, lab, c in split["val"]]}
    pkl = tmp_path / "eurosat" / "split_fewshot" / "shot_1-seed_1.pkl"
    chosen["train"][1] = (chosen["train"][1][0], 4, "accordion")  # label and name changed since
    chosen["train"][2] = (f"{old}/motorbike/removed.png", 2, "motorbike")  # no longer in the split
    write_dassl_pickle(pkl, chosen)
    data = build_dataset(tmp_path, "eurosat")
    with pytest.raises(DataError) as err:
        fewshot_splits(data, 1, seed=1)
    msg = str(err.value)
    assert "\n" not in msg and str(pkl) in msg and "split_zhou_EuroSAT.json" in msg
    assert "2 of 5 train items differ" in msg and "label 4 'accordion' there, 1 'leopard'" in msg
    assert "delete the file" in msg
    chosen["train"] = [e for e in chosen["train"][:1]]  # in the split, but only class 'face'
    write_dassl_pickle(pkl, chosen)
    with pytest.raises(DataError, match=r"has 0 train images of class 'leopard' \(label 1\), Dassl draws 1 for 1 "
                                        r"shots \(4 classes differ\); delete"):
        fewshot_splits(data, 1, seed=1)
    write_dassl_pickle(pkl, {"train": [(f"{old}/{rel}", lab, c) for rel, lab, c in split["train"]]})  # all 3 a class
    with pytest.raises(DataError, match=r"has 3 train images of class 'face' \(label 0\), Dassl draws 1 for 1 shots"):
        fewshot_splits(data, 1, seed=1)


def test_dassl_pickle_without_val_list_draws_val_as_without_the_file(tmp_path):
    """Dassl's ImageNet few-shot files hold only ``train``."""
    split = make_split_dataset(tmp_path, "eurosat", "2750", "split_zhou_EuroSAT.json", CLASSES, per_class=(3, 5, 1))
    data = build_dataset(tmp_path, "eurosat")
    _, drawn_val = fewshot_splits(data, 2, seed=1)
    chosen = [(f"/x/eurosat/2750/{rel}", lab, c) for rel, lab, c in split["train"]
              if rel.endswith(("_0.png", "_2.png"))]
    write_dassl_pickle(tmp_path / "eurosat" / "split_fewshot" / "shot_2-seed_1.pkl", {"train": chosen})
    train, val = fewshot_splits(data, 2, seed=1)
    assert [d.impath.rsplit("/", 2)[-2:] for d in train] == [p.rsplit("/", 2)[-2:] for p, _, _ in chosen]
    assert val == drawn_val and len(val) == 10


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_other_types(tmp_path):
    path = tmp_path / "shot_1-seed_1.pkl"
    path.write_bytes(pickle.dumps({"train": [_Evil()]}))
    with pytest.raises(DataError, match="refusing to load .*system"):
        read_dassl_fewshot(path, DatasetSplits("x", [], [], [], [], image_dir=tmp_path), 1)


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


def test_label_out_of_range(tmp_path):
    split = make_split_dataset(tmp_path, "eurosat", "2750", "split_zhou_EuroSAT.json", CLASSES, per_class=(1, 1, 1))
    split["test"][2][1] = 9
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match=r"test\[2\] label 9 \('motorbike'\) out of range 0..4: the classes are "
                                        r"the train split's"):
        build_dataset(tmp_path, "eurosat")
    split["test"][2][1] = 3
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match=r"test\[2\] names label 3 'motorbike', the train split 'airplane'"):
        build_dataset(tmp_path, "eurosat")


@pytest.mark.parametrize("part", ["test", "val"])
def test_a_scored_split_without_images_of_a_class_is_refused(tmp_path, part):
    """A novel class with no test images would be scored over the others, silently."""
    split = make_split_dataset(tmp_path, "dtd", "images", "split_zhou_DescribableTextures.json", CLASSES)
    split[part] = [e for e in split[part] if e[2] != "accordion"]
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match=rf"dataset 'dtd': {part} split has no image of 1 of 5 classes: "
                                        rf"'accordion' \(label 4\) \(.*split_zhou_DescribableTextures.json\)"):
        build_dataset(tmp_path, "dtd")


def test_missing_images_counted_per_split_with_first_paths(tmp_path):
    split = make_split_dataset(tmp_path, "eurosat", "2750", "split_zhou_EuroSAT.json", CLASSES, per_class=(2, 1, 3))
    image_dir = tmp_path / "eurosat" / "2750"
    for rel, _, _ in split["train"]:
        (image_dir / rel).unlink()
    (image_dir / split["test"][4][0]).unlink()
    with pytest.raises(DataError) as err:
        build_dataset(tmp_path, "eurosat")
    msg = str(err.value)
    assert "\n" not in msg and f"not found under {image_dir}" in msg
    assert f"train: 10/10 missing (first: {image_dir / split['train'][0][0]}, " in msg
    assert f"test: 1/15 missing (first: {image_dir / split['test'][4][0]})" in msg and "val:" not in msg


def test_empty_splits_named_by_dataset_split_and_file(tmp_path):
    split = make_split_dataset(tmp_path, "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", CLASSES,
                               per_class=(1, 1, 1))
    path = tmp_path / "ucf101" / "split_zhou_UCF101.json"
    path.write_text(json.dumps({**split, "test": []}))
    with pytest.raises(DataError, match=f"dataset 'ucf101': test split is empty \\({path}\\)"):
        build_dataset(tmp_path, "ucf101")
    path.write_text(json.dumps({**split, "train": []}))
    with pytest.raises(DataError, match=f"dataset 'ucf101': train split is empty \\({path}\\)"):
        build_dataset(tmp_path, "ucf101")
    path.write_text(json.dumps({**split, "train": [e for e in split["train"] if e[1] != 2]}))
    with pytest.raises(DataError, match=f"train split has no image of class 'motorbike' \\(label 2\\) \\({path}\\)"):
        build_dataset(tmp_path, "ucf101")


def _imagenet(root, wnids=("n01440764", "n02102040"), per_class=2):
    rng = np.random.default_rng(0)
    folder = root / "imagenet"
    folder.mkdir()
    (folder / "classnames.txt").write_text("".join(f"{w} class {w}\n" for w in wnids))
    for sub in ("train", "val"):
        for w in wnids:
            for i in range(per_class):
                write_image(folder / "images" / sub / w / f"{i}.JPEG", (10, 20, 30), rng)
    return folder


def test_flat_or_empty_imagenet_val_folder_is_named(tmp_path):
    folder = _imagenet(tmp_path)
    val = folder / "images" / "val"
    for i, image in enumerate(sorted(val.glob("*/*.JPEG"))):
        image.rename(val / f"ILSVRC2012_val_{i:08d}.JPEG")
    for wnid_dir in [p for p in val.iterdir() if p.is_dir()]:
        wnid_dir.rmdir()
    (val / ".DS_Store").write_text("")
    with pytest.raises(DataError, match=f"dataset 'imagenet': test folder {val} holds 4 files outside class folders"):
        build_dataset(tmp_path, "imagenet")
    for image in val.glob("*.JPEG"):
        image.unlink()
    with pytest.raises(DataError, match=f"dataset 'imagenet': test split is empty \\({val}\\)"):
        build_dataset(tmp_path, "imagenet")


def test_imagenet_class_folder_missing_from_val_keeps_labels_and_is_refused(tmp_path):
    folder = _imagenet(tmp_path, wnids=("n01", "n02", "n03"))
    for image in (folder / "images" / "val" / "n01").iterdir():
        image.unlink()
    (folder / "images" / "val" / "n01").rmdir()
    with pytest.raises(DataError, match="test split has no image of 1 of 3 classes: 'class n01' \\(label 0\\)"):
        build_dataset(tmp_path, "imagenet")
    assert sorted({d.label for d in read_dataset(tmp_path, "imagenet").test}) == [1, 2]  # n02, n03 as in train


def test_imagenet_subset_tree_with_the_full_classnames_file(tmp_path):
    """As in Dassl, the classes are train's folders; classnames.txt may name more."""
    folder = _imagenet(tmp_path, wnids=("n01", "n03"))
    (folder / "classnames.txt").write_text("n01 tench\nn02 goldfish\nn03 shark\n")
    data = build_dataset(tmp_path, "imagenet")
    assert data.classnames == ["tench", "shark"] and [d.label for d in data.test] == [0, 0, 1, 1]


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
