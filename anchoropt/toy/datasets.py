"""The "toy-11" benchmark: eleven classification datasets cut from the toy world.

Each dataset is a different task over the world's attributes (see :mod:`anchoropt.toy.world`),
written in the CoOp layout of ``docs/INTERFACES.md``::

    ROOT/<name>/meta.json
    ROOT/<name>/split_zhou_<Name>.json     {"train"|"val"|"test": [[relpath, label, classname], ...]}
    ROOT/<name>/descriptions.json          CuPL format {classname: [sentence, ...]}
    ROOT/<name>/images/<class folder>/<split>_<i>.png   (64 x 64 RGB)

Every dataset is built so that LLM descriptions carry visual knowledge its class names convey to
ToyCLIP only weakly, as on real fine-grained data (CuPL, AnchorOPT): a class fixes two attributes,
a *named* one (in a word ToyCLIP knows, e.g. ``red``) and a *hidden* one. The name holds an invented
word (``INVENTED_WORDS``: tokens ToyCLIP never saw in pretraining) and the hidden value next to a
look-alike value, true value last (``red kaglux cross-star`` is a red star), so the zero-shot
template reads the hidden attribute only weakly. The descriptions (``describe``) state both
attributes in caption words, with some wrong and irrelevant sentences.

Class ``label`` ids follow the product ``hidden values x named values`` (hidden major), so the
base half (first ceil(C/2) labels) and the novel half hold mostly different hidden values. In an
image of class c the attributes c fixes are fixed; every other attribute is drawn uniformly as in
pretraining.

``make_toy11(root)`` writes all eleven; it is deterministic (same seed, same bytes) and skips a
dataset already complete on disk.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from anchoropt.toy import world

TOY_VERSION = 3  # 3: invented class names hiding one attribute, noisy descriptions in caption words
SPLIT_SIZES = {"train": 20, "val": 4, "test": 30}  # images per class

# ---------------------------------------------------------------------------- invented names
# Invented words, one per class of toy-11, in TOY11 order. Each was drawn by a syllable generator
# and kept only if none of its BPE tokens occurs in any caption ToyCLIP was pretrained on
# (``world.caption_phrases``; checked by tests/test_toy_world.py), so ToyCLIP never saw it paired
# with any image: its token embeddings are still at their random initialisation.
INVENTED_WORDS = tuple((
    "snoglush kudram guglum namam snifim zlegax zesom zlevrul plizen supliz ritram maglim visiz "
    "kaglux soben rotux boplil tefal supam poglom krizlut vrebam snovriz zivil mugam vrepliz "
    "dodit vruloz glusat brarash namoz snebrum bozez drufim naral zlozlush ponum dasom plesez "
    "kuvrox kritrak soglol snunosh zovik fapel ledaz pofom zelosh galom rakosh snimik likren "
    "bavuz bifox zozlal vasnum geplum sokom snazlom plososh dedrim soziz biruz kumun kukrish "
    "drovan kutret nemim fepen vrizok gibrik bruvun zlavet brabet dropen zobut zletik pafim dufem "
    "tubam favrez dusnim siplez plekrik butrax fadux zloglan vigaz funun rotran zluplom nisem "
    "trerash plidam vroset bovik mebiz pasnul titrot pukrum fopesh satret replum ridrish snisnul "
    "suzlul rusut gabresh krikriz kigot kraplok lobren volam zezun fezlik trenal snetel vraluk "
    "puluz kagil sebrem zobem zupaz nogen snibroz trebrez polesh glodesh sneruk tredrin vudez "
    "tafit breplum vrezesh davrat moren roviz platom snabosh lubraz pumat kedrem vratim snanim "
    "droban kotrum krugul trulit fekek duzlam tosnak bivik dobrik pefek sukrez firet kinik zuvik "
    "sopluz vrazen zlemol dorut gozlash falit faglez rinuk krifush gigam nutit susnaz vrumin "
    "lutix kuzez glidut dradrel foput brizom vemiz dugish bitraz snelin divrim zlakuk plaloz "
    "lezez pledrut zogish kodrush snesosh pokesh krazlon brefil trazal glikin budrim lodim dimush "
    "ruplik tusil levrul drisoz vamal vrivrem snudrun masez peplish kroresh tukosh vuglush metral "
    "vrusom ketresh krumun brobek drifel drezlom gunem glafiz brilul zlorash snatresh fugum "
    "vobril vridez gukosh zitam sisnol vikril vovron snuvum tokul zlabex tadrin silol podez "
    "plelum kofox plupek gliplol snutrul pezuk raploz mefoz kokre litex drutrom runil snapluk "
    "bubriz dokash glisun rumun govrom fezesh pabrol guduz zofaz krilex gigosh snekruk "
).split())


# ---------------------------------------------------------------------------- descriptions
# Sentences of the CuPL-style descriptions, per class (``describe``): informative ones state the
# class's attributes in ToyCLIP's caption words; a few are wrong (the hidden attribute swapped for
# another value, as an LLM's hallucination) or irrelevant (words ToyCLIP never saw). Fixed a priori
# to resemble LLM output, not tuned on any method's result.
N_INFORMATIVE, N_PARTIAL, N_WRONG, N_IRRELEVANT = 7, 1, 2, 2
SENTENCES_PER_CLASS = N_INFORMATIVE + N_PARTIAL + N_WRONG + N_IRRELEVANT
INFORMATIVE = ("{X} {be} {body}.", "{X} looks like {body}.", "A photo of {x} shows {body}.", "{X}: {body}.",
               "{X} {be} usually drawn as {body}.", "In a picture, {x} {be} {body}.",
               "You can recognise {x} as {body}.", "{X} always appears as {body}.",
               "The typical look of {x} is {body}.", "Seen in a photo, {x} {be} {body}.")
IRRELEVANT = ("{X} {be} popular with collectors.", "{X} was first catalogued in an old museum archive.",
              "Many people keep {x} as a lucky charm.", "{X} {be} often mentioned in children's stories.",
              "The name of {x} comes from an old northern dialect.", "{X} {be} easy to find in souvenir shops.",
              "Some say {x} brings good fortune.", "{X} {be} a favourite topic of trivia quizzes.")


def _body(attrs: Dict[str, object], rng: np.random.Generator) -> str:
    """A noun phrase in caption words (``world`` synonyms) mentioning exactly ``attrs``."""
    W = world
    count = attrs.get("count")
    plural = count is not None and count > 1
    adjs = [W._choice(rng, table[attrs[a]]) for a, table in
            (("size", W.SIZE_WORDS), ("colour", W.COLOUR_WORDS), ("pattern", W.PATTERN_ADJ)) if a in attrs]
    if "shape" in attrs:
        noun = W._choice(rng, W.SHAPE_WORDS[attrs["shape"]])
        noun = W._plural(noun) if plural else noun
    else:
        noun = W._choice(rng, W.GENERIC_NOUNS[plural])
    phrase = " ".join(adjs + [noun])
    if plural:
        phrase = f"{W.NUMBER_WORDS[count]} {phrase}"
    elif count == 1 and "position" not in attrs:
        phrase = f"one single {phrase}"
    else:
        phrase = _an(phrase)
    if "position" in attrs:
        phrase += " " + W._choice(rng, W.POSITION_PHRASES).format(attrs["position"])
    if "background" in attrs:
        phrase += " " + W._choice(rng, W.BACKGROUND_PHRASES[attrs["background"]])
    return phrase


# ---------------------------------------------------------------------------- dataset definitions
@dataclass(frozen=True)
class ToyClass:
    """One class: its name, the world attributes its images fix, the one attribute (``hidden``)
    its name conveys only weakly, and the look-alike value (``distractor``) the name also holds."""

    name: str
    fixed: Dict[str, object]
    hidden: str
    distractor: object

    @property
    def subject(self) -> str:
        """How descriptions refer to the class: its invented word, e.g. ``a snoglush`` (an LLM
        shortens a long name so)."""
        return _an(self.word)

    @property
    def word(self) -> str:
        """The invented word of the name."""
        return next(w for w in self.name.split() if w in INVENTED_WORDS)


@dataclass(frozen=True)
class ToyDataset:
    """A toy task: folder name, CamelCase name (split file), template and classes (label order).

    Classes are the product ``hidden values x named values`` (hidden major), so the base half
    (first ceil(C/2) labels) and the novel half hold different values of the hidden attribute."""

    name: str
    camel: str
    template: str
    classes: Tuple[ToyClass, ...]


def _an(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _value_word(attr: str, value) -> str:
    return world.NUMBER_WORDS[value] if attr == "count" else str(value)


def _class_name(hidden: str, value, distractor, named: str, named_value, word: str) -> str:
    """``word`` (invented), then the look-alike and the true hidden value joined by a hyphen
    (``circle-star``: true value last), combined with the named attribute's value."""
    part = f"{word} {_value_word(hidden, distractor)}-{_value_word(hidden, value)}"
    if named == "colour":
        return f"{named_value} {part}"
    if named == "shape":
        return f"{part} {named_value}"
    if named == "background":
        return f"{part} on {named_value}"
    if named == "count":
        return f"{world.NUMBER_WORDS[named_value]} {part} {'object' if named_value == 1 else 'objects'}"
    raise KeyError(named)


