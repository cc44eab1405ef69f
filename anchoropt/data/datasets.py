"""Readers for the CoOp on-disk layout of the 11 standard datasets (SPEC section 7)
and for custom folders described by a ``meta.json`` (the toy world uses these).

Every reader returns a :class:`DatasetSplits` with absolute image paths and labels
0..C-1; every error names the dataset, the file and the entry at fault.
:func:`build_dataset` refuses a dataset with any fault of :func:`dataset_faults` (empty split,
class without images in a split, image files missing), all of them in one line, so a run
stops before any backbone is built.
"""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from anchoropt.errors import ConfigError, brief
from anchoropt.paths import check_name, inside


class DataError(ValueError):
    """Bad dataset input: missing folder or file, malformed split entry, bad label."""


@dataclass(frozen=True)
class Datum:
    """One labelled image, as Dassl's ``Datum``: absolute path, label id, class name."""

    impath: str
    label: int
    classname: str


@dataclass
class DatasetSplits:
    """A dataset's train/val/test lists. ``classnames[label]`` names each label 0..C-1."""

    name: str
    classnames: list[str]
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    template: str = "a photo of a {}."
    root: Path = field(default_factory=Path)
    image_dir: Path = field(default_factory=Path)
    descriptions: Path | None = None  # CuPL JSON shipped with the dataset folder, if any
    sources: dict[str, Path] = field(default_factory=dict)  # split name -> the file or folder listing it

    def splits(self) -> dict[str, list[Datum]]:
        """Each distinct split by name; ImageNet's val is its test and is listed once, as test."""
        out = {"train": self.train, "val": self.val, "test": self.test}
        if self.val is self.test:
            del out["val"]
        return out


@dataclass(frozen=True)
class _SplitDataset:
    folder: str
    image_dir: str
    split_file: str
    template: str


