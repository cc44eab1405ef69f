"""Typed run configuration: one flat dataclass, YAML files plus ``key=value`` overrides.

Every default is marked in :class:`TrainConfig`: ``[reference]`` values are the authors'
CoOp+AnchorOPT base-to-novel settings (scripts/coop/anchoropt_*.sh on configs/trainers/CoOp/
vit_b16.yaml, the Stage I table of docs/AnchorOPT.md); ``[project]`` values are this project's
choices, each listed with the option that restores the reference in docs/SPEC.md section 9.
Per-dataset reference values live in the suites (``benchmarks/base2new_11.yaml``,
``benchmarks/cross_dataset_11.yaml``). The ``data_root``/``backbone`` defaults point at the
embedded toy world so that ``anchoropt train`` runs offline.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, get_type_hints

from anchoropt.errors import ConfigError, brief, names
from anchoropt.paths import absolute, check_name, is_checkpoint_path
from anchoropt.yamlio import read_yaml

METHODS = ("zeroshot", "coop", "coop_atp", "anchoropt", "cocoop", "cocoop_atp", "cocoop_anchoropt", "dept", "dept_atp",
           "dept_anchoropt", "maple", "maple_atp", "maple_anchoropt")
PROTOCOLS = ("base2novel", "cross_dataset")
SCHEDULES = ("two_stage", "one_stage")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
ONE_STAGE_BUDGETS = ("equal_prompt_updates", "equal_total_steps")
# Ablation switches of AnchorOPT (issue 12); the first value of each is the method itself.
ANCHOR_SOURCES = ("stage1", "random", "word")
POSITION_MATRICES = ("learned", "identity", "permutation")
NOVEL_RULES = ("ensemble", "prompt")
COCOOP_ANCHOROPT_TRAINS = ("ctx", "all")
# Stage I: what it trains, and which epoch's anchors it keeps (SPEC section 3, rows 9 and 27-31 of section 9)
STAGE1_MODES = ("anchors", "joint")
STAGE1_SELECTS = ("last", "best_val")


#: largest seed: NumPy's legacy RandomState (the few-shot draw, Optuna's samplers) takes 0 .. 2^32 - 1
MAX_SEED = 2**32 - 1
#: keys holding a file or folder: made absolute by make_config (anchoropt.paths)
PATH_KEYS = ("data_root", "cache_dir", "descriptions", "descriptions_dir", "anchors")
#: old key -> its name now (record version 2)
RENAMED = {"objective": "eval_split"}


@dataclass
class TrainConfig:
    """One training run: (dataset, seed, method settings). Learning rates in SGD units; an epoch of
    either stage is one pass of image batches over the few-shot training set (Stage I: one step
    per batch, each over every training class, as the reference).

    ``[reference]`` marks a default taken from the authors' code, ``[project]`` one of this
    project's choices (docs/SPEC.md section 9 lists them with the option that restores the
    reference)."""

    # data
    dataset: str = "toy_shape"  # [project] offline toy world
    data_root: str = "data/toy11"  # [project]
    shots: int = 16  # [reference]
    seed: int = 1  # [reference] seeds 1-3 (the scripts loop over 1-5)
    eval_split: str = "test"  # [reference] test: base/novel test images; val: leak-free pseudo base/novel (SPEC section 8)
    # eval_split=val only (ignored on test): val images per class (0: Dassl's min(shots, 4); the split may
    # hold fewer), and repeats a val run pools: pseudo base/novel class partitions, folds over the pseudo-base
    # shots (held-out shots scored; pseudo-novel shots too), and seeds (seed, seed+1, ...); each repeat trains once
    val_shots: int = 0  # [reference] 0: min(shots, 4)
    val_partitions: int = 1  # [reference] 1: the SPEC section 8 split only
    val_folds: int = 1  # [reference] 1: no shots held out
    val_seeds: int = 1  # [reference] 1: the run's seed only
    # base2novel: train on base classes, score base and novel; cross_dataset: train on every class of
    # ``dataset`` (the source), score it and each of ``targets`` on all their classes (SPEC section 8)
    protocol: str = "base2novel"
    targets: str = ""  # cross_dataset: comma-separated target datasets under data_root
    descriptions: str = ""  # CuPL JSON; empty: the dataset's own, else descriptions_dir/<CuPL name>
    descriptions_dir: str = ""
    n_descriptions: int = 10  # [reference] MAX_TEMPLATE_LENGTH 10 (5 for ImageNet, set in the suites)
    # backbone
    backbone: str = "ToyCLIP"  # [project] reference: ViT-B-16 with pretrained=openai (the suites)
    pretrained: str = "toy"  # [project]
    quick_gelu: bool | None = None
    preprocess: str = ""  # pretrained tag whose image preprocessing a checkpoint file gets; empty: the weights'
    device: str = "auto"
    # method
    method: str = "anchoropt"
    schedule: str = "two_stage"  # [reference] the paper's main schedule
    n_ctx: int = 4  # [reference] soft tokens M (per dataset 4 to 8 in the suites)
    ctx_init: str = ""  # [reference] CoOp's CTX_INIT: "" random N(0, 0.02); a phrase sets the soft tokens
    # to its token embeddings and n_ctx to its BPE token count (the reference counts words)
    n_anchors: int = 1  # [reference] ANCHOR_LEN
    gumbel_tau: float = 1.0  # [reference] GUMBEL_TEMP
    kd_temperature: float = 1.0  # [reference] KD_TEMPERATURE (per dataset in the suites)
    ce_weight: float = 100.0  # [reference] PROMPT_CE_WEIGHT (per dataset in the suites)
    kd_weight: float = 1000.0  # [reference] KD_WEIGHT (per dataset in the suites)
    mse_weight: float = 1000.0  # [reference] ANCHOR_MSE_WEIGHT of the Stage I table (100 on Stanford Cars)
    position_eval: str = "argmax"  # [project] reference: sample (a fresh W per test batch of 100 images)
    eos_index: str = "correct"  # [project] reference: the Stage II prompt reads n_anchors positions early
    truncate: bool = True  # [project] cut at EOS (exact); false runs all 77 positions as the reference
    share_prefix: bool = True  # [project] encode SOS + the shared learned block once per step (exact)
    # Stage II (and CoOp) optimisation, SPEC section 5
    lr: float = 0.002  # [reference]
    epochs: int = 100  # [reference] base-to-novel script (per dataset 20 to 100 in the suites)
    batch_size: int = 32  # [reference]
    momentum: float = 0.9  # [reference]
    weight_decay: float = 5e-4  # [reference]
    warmup_epochs: int = 1  # [reference]
    warmup_lr: float = 1e-5  # [reference]
    # Stage I optimisation: each epoch is floor(training images / anchor_batch_size) steps, each over
    # every training class (the reference's pretraining loop over image batches)
    anchor_lr: float = 0.002  # [reference]
    anchor_epochs: int = 20  # [reference] pretraining script (per dataset 10 to 100 in the suites)
    anchor_batch_size: int = 32  # [reference] the pretraining loader's batch, which sets Stage I's steps
    # What Stage I trains on (SPEC section 3). The released coop_pretrain_anchor.py fits the anchors to the
    # descriptions (MSE) alone; the shipped anchor_weights/ came from an unreleased trainer whose log.txt shows
    # CE terms and a jointly trained prompt (SPEC section 9, rows 27-31: a reconstruction).
    stage1_ce_weight: float = 0.0  # [reference] released: 0; the shipped anchors' logs: ANCHOR_CE_WEIGHT 1 (0 ImageNet)
    stage1_mode: str = "anchors"  # [reference] anchors (released) or joint (also a throwaway ctx + W, the logs)
    stage1_prompt_ce_weight: float = 1000.0  # [reference] joint: the logs' PROMPT_CE_WEIGHT (100 or 1000)
    stage1_gumbel_tau: float = 2.0  # [reference] joint: the logs' TEMP, read as the Gumbel temperature of W (a guess)
    stage1_n_ctx: int = 4  # [reference] joint: the Stage I prompt's soft tokens (the logs' N_CTX 4, random init)
    stage1_select: str = "last"  # [reference] last epoch; best_val: the epoch whose anchor prompt scores best on val
    anchors: str = ""  # a Stage I result to use instead of running Stage I: a Dassl anchor checkpoint
    # (the reference's anchor_weights/<Dataset>/anchor_prompt_learner/model.pth.tar) or this project's prompts.pt
    # one-stage schedule (no reference: the paper publishes no period): steps of each phase before
    # switching (anchors first), and what one-stage spends its steps on (SPEC section 6)
    period: int = 1  # [project]
    one_stage_budget: str = "equal_prompt_updates"  # [project] or equal_total_steps
    # features
    train_views: int = 4  # [project] precomputed augmented views per image; reference: fresh crops each step
    # Augmentation. Defaults suit the embedded toy world, whose count and position classes a
    # strong crop or a flip would relabel; CoOp's reference is crop_scale 0.08 with flip.
    crop_scale: float = 0.8  # [project] smallest area fraction of the random resized crop (Dassl INPUT.RRCROP_SCALE)
    flip: bool = False  # [project] random horizontal flip
    cache_dir: str = "~/.cache/anchoropt"
    # Ablations: each replaces exactly one part of AnchorOPT (the defaults are the method).
    anchor_source: str = "stage1"  # [reference] or random (Stage I's N(0, 0.02) init, untrained) or word
    anchor_word: str = "shape"  # [project] anchor_source=word: its N BPE token embeddings (ATPrompt-style)
    position_matrix: str = "learned"  # [reference] or identity (soft tokens, then anchors) or permutation
    novel_rule: str = "ensemble"  # [reference] unseen classes (prompt + anchor logits) / 2, or prompt alone
    # CoCoOp (cocoop, cocoop_atp, cocoop_anchoropt; trainers/cocoop*.py): a meta-net on the image feature shifts
    # the soft tokens
    meta_net_ratio: int = 16  # [reference] hidden width of the meta-net: image feature dim // meta_net_ratio
    cocoop_anchoropt_trains: str = "ctx"  # [reference] the optimiser holds the soft tokens only (meta-net and W
    # stay at their init); all: soft tokens, meta-net and W
    # DePT (dept, dept_atp, dept_anchoropt; reference train.py TRAINER.LINEAR_PROBE): the head's share of the loss
    # and of the trained classes' test logits
    dept_weight: float = 0.7  # [reference] LINEAR_PROBE.WEIGHT
    dept_head_lr_mult: float = 1.0  # [reference] ATPrompt's DePT copies: one rate; DePT's own code: 6.5 (SPEC row 26)
    # ATPrompt (the *_atp methods; anchoropt/attributes.py, methods/atprompt.py)
    attributes: str = ""  # [reference] comma-separated attribute words; empty: the dataset's own
    n_att: int = 0  # [reference] soft tokens before each attribute word; 0: n_ctx (the scripts' N_ATT = NCTX)
    # MaPLe (maple, maple_atp, maple_anchoropt): deep text prompts in layers 1..prompt_depth, coupled vision prompts
    prompt_depth: int = 9  # [reference] PROMPT_DEPTH (3 in the cross-dataset config)
    carry_index: str = "correct"  # [project] deep AnchorOPT reads each carried anchor at its position;
    # reference: one position early (its x[anchor_index] skips SOS)

    def validate(self) -> "TrainConfig":
        """Check choices and ranges. Raises ConfigError naming the key and value."""
        choices = {"method": METHODS, "schedule": SCHEDULES, "position_eval": ("argmax", "sample"),
                   "eos_index": ("correct", "reference"),
                   "carry_index": ("correct", "reference"), "eval_split": ("test", "val"),
                   "protocol": PROTOCOLS, "one_stage_budget": ONE_STAGE_BUDGETS,
                   "anchor_source": ANCHOR_SOURCES, "position_matrix": POSITION_MATRICES, "novel_rule": NOVEL_RULES,
                   "cocoop_anchoropt_trains": COCOOP_ANCHOROPT_TRAINS, "stage1_mode": STAGE1_MODES,
                   "stage1_select": STAGE1_SELECTS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"invalid value {key}={brief(getattr(self, key))}: expected one of {', '.join(allowed)}")
        checks = {
            "n_ctx": self.n_ctx >= 1, "n_anchors": self.n_anchors >= 1, "epochs": self.epochs >= 0,
            "anchor_epochs": self.anchor_epochs >= 0, "lr": self.lr > 0, "anchor_lr": self.anchor_lr > 0,
            "batch_size": self.batch_size >= 1, "anchor_batch_size": self.anchor_batch_size >= 1,
            "gumbel_tau": self.gumbel_tau > 0, "kd_temperature": self.kd_temperature > 0,
            "stage1_gumbel_tau": self.stage1_gumbel_tau > 0, "stage1_n_ctx": self.stage1_n_ctx >= 1,
            "period": self.period >= 1, "train_views": self.train_views >= 1, "prompt_depth": self.prompt_depth >= 1,
            "crop_scale": 0 < self.crop_scale <= 1,
            "dept_weight": 0 <= self.dept_weight <= 1, "dept_head_lr_mult": self.dept_head_lr_mult > 0,
            "n_descriptions": self.n_descriptions >= 1, "n_att": self.n_att >= 0,
            "meta_net_ratio": self.meta_net_ratio >= 1, "seed": 0 <= self.seed <= MAX_SEED,
            "momentum": 0 <= self.momentum < 1, "warmup_epochs": self.warmup_epochs >= 0,
            "val_shots": self.val_shots >= 0, "val_partitions": self.val_partitions >= 1,
            "val_folds": self.val_folds >= 1 and (self.shots <= 0 or self.val_folds <= max(1, self.shots)),
            "val_seeds": self.val_seeds >= 1,
            **{key: getattr(self, key) >= 0 for key in ("warmup_lr", "ce_weight", "kd_weight", "mse_weight",
                                                        "weight_decay", "stage1_ce_weight",
                                                        "stage1_prompt_ce_weight")},
        }
        for key, ok in checks.items():
            if not ok:
                hint = f": expected 0 .. {MAX_SEED}" if key == "seed" else ""
                raise ConfigError(f"invalid value {key}={brief(getattr(self, key))}{hint}")
        for name in [self.dataset, *self.target_list]:  # each becomes a folder under data_root and --results
            check_name(name, "dataset")
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"invalid value device={brief(self.device)}: expected auto, cpu, cuda, cuda:<index> or mps")
        if self.protocol == "cross_dataset" and self.eval_split != "test":
            raise ConfigError("protocol=cross_dataset scores test images: eval_split must be test "
                              "(tune on the source with protocol=base2novel)")
        if self.anchor_source != "stage1" and self.schedule == "one_stage":
            raise ConfigError(f"anchor_source={self.anchor_source} keeps the anchors fixed: it needs "
                              "schedule=two_stage (one_stage trains them)")
        self._validate_stage1()
        if self.protocol == "base2novel" and self.targets:
            raise ConfigError(f"targets={brief(self.targets)} needs protocol=cross_dataset")
        if self.method.endswith("_atp"):  # every prompted dataset needs its words before anything loads
            from anchoropt.attributes import dataset_attributes
            for name in [self.dataset, *(self.target_list if self.protocol == "cross_dataset" else [])]:
                dataset_attributes(name, self.attributes)
        return self

    def _validate_stage1(self) -> None:
        """Stage I keys that only work together (one line naming them). The other ``stage1_*`` keys,
        as ``anchor_epochs``, are Stage I's: one_stage (no Stage I) does not use them."""
        if self.anchors:
            if not Path(self.anchors).is_file():
                raise ConfigError(f"anchors={self.anchors}: no such file")
            if self.anchor_source != "stage1" or self.schedule != "two_stage":
                raise ConfigError(f"anchors={self.anchors} is a Stage I result: it needs anchor_source=stage1 and "
                                  f"schedule=two_stage (got {self.anchor_source}, {self.schedule})")
        if self.stage1_select == "best_val" and self.eval_split == "val":
            raise ConfigError("stage1_select=best_val picks the Stage I epoch on the val images, which "
                              "eval_split=val scores: use stage1_select=last there")

    @property
    def target_list(self) -> list[str]:
        """``targets`` as a list of dataset names (empty entries dropped)."""
        return [t.strip() for t in self.targets.split(",") if t.strip()]

    @property
    def run_name(self) -> str:
        """The method as records and run folders name it: ``<method>_<schedule>`` for a method
        with AnchorOPT (its schedule is part of what ran), else ``method``."""
        return f"{self.method}_{self.schedule}" if has_schedule(self.method) else self.method

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def has_schedule(method: str) -> bool:
    """Whether ``method`` adds AnchorOPT (``anchoropt`` = CoOp+AnchorOPT, ``<base>_anchoropt``), so
    that ``schedule`` decides how its anchors and prompt are trained."""
    return method == "anchoropt" or method.endswith("_anchoropt")