DISTRACTOR_SEED = 12  # draws each class's look-alike value (fixed, part of the world)
# (folder, CamelCase, template, hidden attribute and values, named attribute and values, fixed)
_SPECS = (
    ("toy_shape", "ToyShape", "a photo of a {}.", ("shape", world.SHAPES), ("colour", ("red", "yellow", "blue")), {}),
    ("toy_colour", "ToyColour", "a photo of {}.", ("colour", world.COLOURS), ("count", (1, 3, 5)), {}),
    ("toy_pattern", "ToyPattern", "a photo of a {}.", ("pattern", world.PATTERNS),
     ("background", ("black", "white", "grid")), {}),
    ("toy_count", "ToyCount", "a photo of a {}.", ("count", world.COUNTS), ("colour", ("red", "green", "blue")), {}),
    ("toy_background", "ToyBackground", "a photo of a {}.", ("background", world.BACKGROUNDS),
     ("colour", ("red", "yellow", "blue")), {}),
    ("toy_layout", "ToyLayout", "a photo of a {}.", ("position", world.POSITIONS),
     ("colour", ("red", "green", "blue")), {"count": 1}),
    ("toy_colour_shape", "ToyColourShape", "a photo of a {}.",
     ("shape", ("circle", "square", "triangle", "diamond", "star", "crescent")),
     ("colour", ("red", "yellow", "green", "blue", "pink")), {}),
    ("toy_shape_pattern", "ToyShapePattern", "a photo of a {}.", ("pattern", world.PATTERNS),
     ("shape", ("circle", "square", "star", "cross")), {}),
    ("toy_count_shape", "ToyCountShape", "a photo of {}.",
     ("shape", ("circle", "triangle", "diamond", "star", "hexagon")), ("count", (1, 2, 3, 4)), {}),
    ("toy_colour_pattern", "ToyColourPattern", "a photo of a {}.", ("pattern", ("solid", "striped", "dotted", "outlined")),
     ("colour", ("red", "yellow", "green", "cyan", "blue", "purple")), {}),
    ("toy_size_shape", "ToySizeShape", "a photo of a {}.", ("size", world.SIZES),
     ("shape", ("circle", "square", "triangle", "star", "cross", "crescent")), {}),
)


