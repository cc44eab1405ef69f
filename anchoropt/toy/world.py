"""A small, deterministic synthetic "toy world" of coloured shapes with captions.

Every image is a 64 x 64 RGB picture of 1 to 6 identical objects. An image is fully described by a
:class:`Scene` (shape, colour, fill pattern, size, count, background and, for a single object, its
position). Rendering and captioning are pure functions of the scene and a seed, so the same seed
always gives the same bytes.

The world exists so that a small CLIP can be pretrained offline (``anchoropt.toy.pretrain``) and so
that prompt-learning benchmarks can be cut from it (``anchoropt.toy.datasets``).

Why one module of ~560 lines: the scene sampler, the renderer and the captioner together define
the pretraining distribution of the shipped ToyCLIP checkpoint and the toy data version; a change
to any of them invalidates both, so they are read, versioned and reviewed together.

Attributes (``ATTRIBUTES`` lists the values in their canonical order):

- shape (8): circle, square, triangle, diamond, star, cross, hexagon, crescent
- colour (8): red, orange, yellow, green, cyan, blue, purple, pink
- pattern (6): solid, striped, dotted, outlined, checkered, crosshatched
- size (3): small (12-15 px across), medium (18-21 px), large (26-30 px)
- count (1-6): 1 object placed at one of 9 positions; 2-4 objects in the cells of a 2 x 2 grid;
  5-6 objects in the cells of a 3 x 3 grid (small or medium only, large ones would not fit)
- background (6): black, white, gray, noisy, grid, gradient
- position (9, single object only): center, top, bottom, left, right, top left, top right,
  bottom left, bottom right

Drawing is done with PIL at twice the resolution and box-filtered down to 64 px (anti-aliasing).
Colours get a small random jitter and pixels a little noise, so no two images are identical.
Every picture is then lit by random lighting (:func:`_lighting`: a colour cast,
brightness and haze that captions never mention), so that colour and background, trivial on a
clean render, stay ambiguous on some images as they are in photos.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64  # output side, pixels
_SS = 2  # supersampling factor
_N = IMAGE_SIZE * _SS  # drawing canvas side

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "crescent")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
PATTERNS = ("solid", "striped", "dotted", "outlined", "checkered", "crosshatched")
SIZES = ("small", "medium", "large")
COUNTS = (1, 2, 3, 4, 5, 6)
BACKGROUNDS = ("black", "white", "gray", "noisy", "grid", "gradient")
POSITIONS = ("center", "top", "bottom", "left", "right",
             "top left", "top right", "bottom left", "bottom right")

ATTRIBUTES = {
    "shape": SHAPES, "colour": COLOURS, "pattern": PATTERNS, "size": SIZES,
    "count": COUNTS, "background": BACKGROUNDS, "position": POSITIONS,
}

COLOUR_RGB = {
    "red": (215, 30, 35), "orange": (245, 135, 20), "yellow": (240, 220, 35),
    "green": (40, 165, 55), "cyan": (35, 200, 215), "blue": (35, 60, 215),
    "purple": (135, 45, 175), "pink": (250, 125, 190),
}
SIZE_RANGE = {"small": (12, 15), "medium": (18, 21), "large": (26, 30)}  # diameter, 64-px units
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
PLURALS = {s: (s + "es" if s.endswith("s") else s + "s") for s in SHAPES}

# position -> (x, y) centre in 64-px units for a single object
_POS_XY = {
    "center": (32, 32), "top": (32, 16), "bottom": (32, 48), "left": (16, 32), "right": (48, 32),
    "top left": (16, 16), "top right": (48, 16), "bottom left": (16, 48), "bottom right": (48, 48),
}
_GRID2 = [(x, y) for y in (17, 47) for x in (17, 47)]
_GRID3 = [(x, y) for y in (11, 32, 53) for x in (11, 32, 53)]


@dataclass(frozen=True)
class Scene:
    """Full description of one toy image.

    Attributes hold values from ``ATTRIBUTES``; ``position`` is set only when ``count == 1``.
    """

    shape: str
    colour: str
    pattern: str
    size: str
    count: int
    background: str
    position: Optional[str] = None

    def as_dict(self) -> dict:
        """The scene as a plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)


