"""ATPrompt's attribute words per dataset (Li et al. 2025, "Attribute-anchored textual prompt").

Torch-free, so that :meth:`anchoropt.config.TrainConfig.validate` refuses an ``*_atp`` run on a
dataset without words before anything loads. The prompt they go into is built by
:mod:`anchoropt.methods.atprompt`.

Standard datasets: the words of the reference's ``choose_attribute_for_atprompt`` (train.py), the
"searched results" of its docs/ATPrompt.md Table 1, keyed by this project's dataset names; the
ImageNet variants take ImageNet's, as there.

Toy-11 (:mod:`anchoropt.toy.datasets`): each dataset's classes differ in two world attributes, the
hidden one (which the invented class name conveys weakly) and the named one; their words, hidden
first, are :data:`TOY_ATTRIBUTE_WORDS` of those attributes: the category word the toy captions use
(``shape``, ``pattern``, ``background``; ``sized``, of ``medium-sized``, for size), else the
attribute's own name (``colour``, ``count``, ``position``: no caption names these categories, so
ToyCLIP's text tower never trained their tokens and they stay fixed, uninformative embeddings, as
a word CLIP does not know).
"""
from __future__ import annotations

from anchoropt.errors import ConfigError, brief

_IMAGENET = ("color", "shape")
REFERENCE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "imagenet": _IMAGENET, "imagenet_sketch": _IMAGENET, "imagenetv2": _IMAGENET, "imagenet_a": _IMAGENET,
    "imagenet_r": _IMAGENET,
    "caltech101": ("shape", "size"),
    "oxford_pets": ("playfulness", "energy"),
    "stanford_cars": ("luxury",),
    "oxford_flowers": ("color", "habitat", "growth"),
    "food101": ("flavor", "preparation"),
    "fgvc_aircraft": ("design", "range"),
    "sun397": ("function",),
    "dtd": ("pattern", "color", "design"),
    "eurosat": ("habitat",),
    "ucf101": ("precision",),
}
#: toy world attribute -> its word in an ATPrompt prompt (see the module docstring)
TOY_ATTRIBUTE_WORDS = {"shape": "shape", "pattern": "pattern", "background": "background", "size": "sized",
                       "colour": "colour", "count": "count", "position": "position"}


def toy_attributes(dataset: str) -> tuple[str, ...] | None:
    """Words of a toy-11 dataset: its classes' varying attributes (hidden first) as
    :data:`TOY_ATTRIBUTE_WORDS`; None for a name that is not a toy-11 dataset."""
    from anchoropt.toy.datasets import TOY11  # numpy/PIL only, imported when asked

    for d in TOY11:
        if d.name == dataset:
            first = d.classes[0]
            varying = [a for a in first.fixed if len({c.fixed[a] for c in d.classes}) > 1]
            varying.sort(key=lambda a: a != first.hidden)
            return tuple(TOY_ATTRIBUTE_WORDS[a] for a in varying)
    return None


def parse_attributes(text: str) -> tuple[str, ...]:
    """``"color, shape"`` -> ``("color", "shape")``. Raises ConfigError on an empty entry."""
    words = tuple(w.strip() for w in text.split(","))
    if not all(words):
        raise ConfigError(f"invalid value attributes={brief(text)}: expected comma-separated words, none empty")
    return words


def dataset_attributes(dataset: str, override: str = "") -> tuple[str, ...]:
    """The attribute words of ``dataset``'s ATPrompt prompt, in prompt order: ``override``
    (comma-separated, the ``attributes`` key) when given, else the dataset's own.

    Raises:
        ConfigError: no override and no words known for ``dataset`` (one line naming it).
    """
    if override.strip():
        return parse_attributes(override)
    words = REFERENCE_ATTRIBUTES.get(dataset) or toy_attributes(dataset)
    if not words:
        raise ConfigError(f"dataset '{dataset}' has no ATPrompt attribute words: set attributes=<word,...> "
                          f"(words are known for {', '.join(REFERENCE_ATTRIBUTES)} and toy-11)")
    return words