def _defs() -> List[ToyDataset]:
    words = iter(INVENTED_WORDS)
    rng = np.random.default_rng(DISTRACTOR_SEED)
    out = []
    for name, camel, template, (hidden, hvals), (named, nvals), fixed_all in _SPECS:
        classes = []
        for hv, nv in product(hvals, nvals):
            others = [v for v in hvals if v != hv]
            d = others[int(rng.integers(len(others)))]
            classes.append(ToyClass(_class_name(hidden, hv, d, named, nv, next(words)),
                                    {hidden: hv, named: nv, **fixed_all}, hidden, d))
        out.append(ToyDataset(name, camel, template, tuple(classes)))
    return out


TOY11: Tuple[ToyDataset, ...] = tuple(_defs())
TOY11_NAMES: Tuple[str, ...] = tuple(d.name for d in TOY11)


def get_toy_dataset(name: str) -> ToyDataset:
    """Definition of one toy-11 dataset by folder name. Raises ``KeyError`` if unknown."""
    for d in TOY11:
        if d.name == name:
            return d
    raise KeyError(f"unknown toy dataset {name!r}; known: {TOY11_NAMES}")


def describe(cls: ToyClass, seed: int = 0) -> List[str]:
    """CuPL-style description of a class: ``SENTENCES_PER_CLASS`` distinct sentences in a random order (deterministic in ``(seed, cls.name)``).

    Informative sentences state every attribute the class fixes, in ToyCLIP's caption words
    (so they carry the hidden attribute its invented name does not); the partial one only the
    named attribute(s); wrong ones the hidden attribute swapped for another value; irrelevant ones
    words ToyCLIP never saw.
    """
    rng = np.random.default_rng([seed, *cls.name.encode()])
    be = "is"
    x = cls.subject
    hidden_values = [v for v in world.ATTRIBUTES[cls.hidden] if v != cls.fixed[cls.hidden]]
    if cls.hidden == "size" and cls.fixed.get("count", 1) >= 5:
        hidden_values = [v for v in hidden_values if v != "large"]
    mentioned = {a: v for a, v in cls.fixed.items() if not (a == "count" and "position" in cls.fixed)}
    named = {a: v for a, v in mentioned.items() if a != cls.hidden}

    def wrong() -> Dict[str, object]:
        return {**mentioned, cls.hidden: world._choice(rng, hidden_values)}

    plan = ([(INFORMATIVE, lambda: mentioned)] * N_INFORMATIVE + [(INFORMATIVE, lambda: named)] * N_PARTIAL
            + [(INFORMATIVE, wrong)] * N_WRONG + [(IRRELEVANT, None)] * N_IRRELEVANT)
    out: List[str] = []
    for templates, attrs in plan:
        while True:
            t = world._choice(rng, templates)
            s = t.format(X=x, x=x, be=be, body=_body(attrs(), rng) if attrs else "")
            s = s[0].upper() + s[1:]
            if s not in out:
                break
        out.append(s)
    return [out[i] for i in rng.permutation(len(out))]