def _trained(c: Mapping[str, Any]) -> bool:
    return c.get("method") != "zeroshot"


def _anchored(c: Mapping[str, Any]) -> bool:
    return has_schedule(str(c.get("method")))


def _stage1(c: Mapping[str, Any]) -> bool:
    """Stage I runs: two-stage AnchorOPT whose anchors are fitted here, not read from a file."""
    return _anchored(c) and c.get("schedule") == "two_stage" and c.get("anchor_source") == "stage1" and \
        not c.get("anchors")


def _anchors_fitted(c: Mapping[str, Any]) -> bool:
    """The anchors are fitted to the descriptions: in Stage I, or in one-stage's anchor phases."""
    return _stage1(c) or (_anchored(c) and c.get("schedule") == "one_stage")


_SCOPES = {  # key -> the runs it applies to (keys not listed apply to every run)
    **dict.fromkeys(("val_shots", "val_partitions", "val_folds", "val_seeds"), lambda c: c.get("eval_split") == "val"),
    "targets": lambda c: c.get("protocol") == "cross_dataset",
    **dict.fromkeys(("n_ctx", "ctx_init", "share_prefix", "lr", "epochs", "batch_size", "momentum", "weight_decay",
                     "warmup_epochs", "warmup_lr", "train_views", "crop_scale", "flip"), _trained),
    **dict.fromkeys(("schedule", "n_anchors", "ce_weight", "kd_weight", "position_eval", "eos_index", "anchor_source",
                     "position_matrix", "novel_rule"), _anchored),
    "kd_temperature": lambda c: _anchored(c) and c.get("kd_weight") != 0,
    "gumbel_tau": lambda c: _anchored(c) and c.get("position_matrix") == "learned",
    "anchor_word": lambda c: _anchored(c) and c.get("anchor_source") == "word",
    "anchors": lambda c: _anchored(c) and c.get("schedule") == "two_stage" and c.get("anchor_source") == "stage1",
    **dict.fromkeys(("descriptions", "descriptions_dir", "n_descriptions", "mse_weight", "anchor_lr"), _anchors_fitted),
    **dict.fromkeys(("anchor_epochs", "anchor_batch_size", "stage1_ce_weight", "stage1_mode", "stage1_select"), _stage1),
    **dict.fromkeys(("stage1_prompt_ce_weight", "stage1_gumbel_tau", "stage1_n_ctx"),
                    lambda c: _stage1(c) and c.get("stage1_mode") == "joint"),
    **dict.fromkeys(("period", "one_stage_budget"), lambda c: _anchored(c) and c.get("schedule") == "one_stage"),
    "meta_net_ratio": lambda c: str(c.get("method")).startswith("cocoop"),
    "cocoop_anchoropt_trains": lambda c: c.get("method") == "cocoop_anchoropt",
    **dict.fromkeys(("dept_weight", "dept_head_lr_mult"), lambda c: str(c.get("method")).startswith("dept")),
    **dict.fromkeys(("attributes", "n_att"), lambda c: str(c.get("method")).endswith("_atp")),
    "prompt_depth": lambda c: str(c.get("method")).startswith("maple"),
    "carry_index": lambda c: c.get("method") == "maple_anchoropt",
}