# CoOp's folders, split files and zero-shot templates (SPEC section 7).
SPLIT_DATASETS = {
    "caltech101": _SplitDataset("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "a photo of a {}."),
    "oxford_pets": _SplitDataset("oxford_pets", "images", "split_zhou_OxfordPets.json", "a photo of a {}, a type of pet."),
    "stanford_cars": _SplitDataset("stanford_cars", "", "split_zhou_StanfordCars.json", "a photo of a {}."),
    "oxford_flowers": _SplitDataset("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                                    "a photo of a {}, a type of flower."),
    "food101": _SplitDataset("food-101", "images", "split_zhou_Food101.json", "a photo of {}, a type of food."),
    "sun397": _SplitDataset("sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}."),
    "dtd": _SplitDataset("dtd", "images", "split_zhou_DescribableTextures.json", "{} texture."),
    "eurosat": _SplitDataset("eurosat", "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}."),
    "ucf101": _SplitDataset("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "a photo of a person doing {}."),
}
STANDARD_DATASETS = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                     "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]


def build_dataset(root: str | Path, name: str) -> DatasetSplits:
    """Read dataset ``name`` from the data root ``root`` (CoOp layout) and refuse it if faulty.

    ``name`` is one of :data:`STANDARD_DATASETS` or a folder of ``root`` holding a
    ``meta.json`` (custom CoOp-format dataset, see docs/INTERFACES.md).

    Raises:
        DataError: unknown name, missing folder/file, malformed entry, label out of range, empty
            train split (see :func:`read_dataset`), or every fault of :func:`dataset_faults` in one
            line; the message names the dataset, the split and the file or entry.
    """
    data = read_dataset(root, name)
    faults = dataset_faults(data)
    if faults:
        raise DataError("; ".join(faults))
    return data


def data_root_dir(root: str | Path) -> Path:
    """``root`` (``~`` expanded) when it is a folder.

    Raises:
        DataError: it is not, naming the command that makes the offline toy-11 datasets there
            and the one that lists what a root holds.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data root not found: {path}: make the offline toy-11 datasets there with "
                        f"`anchoropt data toy data_root={root}`, or point data_root= at your datasets "
                        "(`anchoropt data list data_root=DIR` shows what a folder holds)")
    return path


def read_dataset(root: str | Path, name: str) -> DatasetSplits:
    """Parse dataset ``name`` without checking its images (see :func:`build_dataset`).

    Raises:
        DataError: what makes the dataset unreadable: unknown name, missing folder/file, malformed
            entry, label out of range, an empty train split (it defines the classes), an ImageNet
            split folder without class folders.
    """
    root = data_root_dir(root)
    try:  # a folder of root, never ../x or /x (`anchoropt data check` takes names from the command line)
        check_name(name, "dataset")
    except ConfigError as err:
        raise DataError(str(err)) from None
    if (root / name / "meta.json").is_file():
        return _read_custom(root / name, name)
    if name == "imagenet":
        return _read_imagenet(root / "imagenet")
    if name == "fgvc_aircraft":
        return _read_aircraft(root / "fgvc_aircraft")
    if name in SPLIT_DATASETS:
        spec = SPLIT_DATASETS[name]
        folder = _require_dir(root / spec.folder, name)
        return read_split_file(name, folder / spec.split_file, folder / spec.image_dir, spec.template)
    custom = sorted(p.parent.name for p in root.glob("*/meta.json"))
    close = difflib.get_close_matches(name, [*STANDARD_DATASETS, *custom], 1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise DataError(f"unknown dataset '{name}' under {root}{hint}: expected one of "
                    f"{', '.join([*STANDARD_DATASETS, *custom])} (custom: a folder with a meta.json)")


def read_split_file(name: str, split_path: Path, image_dir: Path, template: str) -> DatasetSplits:
    """Read a ``split_zhou_*.json``: ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``."""
    try:
        raw = json.loads(Path(split_path).read_text())
    except FileNotFoundError:
        raise DataError(f"dataset '{name}': split file not found: {split_path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"dataset '{name}': split file {split_path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict) or not all(k in raw for k in ("train", "val", "test")):
        raise DataError(f"dataset '{name}': split file {split_path} must hold 'train', 'val' and 'test' lists")
    splits = {}
    for part in ("train", "val", "test"):
        items = []
        for i, entry in enumerate(raw[part]):
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], int)):
                raise DataError(f"dataset '{name}': {split_path} {part}[{i}] is {brief(entry)}, "
                                f"expected [relative_path, label, classname]")
            if not isinstance(entry[0], str):
                raise DataError(f"dataset '{name}': {split_path} {part}[{i}] path is {brief(entry[0])}, expected text")
            items.append(Datum(str(inside(image_dir, entry[0], f"dataset '{name}': {split_path} {part}[{i}]",
                                          DataError)), entry[1], str(entry[2])))
        splits[part] = items
    return _finish(name, splits, template, dict.fromkeys(splits, Path(split_path)), image_dir,
                   Path(split_path).parent)


def _finish(name: str, splits: dict[str, list[Datum]], template: str, sources: dict[str, Path],
            image_dir: Path, root: Path, classnames: list[str] | None = None) -> DatasetSplits:
    """Check labels against the classes (``classnames``, else those of the train split: Dassl's rule)."""
    if classnames is None:
        classnames = _classnames(name, splits, sources["train"])
    for part, items in splits.items():
        for i, d in enumerate(items):
            if not 0 <= d.label < len(classnames):
                raise DataError(f"dataset '{name}': {sources[part]} {part}[{i}] label {d.label} ('{d.classname}') "
                                f"out of range 0..{len(classnames) - 1}: the classes are the train split's")
            if d.classname != classnames[d.label]:
                raise DataError(f"dataset '{name}': {sources[part]} {part}[{i}] names label {d.label} "
                                f"'{d.classname}', the train split '{classnames[d.label]}'")
    return DatasetSplits(name, classnames, splits["train"], splits["val"], splits["test"], template,
                         root=Path(root), image_dir=Path(image_dir), sources=sources)


#: How many example classes or paths a fault line names.
EXAMPLES = 3


def dataset_faults(data: DatasetSplits) -> list[str]:
    """One-line faults of a dataset read by :func:`read_dataset`, checked without opening images:
    an empty split, a split with no image of some class, image files missing (counted per split,
    with the first few paths). Empty when the dataset is sound."""
    faults = []
    for part, items in data.splits().items():
        where = data.sources.get(part, data.root)
        if not items:
            faults.append(f"dataset '{data.name}': {part} split is empty ({where})")
            continue
        absent = sorted(set(range(len(data.classnames))) - {d.label for d in items})
        if absent:
            named = ", ".join(f"'{data.classnames[i]}' (label {i})" for i in absent[:EXAMPLES])
            more = f" and {len(absent) - EXAMPLES} more" if len(absent) > EXAMPLES else ""
            faults.append(f"dataset '{data.name}': {part} split has no image of {len(absent)} of "
                          f"{len(data.classnames)} classes: {named}{more} ({where})")
    missing = {part: [d.impath for d in items if not os.path.isfile(d.impath)]
               for part, items in data.splits().items()}
    counts = [f"{part}: {len(paths)}/{len(data.splits()[part])} missing (first: {', '.join(paths[:EXAMPLES])})"
              for part, paths in missing.items() if paths]
    if counts:
        faults.append(f"dataset '{data.name}': image files not found under {data.image_dir}: {', '.join(counts)}")
    return faults


def _classnames(name: str, splits: dict[str, list[Datum]], source: Path) -> list[str]:
    """Names of labels 0..C-1 of the train split; a gap in its labels is named from any split."""
    train = splits["train"]
    if not train:
        raise DataError(f"dataset '{name}': train split is empty ({source}); it defines the classes")
    by_label: dict[int, str] = {}
    for d in train:
        if by_label.setdefault(d.label, d.classname) != d.classname:
            raise DataError(f"dataset '{name}': {source} label {d.label} has two class names: "
                            f"'{by_label[d.label]}' and '{d.classname}'")
    labels = sorted(by_label)
    if labels != list(range(len(labels))):
        missing = sorted(set(range(max(labels) + 1)) - set(labels))
        known = {d.label: d.classname for items in splits.values() for d in items}
        named = ", ".join(f"'{known.get(i, '?')}' (label {i})" for i in missing[:EXAMPLES])
        raise DataError(f"dataset '{name}': train split has no image of class {named} ({source})")
    return [by_label[i] for i in labels]


def _require_dir(path: Path, name: str) -> Path:
    if not path.is_dir():
        raise DataError(f"dataset '{name}': folder not found: {path}")
    return path


def _read_lines(path: Path, name: str) -> list[str]:
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        raise DataError(f"dataset '{name}': file not found: {path}") from None


def _read_imagenet(folder: Path) -> DatasetSplits:
    """CoOp's ImageNet: ``images/{train,val}/<wnid>/*`` and ``classnames.txt`` (``wnid name`` lines).

    The classes are the sorted class folders of train (Dassl's rule; ``classnames.txt`` names them);
    val's folders take the labels of the same wnids, so a class folder missing from val cannot shift
    the others' labels. Test is the val folder (CoOp practice).
    """
    _require_dir(folder, "imagenet")
    names = {}
    for i, line in enumerate(_read_lines(folder / "classnames.txt", "imagenet")):
        wnid, _, cname = line.partition(" ")
        if not cname:
            raise DataError(f"dataset 'imagenet': {folder / 'classnames.txt'} line {i + 1} is '{line}', "
                            f"expected '<wnid> <class name>'")
        names[wnid] = cname.strip()
    class_dirs, sources = {}, {}
    for part, sub in (("train", "train"), ("test", "val")):
        split_dir = sources[part] = _require_dir(folder / "images" / sub, "imagenet")
        entries = _listdir_nohidden(split_dir)
        files = [p for p in entries if not p.is_dir()]
        if files:
            raise DataError(f"dataset 'imagenet': {part} folder {split_dir} holds {len(files)} files outside class "
                            f"folders (e.g. {files[0].name}): sort them into {split_dir}/<wnid>/ (CoOp layout)")
        for wnid_dir in entries:
            if wnid_dir.name not in names:
                raise DataError(f"dataset 'imagenet': folder {wnid_dir} has no line in classnames.txt")
        class_dirs[part] = entries
    wnids = [p.name for p in class_dirs["train"]]
    if not wnids:
        raise DataError(f"dataset 'imagenet': train split is empty ({sources['train']}); it defines the classes")
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    splits = {}
    for part, entries in class_dirs.items():
        for wnid_dir in entries:
            if wnid_dir.name not in label_of:
                raise DataError(f"dataset 'imagenet': folder {wnid_dir} is a class with no folder in "
                                f"{sources['train']}")
        splits[part] = [Datum(str(p), label_of[d.name], names[d.name]) for d in entries for p in _listdir_nohidden(d)]
    splits["val"], sources["val"] = splits["test"], sources["test"]
    return _finish("imagenet", splits, "a photo of a {}.", sources, folder / "images", folder,
                   [names[w] for w in wnids])


def _listdir_nohidden(folder: Path) -> list[Path]:
    """Sorted entries without dot files (``.DS_Store``), as Dassl's ``listdir_nohidden``."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _read_aircraft(folder: Path) -> DatasetSplits:
    """FGVC Aircraft: ``variants.txt`` and ``images_variant_{train,val,test}.txt`` (``<id> <variant>``)."""
    _require_dir(folder, "fgvc_aircraft")
    variants = _read_lines(folder / "variants.txt", "fgvc_aircraft")
    label_of = {v: i for i, v in enumerate(variants)}
    splits, sources = {}, {}
    for part in ("train", "val", "test"):
        path = sources[part] = folder / f"images_variant_{part}.txt"
        items = []
        for i, line in enumerate(_read_lines(path, "fgvc_aircraft")):
            image_id, _, variant = line.partition(" ")
            if variant not in label_of:
                raise DataError(f"dataset 'fgvc_aircraft': {path} line {i + 1}: variant '{variant}' "
                                f"not in variants.txt")
            image = inside(folder / "images", f"{image_id}.jpg", f"dataset 'fgvc_aircraft': {path} line {i + 1}", DataError)
            items.append(Datum(str(image), label_of[variant], variant))
        splits[part] = items
    return _finish("fgvc_aircraft", splits, "a photo of a {}, a type of aircraft.", sources, folder / "images",
                   folder, variants)


def _read_custom(folder: Path, name: str) -> DatasetSplits:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        split_file, image_dir = meta["split_file"], meta.get("image_dir", "images")
    except (json.JSONDecodeError, KeyError) as err:
        raise DataError(f"dataset '{name}': {folder / 'meta.json'} is malformed: {brief(err)}") from None
    where = f"dataset '{name}': {folder / 'meta.json'}"
    if not all(isinstance(v, str) for v in (split_file, image_dir, meta.get("descriptions") or "")):
        raise DataError(f"{where}: split_file, image_dir and descriptions must be text (paths in the dataset's folder)")
    data = read_split_file(name, inside(folder, split_file, f"{where} split_file", DataError),
                           inside(folder, image_dir, f"{where} image_dir", DataError),
                           meta.get("template", "a photo of a {}."))
    if meta.get("descriptions"):
        data.descriptions = inside(folder, meta["descriptions"], f"{where} descriptions", DataError)
    return data


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a data root as ``anchoropt data list`` shows it: ``kind`` ``standard`` or
    ``custom``; ``marker`` the file whose presence marks the dataset as found (not a full read:
    ``build_dataset`` checks every entry)."""

    name: str
    kind: str
    marker: Path
    found: bool


def list_datasets(root: str | Path) -> list[DatasetEntry]:
    """The standard datasets (found or not) and the custom ones (folders with a ``meta.json``) under ``root``."""
    root = Path(root).expanduser()
    markers = {"imagenet": root / "imagenet" / "classnames.txt",
               "fgvc_aircraft": root / "fgvc_aircraft" / "variants.txt",
               **{n: root / s.folder / s.split_file for n, s in SPLIT_DATASETS.items()}}
    entries = []
    for name in STANDARD_DATASETS:
        custom = root / name / "meta.json"  # a custom folder may shadow a standard name (build_dataset's order)
        marker = custom if custom.is_file() else markers[name]
        entries.append(DatasetEntry(name, "standard", marker, marker.is_file()))
    if root.is_dir():
        entries += [DatasetEntry(p.parent.name, "custom", p, True) for p in sorted(root.glob("*/meta.json"))
                    if p.parent.name not in STANDARD_DATASETS]
    return entries