def _class_folder(name: str) -> str:
    return name.replace(" ", "_")


def _is_complete(ddir: Path, d: ToyDataset, seed: int, sizes: Dict[str, int]) -> bool:
    meta_p = ddir / "meta.json"
    if not meta_p.is_file():
        return False
    try:
        meta = json.loads(meta_p.read_text())
        split = json.loads((ddir / meta["split_file"]).read_text())
    except (OSError, ValueError, KeyError):
        return False
    if meta.get("toy", {}).get("seed") != seed or meta.get("toy", {}).get("version") != TOY_VERSION:
        raise ValueError(f"{ddir} holds toy data made with another seed/version "
                         f"({meta.get('toy')}, this version {TOY_VERSION}); rewrite it with "
                         f"`anchoropt data toy data_root={ddir.parent} --overwrite` or use another root")
    n_expected = {k: v * len(d.classes) for k, v in sizes.items()}
    if any(len(split.get(k, [])) != n for k, n in n_expected.items()):
        return False
    img_dir = ddir / meta["image_dir"]
    return all((img_dir / it[0]).is_file() for k in split for it in split[k])


def write_dataset(root: Path, d: ToyDataset, seed: int = 0, ds_index: int = 0,
                  sizes: Dict[str, int] = None) -> Path:
    """Write one toy dataset under ``root/<d.name>`` (replacing what is there).

    Image ``i`` of split ``s`` and label ``y`` is drawn with
    ``numpy.random.default_rng([seed, ds_index, s_index, y, i])``, so content is deterministic;
    every render is photographed (:func:`anchoropt.toy.world.photograph`: 24 px, noise).

    Args:
        root: data root (created if missing).
        d: dataset definition (see ``TOY11``).
        seed: world seed.
        ds_index: index of the dataset in ``TOY11`` (decorrelates datasets).
        sizes: images per class per split (default ``SPLIT_SIZES``).
    Returns:
        The dataset folder.
    """
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    ddir = Path(root) / d.name
    if ddir.exists():
        shutil.rmtree(ddir)
    img_dir = ddir / "images"
    for c in d.classes:
        (img_dir / _class_folder(c.name)).mkdir(parents=True, exist_ok=True)
    split: Dict[str, list] = {}
    for si, sname in enumerate(("train", "val", "test")):
        items = []
        for y, c in enumerate(d.classes):
            for i in range(sizes[sname]):
                rng = np.random.default_rng([seed, ds_index, si, y, i])
                scene = world.sample_scene(rng, **c.fixed)
                img = world.photograph(world.render(scene, rng), rng)
                rel = f"{_class_folder(c.name)}/{sname}_{i:03d}.png"
                Image.fromarray(img).save(img_dir / rel, compress_level=1)
                items.append([rel, y, c.name])
        split[sname] = items
    split_name = f"split_zhou_{d.camel}.json"
    (ddir / split_name).write_text(json.dumps(split))
    (ddir / "descriptions.json").write_text(json.dumps({c.name: describe(c, seed) for c in d.classes}, indent=1))
    meta = {"name": d.name, "split_file": split_name, "image_dir": "images", "template": d.template,
            "descriptions": "descriptions.json",
            "toy": {"version": TOY_VERSION, "seed": seed, "images_per_class": sizes,
                    "classes": [{"name": c.name, "attributes": c.fixed, "hidden": c.hidden,
                                 "distractor": c.distractor} for c in d.classes]}}
    (ddir / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: completion marker
    return ddir


def missing_toy(root: Path, names: Sequence[str], seed: int = 0) -> List[str]:
    """The toy datasets of ``names`` that :func:`make_toy11` would write under ``root`` (not complete
    on disk); reads, writes nothing. Raises ValueError as :func:`make_toy11` does."""
    return [n for n in names if not _is_complete(Path(root) / n, get_toy_dataset(n), seed, dict(SPLIT_SIZES))]


def make_toy11(root: Path, seed: int = 0, overwrite: bool = False, names: Sequence[str] = None,
               sizes: Dict[str, int] = None) -> List[str]:
    """Write the toy-11 datasets under ``root`` (CoOp layout, see module docstring).

    Args:
        root: data root; each dataset goes to ``root/<name>``.
        seed: world seed (same seed => same bytes).
        overwrite: rewrite datasets even when complete on disk.
        names: subset of ``TOY11_NAMES`` to write (default all eleven).
        sizes: images per class per split (default ``SPLIT_SIZES``: 20 train, 4 val, 30 test).
    Returns:
        The dataset names, in ``TOY11`` order.
    Raises:
        ConfigError: ``seed`` outside 0 .. 2^32 - 1 (before anything is written).
        OutputError: a dataset must be written and ``root`` is not a writable folder with room
            (read-only or full disk: ``io.check_output_dir``), before anything is written.
        ValueError: a complete dataset on disk was made with another seed or version
            (and ``overwrite`` is false).
        KeyError: unknown name in ``names``.
    """
    from anchoropt.config import MAX_SEED
    from anchoropt.errors import ConfigError
    from anchoropt.io import check_output_dir

    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"the toy world seed must be an integer in 0 .. {MAX_SEED}, got {seed}")
    root = Path(root)
    wanted = list(TOY11_NAMES if names is None else names)
    for n in wanted:
        get_toy_dataset(n)
    chosen = [(idx, d) for idx, d in enumerate(TOY11) if d.name in wanted]
    todo = [(idx, d) for idx, d in chosen
            if overwrite or not _is_complete(root / d.name, d, seed, dict(SPLIT_SIZES if sizes is None else sizes))]
    if todo:  # complete datasets on a read-only share need no write access
        check_output_dir(root, "data_root")
    for idx, d in todo:
        write_dataset(root, d, seed=seed, ds_index=idx, sizes=sizes)
    return [d.name for _, d in chosen]


if __name__ == "__main__":
    import argparse
    import time

    ap = argparse.ArgumentParser(description="write the toy-11 datasets")
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    t = time.time()
    names = make_toy11(a.root, a.seed, a.overwrite)
    print(f"wrote/checked {len(names)} datasets under {a.root} in {time.time() - t:.1f}s")