def applies(key: str, config: Mapping[str, Any]) -> bool:
    """Whether TrainConfig key ``key`` can change what a run of ``config`` (a resolved TrainConfig
    as a dict, e.g. a record's ``config``) does: ``anchor_epochs`` applies to two-stage AnchorOPT
    with Stage I, not to CoOp, zero-shot or a one-stage run; ``dept_weight`` to the DePT methods
    only; ``lr`` to every trained method. Decided from the method (:data:`METHODS`,
    :func:`has_schedule`) and the keys that switch parts on (schedule, anchor_source, anchors,
    stage1_mode, position_matrix, kd_weight, eval_split, protocol), as the trainers read them."""
    scope = _SCOPES.get(key)
    return scope is None or bool(scope(config))


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a typed value (from YAML, or from :func:`typed_overrides`) against the field's type
    (``int``, ``float``, ``bool``, ``str``, optional) and convert int to float and numbers to str. A
    string is never parsed again: ``"toy_count #v2"`` stays that string; one holding a NUL character
    is refused."""
    allowed = [t for t in getattr(hint, "__args__", (hint,)) if t is not type(None)]
    if value is None and type(None) in getattr(hint, "__args__", ()):
        return None
    target = allowed[0]
    if target is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # a record holding Infinity/NaN is not JSON
            raise ConfigError(f"{key} must be a finite number, got {brief(value)}")
        return float(value)
    if target is str and isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {target.__name__}, got {brief(value)}")
    if target is str and "\0" in value:  # no file or folder name can hold one: open() would fail unnamed
        raise ConfigError(f"{key} holds a NUL character: {brief(value)}")
    return value


def check_keys(values: Mapping[str, Any], known: Iterable[str], source: str,
               renamed: Mapping[str, str] | None = None, kind: str = "key") -> None:
    """Raise ConfigError naming ``source`` and every ``kind`` of ``values`` not in ``known``, each
    with its new name (``renamed``) or the closest known key (difflib) as a hint."""
    known = set(known)
    unknown = sorted(set(values) - known)
    if unknown:
        hints = [f"{k} (renamed {renamed[k]})" if renamed and k in renamed else
                 f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, known, 1)) else k
                 for k in map(str, unknown)]
        raise ConfigError(f"{source}: unknown {kind}(s) {names(hints)}")


def make_config(values: dict[str, Any] | None = None, source: str = "config") -> TrainConfig:
    """Build a validated TrainConfig from a dict, its path keys made absolute (anchoropt.paths: relative
    to the working directory). An unknown key, a value of the wrong type or out of its range raises
    ConfigError naming ``source`` and the key."""
    values = values or {}
    check_keys(values, {f.name for f in fields(TrainConfig)}, source, RENAMED)
    hints = get_type_hints(TrainConfig)
    try:
        cfg = TrainConfig(**{k: _coerce(k, v, hints[k]) for k, v in values.items()}).validate()
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    for key in PATH_KEYS:
        if getattr(cfg, key):
            setattr(cfg, key, absolute(getattr(cfg, key)))
    if is_checkpoint_path(cfg.pretrained):
        cfg.pretrained = absolute(cfg.pretrained)
    return cfg


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` as a dict of strings (typed later by :func:`make_config`); the one parser of
    ``key=value`` for every command. Raises ConfigError naming an item without ``=`` or a key."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not key=value")
        out[key.strip()] = value
    return out


#: command-line words for a bool key, and for None (an optional key, e.g. quick_gelu=)
TRUE, FALSE, NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("", "none", "null")


def typed_value(key: str, text: str, hint: Any) -> Any:
    """The command-line text of ``key=text`` as a value of the key's declared type ``hint``, parsed
    once as typed: a ``str`` key takes ``text`` exactly (``#`` and quotes included), ``int`` /
    ``float`` Python's ``int()`` / ``float()``, ``bool`` one of :data:`TRUE` / :data:`FALSE`, an
    optional key :data:`NONE` as None. Raises ConfigError naming the key and the text."""
    kinds = [t for t in getattr(hint, "__args__", (hint,)) if t is not type(None)]
    if len(kinds) < len(getattr(hint, "__args__", (hint,))) and text.strip().lower() in NONE:
        return None
    kind, word = kinds[0], text.strip().lower()
    if kind is bool:
        if word in TRUE + FALSE:
            return word in TRUE
        raise ConfigError(f"{key} must be true or false, got {brief(text)}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{key} must be {kind.__name__}, got {brief(text)}") from None
    return text


def typed_overrides(items: list[str] | Mapping[str, str]) -> dict[str, Any]:
    """``key=value`` strings (or a dict of them, :func:`parse_overrides`) as TrainConfig values, each
    typed by its key's declared type (:func:`typed_value`); an unknown key is kept as text for
    :func:`make_config` to name. Raises ConfigError for a malformed item or value."""
    hints = get_type_hints(TrainConfig)
    values = parse_overrides(list(items)) if not isinstance(items, Mapping) else items
    try:
        return {k: typed_value(k, v, hints[k]) if k in hints and isinstance(v, str) else v for k, v in values.items()}
    except ConfigError as err:
        raise ConfigError(f"overrides: {err}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (optional) then overrides (``["lr=0.01", ...]`` or a dict of such text, typed by each
    key's declared type: :func:`typed_overrides`), later wins.

    Raises:
        ConfigError: the file is missing or not a YAML mapping (one line naming it), an override is
            not ``key=value``, or a key or value is invalid.
    """
    values: dict[str, Any] = dict(read_yaml(path, "config file")) if path else {}
    values.update(typed_overrides(overrides or []))
    return make_config(values, source=str(path) if path else "overrides")


# What each TrainConfig key means, with its unit: ``anchoropt train --help`` lists these with the
# defaults (a test checks that every key has an entry).
KEY_HELP = {
    "dataset": "dataset name under data_root (standard or custom; see `anchoropt data list`)",
    "data_root": "folder of the datasets (CoOp layout)",
    "shots": "training images per class (few-shot K); shots <= 0: every training image (and every val image)",
    "seed": "seed of the few-shot draw and of training",
    "eval_split": "test: score base/novel test images; val: leak-free pseudo base/novel split (SPEC 8)",
    "val_shots": "eval_split=val: val images per class (0: min(shots, 4), Dassl's; fewer where the split has fewer)",
    "val_partitions": "eval_split=val: pseudo base/novel class partitions pooled (each one more training run)",
    "val_folds": "eval_split=val: folds of the pseudo-base shots, each held out and scored once, pseudo-novel "
                 "shots scored too (each fold one more training run; 1: none)",
    "val_seeds": "eval_split=val: seeds pooled, seed to seed+val_seeds-1 (each one more training run)",
    "protocol": "base2novel: train on base classes, score base and novel; cross_dataset: train on all "
                "classes of dataset, score it and each target",
    "targets": "cross_dataset: comma-separated target datasets",
    "descriptions": "CuPL JSON of class descriptions (empty: the dataset's own)",
    "descriptions_dir": "folder of CuPL files named by dataset (used when descriptions is empty)",
    "n_descriptions": "descriptions per class in the Stage I target (sentences)",
    "backbone": "open_clip model name (ToyCLIP: the offline toy backbone)",
    "pretrained": "open_clip pretrained tag or checkpoint file",
    "quick_gelu": "QuickGELU activations (empty: as the checkpoint needs)",
    "preprocess": "open_clip pretrained tag whose image preprocessing (mean/std, resize) a checkpoint file "
                  "gets, e.g. laion2b_s32b_b82k or openai (empty: the weights' own; a warning when guessed)",
    "device": "auto, cpu, cuda or cuda:N",
    "method": "zeroshot, coop, coop_atp (CoOp+ATPrompt), anchoropt (CoOp+AnchorOPT), cocoop, cocoop_atp, "
              "cocoop_anchoropt, dept, dept_atp, dept_anchoropt, maple, maple_atp or maple_anchoropt",
    "schedule": "two_stage (Stage I then II) or one_stage (alternating phases, SPEC 6)",
    "n_ctx": "soft prompt tokens M (set by ctx_init's tokens when given)",
    "ctx_init": "phrase whose token embeddings start the soft tokens (CoOp's CTX_INIT; empty: N(0, 0.02))",
    "n_anchors": "anchor tokens N",
    "gumbel_tau": "Gumbel-softmax temperature of the position matrix W (unitless)",
    "kd_temperature": "KD temperature T (unitless)",
    "ce_weight": "weight of the Stage II cross-entropy loss (unitless)",
    "kd_weight": "weight of the Stage II KD loss (unitless)",
    "mse_weight": "weight of the Stage I MSE loss (unitless)",
    "position_eval": "W at evaluation: argmax (noise-free) or sample (reference, random)",
    "eos_index": "correct, or reference (the Stage II prompt reads N positions early, as the reference code)",
    "truncate": "cut text sequences after the last EOS (exact, faster)",
    "share_prefix": "encode SOS and the learned block, the same for every class, once per step instead of "
                    "once per class (exact up to float rounding, faster; false: every class's full prompt)",
    "lr": "Stage II (and CoOp) SGD learning rate (per step, cosine-decayed)",
    "epochs": "Stage II (CoOp, one-stage) epochs over the few-shot training set",
    "batch_size": "Stage II images per step",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay (L2 coefficient)",
    "warmup_epochs": "epochs at constant warmup_lr before the cosine schedule",
    "warmup_lr": "learning rate of the warm-up epochs",
    "anchor_lr": "Stage I SGD learning rate",
    "anchor_epochs": "Stage I epochs over the few-shot training set",
    "anchor_batch_size": "images per Stage I batch: floor(images / it) Stage I steps per epoch, each over every class",
    "stage1_ce_weight": "Stage I: weight of the anchor prompt's cross-entropy on the training images, added to "
                        "the MSE (0: descriptions only, the released code; 1: the shipped anchors' logs)",
    "stage1_mode": "Stage I: anchors (the anchors alone) or joint (anchors with a CoOp+AnchorOPT prompt, ctx and "
                   "W, trained together and then dropped; reconstructed from the shipped anchors' logs)",
    "stage1_prompt_ce_weight": "stage1_mode=joint: weight of the Stage I prompt's cross-entropy (the logs' "
                               "PROMPT_CE_WEIGHT)",
    "stage1_gumbel_tau": "stage1_mode=joint: Gumbel temperature of the Stage I prompt's W (the logs' TEMP)",
    "stage1_n_ctx": "stage1_mode=joint: soft tokens of the Stage I prompt, N(0, 0.02) (the logs' N_CTX 4)",
    "stage1_select": "Stage I: last (the last epoch's anchors) or best_val (the epoch whose anchor prompt scores "
                     "best on the val images of the trained classes; recorded as training.stage1.epoch)",
    "anchors": "a file of Stage I anchors used instead of Stage I: a Dassl anchor checkpoint (the reference's "
               "anchor_weights/<Dataset>/anchor_prompt_learner/model.pth.tar) or a prompts.pt",
    "period": "one_stage: optimiser steps of each phase before switching",
    "one_stage_budget": "one_stage: equal_prompt_updates (as two-stage's Stage II) or equal_total_steps",
    "train_views": "precomputed augmented views per training image",
    "crop_scale": "smallest area fraction of the random resized crop (0-1]",
    "flip": "random horizontal flip of training images",
    "cache_dir": "folder of cached image features and Stage I results",
    "anchor_source": "ablation: stage1 (anchors fitted to descriptions), random (Stage I's N(0, 0.02) "
                     "init, never trained) or word (anchor_word's token embeddings, fixed; ATPrompt-style)",
    "anchor_word": "anchor_source=word: word(s) whose BPE tokens (exactly n_anchors) are the anchors",
    "position_matrix": "ablation: learned W (Gumbel), identity (soft tokens then anchors) or permutation "
                       "(a fixed random W drawn from the seed)",
    "novel_rule": "ablation: unseen classes scored by ensemble ((prompt + anchor logits) / 2) or prompt alone",
    "meta_net_ratio": "CoCoOp: the meta-net's hidden width is the image feature dim divided by this (integer)",
    "cocoop_anchoropt_trains": "cocoop_anchoropt: ctx (the soft tokens only, as the reference's optimiser; meta-net "
                               "and W stay at their init) or all (soft tokens, meta-net and W)",
    "dept_weight": "DePT: weight w of the head (loss (1-w) CE(CLIP) + w CE(head); trained classes scored "
                   "(1-w) CLIP + w head logits) in [0, 1]",
    "dept_head_lr_mult": "DePT: the head's learning rate over the prompt's (1: one rate, as ATPrompt's DePT "
                         "trainers; DePT's own code: 6.5)",
    "attributes": "*_atp: comma-separated attribute words of the ATPrompt prompt, e.g. color,shape (empty: "
                  "the dataset's own, anchoropt/attributes.py; every scored dataset uses these)",
    "n_att": "*_atp: soft tokens before each attribute word (0: n_ctx, as the reference scripts)",
    "prompt_depth": "MaPLe: transformer layers J with prompts (layer 1 the input; J <= both towers' layers)",
    "carry_index": "maple_anchoropt: correct (each anchor's hidden state carried from its position) or "
                   "reference (the state one position before it, as the reference code reads)",
}