def validate_scene(scene: Scene) -> None:
    """Raise ``ValueError`` if ``scene`` holds a value outside the world or an impossible combo."""
    for name in ("shape", "colour", "pattern", "size", "count", "background"):
        if getattr(scene, name) not in ATTRIBUTES[name]:
            raise ValueError(f"unknown {name} {getattr(scene, name)!r}; expected one of {ATTRIBUTES[name]}")
    if scene.count == 1:
        if scene.position not in POSITIONS:
            raise ValueError(f"a single object needs a position in {POSITIONS}, got {scene.position!r}")
    elif scene.position is not None:
        raise ValueError("position is only defined for count == 1")
    if scene.count >= 5 and scene.size == "large":
        raise ValueError("5 or 6 objects cannot be large (they would not fit)")


def sample_scene(rng: np.random.Generator, **fixed) -> Scene:
    """Draw a random scene, uniformly over each attribute, with some attributes fixed.

    Args:
        rng: numpy random generator (consumed).
        **fixed: attribute values to keep, e.g. ``shape="star", count=1``. ``position`` given
            implies ``count=1``.
    Returns:
        A valid :class:`Scene`. When ``count >= 5`` is drawn or fixed, ``size`` is drawn from
        small/medium; when ``size="large"`` is fixed, ``count`` is drawn from 1-4.
    Raises:
        ValueError: unknown attribute name or value, or an impossible combination.
    """
    unknown = set(fixed) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}")
    if fixed.get("position") is not None:
        if fixed.setdefault("count", 1) != 1:
            raise ValueError("position is only defined for count == 1")

    def pick(name, options):
        if name in fixed and fixed[name] is not None:
            return fixed[name]
        return options[int(rng.integers(len(options)))]

    shape = pick("shape", SHAPES)
    colour = pick("colour", COLOURS)
    pattern = pick("pattern", PATTERNS)
    if fixed.get("size") == "large":
        count = pick("count", COUNTS[:4])
    else:
        count = pick("count", COUNTS)
    size = pick("size", SIZES if count <= 4 else SIZES[:2])
    background = pick("background", BACKGROUNDS)
    position = pick("position", POSITIONS) if count == 1 else None
    scene = Scene(shape, colour, pattern, size, int(count), background, position)
    validate_scene(scene)
    return scene


# ----------------------------------------------------------------------------------- drawing
_YY, _XX = np.mgrid[0:_N, 0:_N]


def _polygon(kind: str) -> np.ndarray:
    """Unit polygon (k x 2, radius ~1, centred on 0, y down) for a polygonal shape."""
    if kind == "square":
        r = 0.82
        return np.array([[-r, -r], [r, -r], [r, r], [-r, r]])
    if kind == "triangle":
        a = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(a), np.sin(a) + 0.18], 1) * 1.05
    if kind == "diamond":
        return np.array([[0, -1.0], [0.62, 0], [0, 1.0], [-0.62, 0]])
    if kind == "star":
        a = np.deg2rad(-90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(a), r * np.sin(a) + 0.08], 1)
    if kind == "cross":
        w, l = 0.3, 0.95
        return np.array([[-w, -l], [w, -l], [w, -w], [l, -w], [l, w], [w, w], [w, l], [-w, l],
                         [-w, w], [-l, w], [-l, -w], [-w, -w]])
    if kind == "hexagon":
        a = np.deg2rad(60 * np.arange(6))
        return np.stack([np.cos(a), np.sin(a)], 1) * 0.95
    raise KeyError(kind)


_POLYS = {k: _polygon(k) for k in ("square", "triangle", "diamond", "star", "cross", "hexagon")}


