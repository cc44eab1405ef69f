"""The "toy-11" benchmark: eleven classification datasets cut from the toy world.

Each dataset is a different task over the world's attributes (see :mod:`anchoropt.toy.world`),
written in the CoOp layout of ``docs/INTERFACES.md``::

    ROOT/<name>/meta.json
    ROOT/<name>/split_zhou_<Name>.json     {"train"|"val"|"test": [[relpath, label, classname], ...]}
    ROOT/<name>/descriptions.json          CuPL format {classname: [sentence, ...]}
    ROOT/<name>/images/<class folder>/<split>_<i>.png   (64 x 64 RGB)

Class ``label`` ids follow the order of the task's attribute product (first attribute major), so
the base/novel split (first ceil(C/2) labels are base) gives novel classes that share attribute
values with base classes only partly. In an image of class c, the attributes that define c are
fixed; every other attribute is drawn uniformly as in pretraining (e.g. a "red circle" image may
show 1-6 red circles of any pattern and size on any background).

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

TOY_VERSION = 2  # 2: lighting on every render; dataset images are photographed (world.photograph)
SPLIT_SIZES = {"train": 20, "val": 4, "test": 30}  # images per class

# ---------------------------------------------------------------------------- attribute knowledge
# Facts: sentences with "{x}" (the subject, e.g. "a red circle") and "{be}" (is/are).
SHAPE_FACTS = {
    "circle": ["{x} {be} perfectly round with no corners.", "{x} {be} shaped like a disc or a coin.",
               "{x} {be} bounded by a single curved edge.", "{x} {be} round and has no straight sides.",
               "{x} looks like a ring when drawn as an outline.", "{x} {be} equally wide in every direction."],
    "square": ["{x} {be} a shape with four equal straight sides.", "{x} has four right-angled corners.",
               "{x} {be} as wide as it is tall, like a box seen from the front.",
               "{x} has straight horizontal and vertical edges.", "{x} {be} a regular four-sided polygon.",
               "{x} looks like a tile or a block."],
    "triangle": ["{x} has three straight sides and three corners.", "{x} points upwards with a flat base.",
                 "{x} looks like a mountain peak or a wedge.", "{x} narrows to a sharp point at the top.",
                 "{x} {be} the simplest polygon, with three edges.", "{x} has a wide bottom and a pointed top."],
    "diamond": ["{x} stands on one of its corners, like a kite.", "{x} {be} taller than it is wide with pointed ends.",
                "{x} has four slanted sides, a rhombus shape.", "{x} has corners at the top, bottom, left and right.",
                "{x} looks like the diamond suit on a playing card.", "{x} {be} a four-sided shape tilted on its tip."],
    "star": ["{x} has five sharp points.", "{x} has points radiating out from its centre.",
             "{x} looks like a star drawn in the night sky.", "{x} alternates five outer tips and five inner corners.",
             "{x} {be} spiky, with ten straight edges.", "{x} looks like a sheriff's badge or a gold star sticker."],
    "cross": ["{x} {be} made of two bars crossing at right angles.", "{x} looks like a plus sign.",
              "{x} has four equal arms pointing up, down, left and right.", "{x} has twelve corners.",
              "{x} looks like the symbol of a first-aid kit.", "{x} {be} formed by a thick horizontal and vertical bar."],
    "hexagon": ["{x} has six equal sides and six corners.", "{x} looks like a cell of a honeycomb.",
                "{x} {be} almost round but made of straight edges.", "{x} has a flat top and a flat bottom.",
                "{x} looks like a nut for a bolt.", "{x} {be} a regular six-sided polygon."],
    "crescent": ["{x} {be} curved like the moon in its first quarter.", "{x} looks like a circle with a bite taken out.",
                 "{x} has two pointed horns.", "{x} {be} a thin curved sliver.",
                 "{x} looks like a new moon.", "{x} has one convex and one concave edge."],
}
COLOUR_FACTS = {
    "red": ["{x} {be} bright red, like a ripe tomato.", "{x} has the colour of a fire truck.",
            "{x} {be} coloured a strong, warm red.", "{x} {be} the red of a stop sign.",
            "{x} shows a saturated red hue.", "{x} {be} as red as a strawberry."],
    "orange": ["{x} {be} orange, like the fruit.", "{x} has the colour of a traffic cone.",
               "{x} {be} a warm colour between red and yellow.", "{x} {be} the orange of a pumpkin.",
               "{x} shows a bright orange hue.", "{x} {be} as orange as a carrot."],
    "yellow": ["{x} {be} bright yellow, like a lemon.", "{x} has the colour of the sun.",
               "{x} {be} a light, warm yellow.", "{x} {be} the yellow of a school bus.",
               "{x} shows a golden yellow hue.", "{x} {be} as yellow as a banana."],
    "green": ["{x} {be} green, like fresh grass.", "{x} has the colour of a leaf.",
              "{x} {be} a medium green.", "{x} {be} the green of a traffic light that says go.",
              "{x} shows a natural green hue.", "{x} {be} as green as a lime."],
    "cyan": ["{x} {be} cyan, a light greenish blue.", "{x} has the colour of tropical water.",
             "{x} {be} turquoise.", "{x} {be} the colour of a clear swimming pool.",
             "{x} shows a bright aqua hue.", "{x} {be} between green and blue, leaning to light blue."],
    "blue": ["{x} {be} deep blue.", "{x} has the colour of a sapphire.", "{x} {be} a strong royal blue.",
             "{x} {be} the blue of a clear evening sky.", "{x} shows a saturated blue hue.",
             "{x} {be} as blue as ink."],
    "purple": ["{x} {be} purple, like a plum.", "{x} has the colour of violet flowers.",
               "{x} {be} a mix of red and blue.", "{x} {be} the purple of grapes.",
               "{x} shows a deep violet hue.", "{x} {be} as purple as lavender."],
    "pink": ["{x} {be} pink, like candy floss.", "{x} has the colour of a flamingo.",
             "{x} {be} a light reddish pink.", "{x} {be} the pink of bubble gum.",
             "{x} shows a soft pink hue.", "{x} {be} as pink as a rose petal."],
}
PATTERN_FACTS = {
    "solid": ["{x} {be} filled completely with one flat colour.", "{x} has no gaps or texture inside.",
              "{x} has a uniform solid fill.", "{x} {be} painted in a single even colour.",
              "{x} shows no background through its inside.", "{x} {be} a filled shape."],
    "striped": ["{x} {be} filled with parallel stripes.", "{x} shows alternating bands of colour and background.",
                "{x} has a striped fill, like a zebra.", "{x} {be} covered with evenly spaced lines.",
                "{x} has stripes that may run across, up or diagonally.", "{x} {be} striped inside its outline."],
    "dotted": ["{x} {be} filled with many small dots.", "{x} has a polka-dot pattern.",
               "{x} shows a regular grid of spots.", "{x} {be} dotted inside its outline.",
               "{x} {be} speckled with round points of colour.", "{x} has a spotted fill."],
    "outlined": ["{x} {be} drawn only as an outline.", "{x} {be} hollow, showing the background inside.",
                 "{x} has a thick border and an empty middle.", "{x} {be} not filled in.",
                 "{x} {be} traced by a single coloured line.", "{x} {be} an empty contour."],
    "checkered": ["{x} has a checkerboard pattern.", "{x} {be} filled with small alternating squares.",
                  "{x} looks like a chessboard inside.", "{x} {be} chequered.",
                  "{x} shows squares of colour alternating with the background.", "{x} has a checked fill."],
    "crosshatched": ["{x} {be} filled with a grid of crossing lines.", "{x} has a crosshatch pattern.",
                     "{x} looks like a net or a mesh inside.", "{x} {be} hatched with horizontal and vertical lines.",
                     "{x} shows a lattice inside its outline.", "{x} has a fine grid fill."],
}
SIZE_FACTS = {
    "small": ["{x} {be} small compared with the picture.", "{x} {be} tiny, with a lot of background around.",
              "{x} {be} about a fifth of the image wide.", "{x} takes up little space in the image.",
              "{x} {be} little and easy to overlook.", "{x} {be} the smallest size of object."],
    "medium": ["{x} {be} of medium size.", "{x} {be} neither small nor large.",
               "{x} {be} about a third of the image wide.", "{x} {be} medium-sized.",
               "{x} takes up a moderate part of the image.", "{x} {be} of an ordinary size."],
    "large": ["{x} {be} large compared with the picture.", "{x} {be} big and fills much of its area.",
              "{x} {be} almost half the image wide.", "{x} takes up a lot of space in the image.",
              "{x} {be} the biggest size of object.", "{x} {be} large and easy to see."],
}
BACKGROUND_FACTS = {
    "black": ["{x} {be} on a plain black background.", "{x} {be} against a dark backdrop.",
              "{x} {be} shown on black.", "{x} stands out from a black background."],
    "white": ["{x} {be} on a plain white background.", "{x} {be} against a bright backdrop.",
              "{x} {be} shown on white.", "{x} stands out from a white background."],
    "gray": ["{x} {be} on a plain gray background.", "{x} {be} against a mid-grey backdrop.",
             "{x} {be} shown on gray.", "{x} stands out from a neutral gray background."],
    "noisy": ["{x} {be} on a noisy background.", "{x} {be} against a backdrop of random speckles.",
              "{x} {be} shown on grainy static.", "{x} stands out from a noisy, speckled background."],
    "grid": ["{x} {be} on a grid background.", "{x} {be} against a backdrop of ruled lines.",
             "{x} {be} shown over a grid like graph paper.", "{x} stands out from a light grid background."],
    "gradient": ["{x} {be} on a gradient background.", "{x} {be} against a backdrop shading from dark to light.",
                 "{x} {be} shown on a smooth gradient.", "{x} stands out from a shaded gradient background."],
}
COUNT_FACTS_ONE = ["{x} {be} a single object.", "{x} {be} alone in the picture.", "{x} appears exactly once.",
                   "{x} {be} the only object in the image.", "{x} {be} one lone item.",
                   "{x} has no copies next to it."]
COUNT_FACTS_MANY = ["{x} {be} exactly {n} identical objects.", "{x} {be} {n} copies of the same shape.",
                    "{x} {be} a group of {n} items.", "{x} {be} {n} objects laid out in a grid.",
                    "{x} {be} {n} things of the same colour and pattern.", "{x} {be} counted as {n}."]
_POS_WORDS = {
    "center": ("in the middle of the image", "centered both horizontally and vertically", "at the centre",
               "equally far from all four edges", "right in the middle"),
    "top": ("near the top edge, horizontally centered", "in the upper middle", "high in the image",
            "above the centre", "close to the top border"),
    "bottom": ("near the bottom edge, horizontally centered", "in the lower middle", "low in the image",
               "below the centre", "close to the bottom border"),
    "left": ("on the left side, vertically centered", "at the middle of the left edge", "to the left",
             "left of the centre", "close to the left border"),
    "right": ("on the right side, vertically centered", "at the middle of the right edge", "to the right",
              "right of the centre", "close to the right border"),
    "top left": ("in the upper left corner", "near the top and the left edge", "at the top left",
                 "above and left of the centre", "close to the top left corner"),
    "top right": ("in the upper right corner", "near the top and the right edge", "at the top right",
                  "above and right of the centre", "close to the top right corner"),
    "bottom left": ("in the lower left corner", "near the bottom and the left edge", "at the bottom left",
                    "below and left of the centre", "close to the bottom left corner"),
    "bottom right": ("in the lower right corner", "near the bottom and the right edge", "at the bottom right",
                     "below and right of the centre", "close to the bottom right corner"),
}
POSITION_FACTS = {p: [f"The shape {w[0]}.", f"A single shape placed {w[1]}.", f"One object sitting {w[2]}.",
                      f"A lone shape {w[3]}.", f"An object drawn {w[4]}."] for p, w in _POS_WORDS.items()}
GENERIC_FACTS = ["A photo of {x}.", "A simple synthetic image of {x}.", "{x} drawn as a flat geometric figure.",
                 "A small picture showing {x}.", "{x}, rendered in a toy world of shapes.",
                 "A toy scene with {x}."]


# ---------------------------------------------------------------------------- dataset definitions
@dataclass(frozen=True)
class ToyClass:
    """One class: its name, the world attributes it fixes, and how sentences refer to it."""

    name: str
    fixed: Dict[str, object]
    subject: str  # noun phrase for descriptions, e.g. "a red circle"
    plural: bool = False


@dataclass(frozen=True)
class ToyDataset:
    """A toy task: folder name, CamelCase name (split file), template and classes (label order)."""

    name: str
    camel: str
    template: str
    classes: Tuple[ToyClass, ...]
    fixed_all: Dict[str, object] = None  # attributes fixed for every image of the dataset


def _an(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _count_phrase(n: int, noun_sing: str) -> str:
    return f"{world.NUMBER_WORDS[n]} {noun_sing if n == 1 else world.PLURALS.get(noun_sing, noun_sing + 's')}"


def _defs() -> List[ToyDataset]:
    W = world
    C = lambda name, fixed, subj, pl=False: ToyClass(name, fixed, subj, pl)  # noqa: E731
    ds = [
        ToyDataset("toy_shape", "ToyShape", "a photo of a {}.",
                   tuple(C(s, {"shape": s}, _an(s)) for s in W.SHAPES)),
        ToyDataset("toy_colour", "ToyColour", "a photo of a {} shape.",
                   tuple(C(c, {"colour": c}, _an(c + " shape")) for c in W.COLOURS)),
        ToyDataset("toy_pattern", "ToyPattern", "a photo of a {} shape.",
                   tuple(C(p, {"pattern": p}, _an(p + " shape")) for p in W.PATTERNS)),
        ToyDataset("toy_count", "ToyCount", "a photo of {}.",
                   tuple(C(_count_phrase(n, "shape"), {"count": n}, _count_phrase(n, "shape"), n > 1)
                         for n in W.COUNTS)),
        ToyDataset("toy_background", "ToyBackground", "a photo of shapes on a {}.",
                   tuple(C(f"{b} background", {"background": b}, f"shapes on a {b} background", True)
                         for b in W.BACKGROUNDS)),
        ToyDataset("toy_layout", "ToyLayout", "a photo of a shape in the {}.",
                   tuple(C(p, {"position": p, "count": 1}, f"a shape in the {p}") for p in W.POSITIONS),
                   {"count": 1}),
        ToyDataset("toy_colour_shape", "ToyColourShape", "a photo of a {}.",
                   tuple(C(f"{c} {s}", {"colour": c, "shape": s}, _an(f"{c} {s}"))
                         for c, s in product(("red", "orange", "green", "blue", "pink"),
                                             ("circle", "square", "triangle", "diamond", "star", "crescent")))),
        ToyDataset("toy_shape_pattern", "ToyShapePattern", "a photo of a {}.",
                   tuple(C(f"{p} {s}", {"pattern": p, "shape": s}, _an(f"{p} {s}"))
                         for p, s in product(W.PATTERNS, ("square", "triangle", "cross", "hexagon")))),
        ToyDataset("toy_count_shape", "ToyCountShape", "a photo of {}.",
                   tuple(C(_count_phrase(n, s), {"count": n, "shape": s}, _count_phrase(n, s), n > 1)
                         for n, s in product((1, 2, 3, 4), ("circle", "triangle", "diamond", "star", "hexagon")))),
        ToyDataset("toy_colour_pattern", "ToyColourPattern", "a photo of a {} shape.",
                   tuple(C(f"{c} {p}", {"colour": c, "pattern": p}, _an(f"{c} {p} shape"))
                         for c, p in product(("red", "yellow", "green", "cyan", "blue", "purple"),
                                             ("solid", "striped", "dotted", "outlined")))),
        ToyDataset("toy_size_shape", "ToySizeShape", "a photo of a {}.",
                   tuple(C(f"{z} {s}", {"size": z, "shape": s}, _an(f"{z} {s}"))
                         for z, s in product(W.SIZES, ("circle", "square", "triangle", "star", "cross", "crescent")))),
    ]
    return ds


TOY11: Tuple[ToyDataset, ...] = tuple(_defs())
TOY11_NAMES: Tuple[str, ...] = tuple(d.name for d in TOY11)


def get_toy_dataset(name: str) -> ToyDataset:
    """Definition of one toy-11 dataset by folder name. Raises ``KeyError`` if unknown."""
    for d in TOY11:
        if d.name == name:
            return d
    raise KeyError(f"unknown toy dataset {name!r}; known: {TOY11_NAMES}")


def describe(cls: ToyClass) -> List[str]:
    """CuPL-style sentences (>= 10, deterministic) for a class, from the world's attribute facts."""
    be = "are" if cls.plural else "is"
    x = cls.subject
    facts: List[str] = []
    for attr, val in cls.fixed.items():
        if attr == "shape":
            facts += SHAPE_FACTS[val]
        elif attr == "colour":
            facts += COLOUR_FACTS[val]
        elif attr == "pattern":
            facts += PATTERN_FACTS[val]
        elif attr == "size":
            facts += SIZE_FACTS[val]
        elif attr == "background":
            facts += BACKGROUND_FACTS[val]
        elif attr == "position":
            facts += POSITION_FACTS[val]
        elif attr == "count":
            if attr == "count" and "position" in cls.fixed:
                continue  # layout classes: count is a constant, not a class property
            facts += COUNT_FACTS_ONE if val == 1 else [f.replace("{n}", world.NUMBER_WORDS[val]) for f in COUNT_FACTS_MANY]
    facts += GENERIC_FACTS
    out, seen = [], set()
    for f in facts:
        s = f.format(x=x, be=be)
        s = s[0].upper() + s[1:]
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


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
                         f"`anchoropt data toy --root {ddir.parent} --overwrite` or use another root")
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
    (ddir / "descriptions.json").write_text(json.dumps({c.name: describe(c) for c in d.classes}, indent=1))
    meta = {"name": d.name, "split_file": split_name, "image_dir": "images", "template": d.template,
            "descriptions": "descriptions.json",
            "toy": {"version": TOY_VERSION, "seed": seed, "images_per_class": sizes,
                    "classes": [{"name": c.name, "attributes": c.fixed} for c in d.classes]}}
    (ddir / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: completion marker
    return ddir


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
        ValueError: a complete dataset on disk was made with another seed or version
            (and ``overwrite`` is false).
        KeyError: unknown name in ``names``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    wanted = list(TOY11_NAMES if names is None else names)
    for n in wanted:
        get_toy_dataset(n)
    out = []
    for idx, d in enumerate(TOY11):
        if d.name not in wanted:
            continue
        ddir = root / d.name
        complete = False
        if not overwrite:
            complete = _is_complete(ddir, d, seed, dict(SPLIT_SIZES if sizes is None else sizes))
        if not complete:
            write_dataset(root, d, seed=seed, ds_index=idx, sizes=sizes)
        out.append(d.name)
    return out


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