def _shape_mask(shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Boolean (_N, _N) mask of one object; centre and radius in canvas pixels, angle in rad."""
    img = Image.new("L", (_N, _N), 0)
    d = ImageDraw.Draw(img)
    if shape == "circle":
        r = radius * 0.92
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "crescent":
        r = radius * 0.95
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = 0.5 * r * math.cos(angle), 0.5 * r * math.sin(angle)
        r2 = r * 0.82
        d.ellipse([cx + ox - r2, cy + oy - r2, cx + ox + r2, cy + oy + r2], fill=0)
    else:
        p = _POLYS[shape]
        c, s = math.cos(angle), math.sin(angle)
        rot = p @ np.array([[c, s], [-s, c]])
        pts = [(cx + radius * x, cy + radius * y) for x, y in rot]
        d.polygon(pts, fill=255)
    return np.asarray(img) > 127


def _erode(mask: np.ndarray, width: int) -> np.ndarray:
    """Binary erosion of a boolean mask by a (2*width+1) square (separable shifted ANDs)."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        for k in range(1, width + 1):
            if axis == 0:
                out[k:] &= src[:-k]
                out[:-k] &= src[k:]
                out[:k] = False
                out[-k:] = False
            else:
                out[:, k:] &= src[:, :-k]
                out[:, :-k] &= src[:, k:]
                out[:, :k] = False
                out[:, -k:] = False
    return out


def _texture(pattern: str, rng: np.random.Generator) -> np.ndarray:
    """Boolean (_N, _N) texture for a non-solid fill pattern (True = painted)."""
    ph = int(rng.integers(8))
    if pattern == "striped":
        o = int(rng.integers(4))
        coord = (_YY, _XX, _XX + _YY, _XX - _YY)[o]
        period = 8 if o < 2 else 10
        return ((coord + ph) % period) < period // 2
    if pattern == "dotted":
        return (((_XX + ph) % 8 - 3.5) ** 2 + ((_YY + ph) % 8 - 3.5) ** 2) <= 5.0
    if pattern == "checkered":
        return ((((_XX + ph) // 6) + ((_YY + ph) // 6)) % 2) == 0
    if pattern == "crosshatched":
        return (((_XX + ph) % 8) < 2) | (((_YY + ph) % 8) < 2)
    raise KeyError(pattern)


def _background(name: str, rng: np.random.Generator) -> np.ndarray:
    """Float (_N, _N, 3) background in 0..255."""
    j = rng.uniform(-12, 12)
    if name == "black":
        return np.full((_N, _N, 3), 22 + j, np.float32)
    if name == "white":
        return np.full((_N, _N, 3), 232 + j, np.float32)
    if name == "gray":
        return np.full((_N, _N, 3), 128 + j, np.float32)
    if name == "noisy":
        n = rng.normal(128 + j, 45, size=(IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
        n = np.repeat(np.repeat(n, _SS, 0), _SS, 1)
        return np.clip(np.repeat(n, 3, 2), 0, 255)
    if name == "grid":
        bg = np.full((_N, _N, 3), 205 + j, np.float32)
        ph = int(rng.integers(16))
        lines = (((_XX + ph) % 16) < 2) | (((_YY + ph) % 16) < 2)
        bg[lines] = 80 + j
        return bg
    if name == "gradient":
        t = np.linspace(0.0, 1.0, _N, dtype=np.float32)
        if rng.integers(2):
            t = t[::-1]
        g = 30 + 200 * t
        g = g[:, None] if rng.integers(2) else g[None, :]
        return np.repeat(np.broadcast_to(g, (_N, _N))[:, :, None], 3, 2).copy() + j
    raise KeyError(name)


def _object_centres(scene: Scene, rng: np.random.Generator) -> list:
    """Object centres in 64-px units."""
    if scene.count == 1:
        x, y = _POS_XY[scene.position]
        return [(x + rng.uniform(-2, 2), y + rng.uniform(-2, 2))]
    if scene.count <= 4:
        cells, jit = _GRID2, 3.0
    else:
        cells, jit = _GRID3, 1.0
    idx = rng.choice(len(cells), size=scene.count, replace=False)
    return [(cells[i][0] + rng.uniform(-jit, jit), cells[i][1] + rng.uniform(-jit, jit)) for i in idx]


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Draw a scene.

    Args:
        scene: what to draw (validated).
        rng: numpy random generator used for jitter (position, rotation, colour, noise).
    Returns:
        uint8 array of shape (64, 64, 3), RGB.
    Raises:
        ValueError: invalid scene.
    """
    validate_scene(scene)
    img = _background(scene.background, rng)
    rgb = np.clip(np.array(COLOUR_RGB[scene.colour], np.float32) + rng.uniform(-15, 15, 3), 0, 255)
    lo, hi = SIZE_RANGE[scene.size]
    diam = rng.uniform(lo, hi)  # same size for all objects of the image
    mask = np.zeros((_N, _N), bool)
    for cx, cy in _object_centres(scene, rng):
        if scene.shape == "crescent":
            angle = rng.uniform(0, 2 * math.pi)
        else:
            angle = math.radians(rng.uniform(-10, 10))
        mask |= _shape_mask(scene.shape, cx * _SS, cy * _SS, diam * _SS / 2, angle)
    if scene.pattern == "solid":
        paint = mask
    elif scene.pattern == "outlined":
        paint = mask & ~_erode(mask, 2 * _SS // 2 + 1)
    else:
        paint = (mask & _texture(scene.pattern, rng)) | (mask & ~_erode(mask, 1))
    img[paint] = rgb
    # box-filter down to 64 px, add a little pixel noise
    img = (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2]) * 0.25
    img = _lighting(img, rng)
    img += rng.normal(0, 4, size=img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# Lighting strength (log-normal sigmas, haze upper bound); chosen so that neighbouring colours
# (red / orange / pink, blue / purple) and dark backgrounds get confused on a minority of images.
CAST_SIGMA, BRIGHTNESS_SIGMA, HAZE_MAX = 0.15, 0.25, 0.5


PHOTO_SIDE, PHOTO_NOISE = 24, 8.0  # resolution (px) and sensor noise (std, 0..255) of a photo


def photograph(img: np.ndarray, rng: np.random.Generator, side: int = PHOTO_SIDE,
               noise: float = PHOTO_NOISE) -> np.ndarray:
    """A low-resolution, noisy photo of a render: bilinear down to ``side`` px and back, plus
    Gaussian noise of std ``noise``. The toy-11 datasets are photographed (a domain shift from
    the clean pretraining renders, as benchmark photos differ from pretraining data).

    Args:
        img: uint8 (64, 64, 3) render.
    Returns:
        uint8 (64, 64, 3).
    """
    small = Image.fromarray(img).resize((side, side), Image.BILINEAR).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    out = np.asarray(small, np.float32) + rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _lighting(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour cast (per-channel gain), brightness (global gain) and haze (blend towards a random
    grey) on a float (64, 64, 3) image in 0..255."""
    gain = np.exp(rng.normal(0, CAST_SIGMA, 3) + rng.normal(0, BRIGHTNESS_SIGMA)).astype(np.float32)
    haze = rng.uniform(0, HAZE_MAX)
    return (1 - haze) * img * gain + haze * rng.uniform(60, 200)


# ----------------------------------------------------------------------------------- captions
SHAPE_WORDS = {
    "circle": ["circle", "circle", "circle", "disc", "round disk"],
    "square": ["square", "square", "square", "box shape"],
    "triangle": ["triangle", "triangle", "triangle", "three-sided shape"],
    "diamond": ["diamond", "diamond", "diamond", "rhombus"],
    "star": ["star", "star", "star", "five-pointed star"],
    "cross": ["cross", "cross", "cross", "plus sign"],
    "hexagon": ["hexagon", "hexagon", "hexagon", "six-sided shape"],
    "crescent": ["crescent", "crescent", "crescent", "crescent moon"],
}
COLOUR_WORDS = {
    "red": ["red", "red", "red", "scarlet"], "orange": ["orange"], "yellow": ["yellow", "yellow", "golden"],
    "green": ["green"], "cyan": ["cyan", "cyan", "turquoise"], "blue": ["blue"],
    "purple": ["purple", "purple", "violet"], "pink": ["pink"],
}
PATTERN_ADJ = {
    "solid": ["solid", "solid", "filled", "plain"], "striped": ["striped"],
    "dotted": ["dotted", "dotted", "polka-dot", "spotted"], "outlined": ["outlined", "outlined", "hollow"],
    "checkered": ["checkered", "checkered", "chequered"],
    "crosshatched": ["crosshatched", "crosshatched", "hatched"],
}
PATTERN_WITH = {
    "solid": ["with a solid fill"], "striped": ["with stripes"], "dotted": ["with dots"],
    "outlined": ["drawn as an outline"], "checkered": ["with a checkerboard pattern"],
    "crosshatched": ["with a crosshatch pattern"],
}
SIZE_WORDS = {"small": ["small", "small", "tiny", "little"], "medium": ["medium", "medium", "medium-sized"],
              "large": ["large", "large", "big"]}
BACKGROUND_PHRASES = {
    "black": ["on a black background", "on black", "against a dark background"],
    "white": ["on a white background", "on white", "against a white background"],
    "gray": ["on a gray background", "on gray", "against a grey background"],
    "noisy": ["on a noisy background", "on a speckled noisy background"],
    "grid": ["on a grid background", "on a grid", "over a grid of lines"],
    "gradient": ["on a gradient background", "on a gradient", "on a shaded gradient background"],
}
POSITION_PHRASES = ["in the {}", "in the {}", "at the {}", "in the {} of the image"]
GENERIC_NOUNS = (["shape", "shape", "object"], ["shapes", "shapes", "objects"])
CAPTION_TEMPLATES = ("a photo of {}.", "a photo of {}.", "an image of {}.", "{}.", "a picture showing {}.",
                     "a drawing of {}.", "there {be} {}.", "a rendering of {}.")


def _plural(word: str) -> str:
    return word + "es" if word.endswith("s") else word + "s"


def _choice(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


def caption(scene: Scene, rng: np.random.Generator, p_drop: float = 0.3, always: Sequence[str] = ()) -> str:
    """A natural-language caption of ``scene`` with random wording.

    Each of size, colour, pattern, count, background and position is mentioned with probability
    ``1 - p_drop``; the shape is replaced by a generic noun ("shape", "object") with probability
    ``p_drop / 2``. Synonyms, adjective forms and sentence templates vary.

    Args:
        scene: the scene to describe.
        rng: numpy random generator.
        p_drop: probability of leaving out each attribute, in [0, 1].
        always: attribute names that are always mentioned (e.g. ``("shape",)``).
    Returns:
        A one-sentence caption (lower case, ends with a full stop).
    """
    def keep(attr):
        r = rng.random()  # always drawn, so ``always`` does not shift the random stream
        return attr in always or r >= p_drop

    plural = scene.count > 1
    if rng.random() < p_drop / 2 and "shape" not in always:
        noun = _choice(rng, GENERIC_NOUNS[plural])
    else:
        w = _choice(rng, SHAPE_WORDS[scene.shape])
        noun = _plural(w) if plural else w
    adjs = []
    if keep("size"):
        adjs.append(_choice(rng, SIZE_WORDS[scene.size]))
    if keep("colour"):
        adjs.append(_choice(rng, COLOUR_WORDS[scene.colour]))
    pattern_after = None
    if keep("pattern"):
        if rng.random() < 0.75:
            adjs.append(_choice(rng, PATTERN_ADJ[scene.pattern]))
        else:
            pattern_after = _choice(rng, PATTERN_WITH[scene.pattern])
    np_ = " ".join(adjs + [noun])
    if plural:
        if keep("count") or not adjs:
            num = NUMBER_WORDS[scene.count] if rng.random() < 0.85 else str(scene.count)
            np_ = f"{num} {np_}"
    else:
        art = "an" if np_[0] in "aeiou" else "a"
        np_ = f"{'one' if rng.random() < 0.15 else art} {np_}"
    parts = [np_]
    if pattern_after:
        parts.append(pattern_after)
    if scene.count == 1 and keep("position"):
        parts.append(_choice(rng, POSITION_PHRASES).format(scene.position))
    if keep("background"):
        parts.append(_choice(rng, BACKGROUND_PHRASES[scene.background]))
    body = " ".join(parts)
    be = "are" if plural else "is"
    return _choice(rng, CAPTION_TEMPLATES).format(body, be=be)


def caption_phrases() -> list:
    """Every word and phrase a caption of :func:`caption` can contain (templates with an empty
    body). The BPE tokens of these are all ToyCLIP's text tower saw in pretraining; a word made of
    other tokens was never paired with any image (``anchoropt.toy.datasets`` names classes so)."""
    shape_words = [w for ws in SHAPE_WORDS.values() for w in ws]
    out = shape_words + [_plural(w) for w in shape_words]
    for table in (COLOUR_WORDS, PATTERN_ADJ, PATTERN_WITH, SIZE_WORDS, BACKGROUND_PHRASES):
        out += [w for ws in table.values() for w in ws]
    out += [p.format(q) for p in POSITION_PHRASES for q in POSITIONS]
    out += [w for ws in GENERIC_NOUNS for w in ws] + list(NUMBER_WORDS[1:]) + [str(c) for c in COUNTS[1:]]
    out += ["a", "an", "one"] + [t.format("", be=be) for t in CAPTION_TEMPLATES for be in ("is", "are")]
    return out


# ----------------------------------------------------------------------------------- batches
def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator used for image ``index`` of stream ``seed`` (independent of other indices)."""
    return np.random.default_rng([int(seed), int(index)])


def generate(n: int, seed: int = 0, start: int = 0, with_captions: bool = True, **fixed):
    """Generate ``n`` random images (and captions) deterministically.

    Image ``i`` depends only on ``(seed, start + i, fixed)``, so ranges can be generated in pieces
    or in parallel and still match.

    Args:
        n: number of images (>= 0).
        seed: stream seed.
        start: index of the first image in the stream.
        with_captions: also return captions.
        **fixed: attribute values to keep fixed (see :func:`sample_scene`).
    Returns:
        ``(images, scenes, captions)``: uint8 array (n, 64, 64, 3), list of :class:`Scene`,
        list of str (``None`` when ``with_captions`` is false).
    Raises:
        ValueError: negative ``n`` or invalid ``fixed``.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    scenes, caps = [], []
    for i in range(n):
        rng = scene_rng(seed, start + i)
        sc = sample_scene(rng, **fixed)
        images[i] = render(sc, rng)
        scenes.append(sc)
        if with_captions:
            caps.append(caption(sc, rng))
    return images, scenes, (caps if with_captions else None)


def contrast_group(rng: np.random.Generator, attribute: str, max_size: int = 8) -> list:
    """Scenes that share every attribute but ``attribute`` (hard negatives for contrastive training).

    Args:
        rng: numpy random generator.
        attribute: the attribute that varies (a key of ``ATTRIBUTES``).
        max_size: at most this many scenes; each has a different value of ``attribute``.
    Returns:
        list of ``min(max_size, number of values)`` valid scenes. When sizes vary the shared
        count is 1-4 (large objects need it); when counts vary the shared size is small or medium.
    Raises:
        KeyError: unknown attribute.
    """
    values = list(ATTRIBUTES[attribute])
    fixed = {}
    if attribute == "size":
        fixed["count"] = COUNTS[int(rng.integers(4))]
    if attribute == "count":
        fixed["size"] = SIZES[int(rng.integers(2))]
    if attribute == "position":
        fixed["count"] = 1
    base = sample_scene(rng, **fixed).as_dict()
    n = min(max_size, len(values))
    picks = [values[i] for i in rng.choice(len(values), size=n, replace=False)]
    out = []
    for v in picks:
        d = dict(base)
        d[attribute] = v
        if attribute == "count":
            d["position"] = (base["position"] or POSITIONS[int(rng.integers(len(POSITIONS)))]) if v == 1 else None
        out.append(Scene(**d))
        validate_scene(out[-1])
    return out


def render_scenes(scenes: Iterable[Scene], seed: int = 0, start: int = 0) -> np.ndarray:
    """Render given scenes; scene ``i`` uses ``scene_rng(seed, start + i)`` for its jitter.

    Returns:
        uint8 array (n, 64, 64, 3).
    """
    scenes = list(scenes)
    out = np.empty((len(scenes), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i, sc in enumerate(scenes):
        out[i] = render(sc, scene_rng(seed, start + i))
    return out


def contact_sheet(images: np.ndarray, cols: int = 16) -> Image.Image:
    """Tile (n, H, W, 3) uint8 images into one PIL image (for eyeballing the world)."""
    n, h, w, _ = images.shape
    rows = (n + cols - 1) // cols
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i]
    return Image.fromarray(sheet)
