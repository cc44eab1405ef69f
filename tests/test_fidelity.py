"""Fidelity to the authors' reference code (issue 10; docs/SPEC.md section 9), on tiny models."""
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from anchoropt.config import TrainConfig
from anchoropt.engine import Trainer, steps_per_epoch
from anchoropt.methods import AnchorOPT, CoOp, ZeroShot
from anchoropt.schedules import one_stage_plan
from anchoropt.suite import load_suite, method_values
from anchoropt.task import build_task
from anchoropt.text import ClassTokens
from anchoropt.train import cached_backbone, resolve_ctx_init, train
from tests.helpers import make_split_dataset, write_descriptions

SUITES = Path(__file__).resolve().parents[1] / "benchmarks"
REF_MEAN, REF_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # vit_b16.yaml
PETS = ["american_bulldog", "great_pyrenees", "yorkshire_terrier", "saint_bernard"]


def _trainer(cfg):
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, "cpu", cfg.preprocess)
    cfg = resolve_ctx_init(cfg, backbone)
    return Trainer(cfg, backbone, build_task(cfg, backbone), torch.device("cpu"))


@pytest.fixture(scope="module")
def pets_root(tmp_path_factory):
    """Oxford Pets with class names that hold underscores, as the real split file writes them."""
    root = tmp_path_factory.mktemp("pets")
    make_split_dataset(root, "oxford_pets", "images", "split_zhou_OxfordPets.json", PETS, per_class=(4, 1, 2))
    write_descriptions(root / "pets_prompts_full.json", [n.replace("_", " ") for n in PETS])
    return root


# 1. Stage I steps ------------------------------------------------------------------------------
def test_stage1_steps_once_per_image_batch_each_over_every_class(tiny_cfg, monkeypatch):
    import anchoropt.methods.stage1 as methods

    classes_per_step = []
    original = methods.stage1_loss
    monkeypatch.setattr(methods, "stage1_loss", lambda pred, targets, w: classes_per_step.append(
        (pred.shape[0], targets.shape[0])) or original(pred, targets, w))
    # 3 base classes x 4 shots = 12 images; batches of 5 -> floor(12 / 5) = 2 steps per epoch
    record = train(tiny_cfg(anchor_epochs=3, anchor_batch_size=5))
    assert classes_per_step == [(3, 3)] * 6
    assert record["training"]["updates"]["anchors"] == 6


def test_steps_per_epoch_is_dassl_drop_last():
    assert [steps_per_epoch(n, 32) for n in (800, 8000, 304, 80, 31, 0)] == [25, 250, 9, 2, 1, 0]


# 2. Every random draw from a stream seeded by the run --------------------------------------------
@pytest.mark.parametrize("schedule", ["two_stage", "one_stage"])
def test_same_config_same_numbers_whatever_ran_before(tiny_cfg, tmp_path, schedule):
    shared = str(tmp_path / "shared")
    train(tiny_cfg(cache_dir=shared, n_ctx=2, schedule=schedule))  # fills the Stage I cache first
    torch.rand(1000)  # and moves the global RNG
    after = train(tiny_cfg(cache_dir=shared, n_ctx=3, schedule=schedule), out_dir=tmp_path / "after")
    alone = train(tiny_cfg(cache_dir=str(tmp_path / "fresh"), n_ctx=3, schedule=schedule), out_dir=tmp_path / "alone")
    assert after["metrics"] == alone["metrics"]
    a, b = (torch.load(tmp_path / d / "prompts.pt", weights_only=True) for d in ("after", "alone"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_per_epoch_reports_do_not_change_the_result(tiny_cfg, tmp_path):
    cfg = tiny_cfg(position_eval="sample", cache_dir=str(tmp_path / "c"))
    reported = train(cfg, report=lambda metrics: None)
    assert reported["metrics"] == train(cfg)["metrics"]


# 3. Underscores become spaces in every prompt ---------------------------------------------------
def test_class_names_are_prompted_with_spaces(tiny_backbone):
    names = ["american bulldog", "great pyrenees"]
    args = (tiny_backbone.tokenizer, tiny_backbone.model.token_embedding)
    for n_block, rest in ((4, "{}."), (2, "of {}.")):  # CoOp / Stage II and anchor prompt
        a = ClassTokens.build([n.replace(" ", "_") for n in names], n_block, rest, *args)
        b = ClassTokens.build(names, n_block, rest, *args)
        assert torch.equal(a.suffix, b.suffix) and torch.equal(a.eos_index, b.eos_index)


def test_zero_shot_template_uses_spaces(tiny_cfg, pets_root):
    trainer = _trainer(tiny_cfg(dataset="oxford_pets", data_root=str(pets_root), method="zeroshot",
                                descriptions_dir=str(pets_root)))
    ev = trainer.task.evals["base"]
    spaced = dataclasses.replace(ev, classnames=[n.replace("_", " ") for n in ev.classnames])
    with torch.no_grad():
        assert torch.equal(ZeroShot(trainer).scores(ev)["acc"], ZeroShot(trainer).scores(spaced)["acc"])


# 4. eos_index: reference shifts the Stage II prompt only ----------------------------------------
def test_reference_eos_shifts_stage2_prompt_only(tiny_cfg):
    trainer = _trainer(tiny_cfg(eos_index="reference", n_anchors=2))
    ref, correct = AnchorOPT(trainer), AnchorOPT(_trainer(tiny_cfg(n_anchors=2)))
    names = trainer.task.classnames
    anchor_tokens = trainer.tokens(names, 2, ref.anchor.rest)
    with torch.no_grad():
        assert torch.equal(ref.anchor(trainer.encoder, anchor_tokens), correct.anchor(trainer.encoder, anchor_tokens))
        tokens = trainer.tokens(names, ref.prompt.n_block, ref.prompt.rest)
        w = torch.eye(ref.prompt.n_block)
        block = w @ torch.cat([ref.prompt.ctx, ref.anchor.anchors])
        early = trainer.encoder.encode(tokens, block, tokens.eos_index - 2)
        assert torch.allclose(ref.prompt(trainer.encoder, tokens, ref.anchor.anchors, w), early)
        assert not torch.allclose(correct.prompt(trainer.encoder, tokens, correct.anchor.anchors, w), early)


# 5. Defaults and per-dataset values are the reference's -------------------------------------------
def test_defaults_are_the_reference_settings():
    cfg = TrainConfig()
    assert (cfg.n_ctx, cfg.n_anchors, cfg.ce_weight, cfg.kd_weight, cfg.kd_temperature, cfg.gumbel_tau) == \
        (4, 1, 100.0, 1000.0, 1.0, 1.0)
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.momentum, cfg.weight_decay, cfg.warmup_epochs,
            cfg.warmup_lr) == (100, 0.002, 32, 0.9, 5e-4, 1, 1e-5)
    assert (cfg.anchor_epochs, cfg.anchor_lr, cfg.anchor_batch_size, cfg.mse_weight, cfg.n_descriptions,
            cfg.shots, cfg.ctx_init) == (20, 0.002, 32, 1000.0, 10, 16, "")


# docs/AnchorOPT.md tables of the reference: Stage II (n_ctx, epochs, CE, KD, T) and Stage I (epochs, MSE)
STAGE2 = {"imagenet": (6, 20, 100, 1000, 1), "caltech101": (4, 100, 100, 1000, 2), "oxford_pets": (4, 100, 100, 1000, 1),
          "stanford_cars": (8, 100, 100, 100, 4), "oxford_flowers": (4, 100, 100, 100, 2),
          "food101": (4, 20, 100, 1000, 4), "fgvc_aircraft": (4, 100, 100, 1, 4), "sun397": (8, 20, 100, 1, 2),
          "dtd": (4, 100, 100, 10, 4), "eurosat": (4, 100, 1, 0, 1), "ucf101": (8, 100, 100, 1000, 1)}
STAGE1 = {"imagenet": (10, 1000), "caltech101": (100, 1000), "oxford_pets": (100, 1000), "stanford_cars": (40, 100),
          "oxford_flowers": (100, 1000), "food101": (20, 1000), "fgvc_aircraft": (20, 1000), "sun397": (20, 1000),
          "dtd": (100, 1000), "eurosat": (100, 1000), "ucf101": (100, 1000)}
STAGE2_KEYS = ("n_ctx", "epochs", "ce_weight", "kd_weight", "kd_temperature")


def _values(suite, method, dataset):
    values = {**TrainConfig().to_dict(), **method_values(suite, method, dataset)[0]}
    return values


def test_base2new_suite_holds_the_reference_per_dataset_values():
    suite = load_suite(SUITES / "base2new_11.yaml")
    for dataset in suite.datasets:
        for method in ("coop_anchoropt_two_stage", "coop_anchoropt_one_stage"):
            v = _values(suite, method, dataset)
            assert tuple(v[k] for k in STAGE2_KEYS) == STAGE2[dataset], (method, dataset)
            assert (v["anchor_epochs"], v["mse_weight"]) == STAGE1[dataset], dataset
            assert (v["lr"], v["batch_size"], v["n_descriptions"]) == (0.002, 32, 5 if dataset == "imagenet" else 10)
            assert (v["crop_scale"], v["flip"], v["shots"]) == (0.08, True, 16)
        coop = _values(suite, "coop", dataset)  # scripts/coop/vanila_base2new_train.sh
        assert (coop["n_ctx"], coop["epochs"], coop["lr"], coop["batch_size"], coop["ctx_init"]) == \
            (16, 200, 0.002, 32, "")


def test_cross_dataset_suite_holds_the_reference_values():
    suite = load_suite(SUITES / "cross_dataset_11.yaml")  # scripts/coop/anchoropt_xd_train.sh
    for method in ("coop_anchoropt_two_stage", "coop_anchoropt_one_stage"):
        v = _values(suite, method, "imagenet")
        assert tuple(v[k] for k in STAGE2_KEYS) == (4, 20, 1, 1, 1)
        assert (v["anchor_epochs"], v["mse_weight"], v["n_descriptions"]) == (10, 1000, 5)
    coop = _values(suite, "coop", "imagenet")
    assert (coop["n_ctx"], coop["epochs"]) == (16, 200)


# 6. One-stage budget rule ------------------------------------------------------------------------
def test_one_stage_budget_rule_is_explicit_and_recorded(tiny_cfg):
    # 3 base classes x 4 shots = 12 images, batches of 4 -> 3 prompt batches per epoch, 2 epochs
    base = dict(batch_size=4, epochs=2, anchor_epochs=2, anchor_batch_size=4)
    two = train(tiny_cfg(**base))["training"]["updates"]
    equal_prompt = train(tiny_cfg(schedule="one_stage", **base))
    equal_total = train(tiny_cfg(schedule="one_stage", one_stage_budget="equal_total_steps", **base))
    assert two == {"anchors": 6, "prompt": 6}
    assert equal_prompt["training"]["updates"] == {"anchors": 6, "prompt": 6}
    assert equal_prompt["config"]["one_stage_budget"] == "equal_prompt_updates"
    assert equal_total["training"]["updates"] == {"anchors": 3, "prompt": 3}
    assert equal_total["config"]["one_stage_budget"] == "equal_total_steps"


def test_one_stage_plan_blocks():
    assert one_stage_plan(1, 5, 2, "equal_prompt_updates") == [["anchor"] * 2 + ["prompt"] * 2 + ["anchor"] * 2 +
                                                               ["prompt"] * 2 + ["anchor", "prompt"]]
    assert one_stage_plan(2, 3, 1, "equal_total_steps") == [["anchor", "prompt", "anchor"],
                                                            ["prompt", "anchor", "prompt"]]


# 7. Context length -----------------------------------------------------------------------------
def test_prompt_of_exactly_the_context_length_fits(tiny_backbone):
    args = (tiny_backbone.tokenizer, tiny_backbone.model.token_embedding)
    fits = " ".join(["word"] * 70)  # SOS + 4 soft + 70 + "." + EOS = 77
    tokens = ClassTokens.build([fits], 4, "{}.", *args)
    assert int(tokens.eos_index[0]) == 76
    with pytest.raises(ValueError, match="does not fit CLIP's 77-token context \\(needs 78 tokens\\)"):
        ClassTokens.build([fits + " word"], 4, "{}.", *args)


def test_cut_descriptions_are_counted_printed_and_recorded(tiny_cfg, tmp_path, eurosat_root, capsys):
    import json

    from tests.conftest import EUROSAT_CLASSES

    sentences = {c: [f"A photo of {c}, sentence {i}." for i in range(10)] for c in EUROSAT_CLASSES}
    sentences["Forest"][3] = "a forest " + "with trees " * 40  # far over 77 tokens
    path = tmp_path / "long.json"
    path.write_text(json.dumps(sentences))
    for _ in range(2):  # the second run takes Stage I from the cache and still counts
        record = train(tiny_cfg(descriptions=str(path)))
        assert record["training"]["descriptions_cut"] == 1
        assert "1 of 30 descriptions are longer than 77 tokens and were cut" in capsys.readouterr().out


# 8. ctx_init ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method_cls, method", [(CoOp, "coop"), (AnchorOPT, "anchoropt")])
@pytest.mark.parametrize("phrase", ["a photo of a", "satellitephotography"])
def test_ctx_init_sets_soft_tokens_to_the_phrase_tokens(tiny_cfg, tiny_backbone, method_cls, method, phrase):
    trainer = _trainer(tiny_cfg(method=method, ctx_init=phrase, n_ctx=9))
    tokenizer = tiny_backbone.tokenizer
    ids = tokenizer.encode(phrase)
    assert trainer.cfg.n_ctx == len(ids)
    m = method_cls(trainer)
    expected = tiny_backbone.model.token_embedding.weight[torch.tensor(ids)]
    assert torch.equal(m.prompt.ctx.detach(), expected)
    if method == "anchoropt":
        assert m.prompt.n_block == len(ids) + trainer.cfg.n_anchors


def test_ctx_init_is_recorded_with_its_size(tiny_cfg):
    record = train(tiny_cfg(method="coop", ctx_init="a photo of a", n_ctx=16))
    assert (record["config"]["ctx_init"], record["config"]["n_ctx"]) == ("a photo of a", 4)


# Done when: the reference's logits, rebuilt by hand -----------------------------------------------
def _reference_text(clip, tokenizer, texts, learned, start, cut):
    """Text features the reference's way: tokenise ``texts`` at full context length, embed, put
    ``learned [C, k, d]`` at ``start`` (the reference's ``token_suffix = embedding[:, start + cut:
    ...]`` keeps 77 positions), run all 77 positions and read at ``tokens.argmax(-1)``."""
    tokens = tokenizer(texts)
    with torch.no_grad():
        emb = clip.token_embedding(tokens)
    length = tokens.shape[1]
    seq = torch.cat([emb[:, :start], learned, emb[:, start + cut:]], dim=1)[:, :length]
    x = seq + clip.positional_embedding
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
    return x[torch.arange(len(texts)), tokens.argmax(dim=-1)] @ clip.text_projection


def test_reference_options_reproduce_the_reference_logits(tiny_cfg, pets_root, monkeypatch):
    import anchoropt.methods.anchoropt as methods

    n_ctx, n_anchors = 3, 2
    cfg = tiny_cfg(dataset="oxford_pets", data_root=str(pets_root), descriptions_dir=str(pets_root),
                   eos_index="reference", position_eval="sample", crop_scale=0.08, flip=True, n_ctx=n_ctx,
                   n_anchors=n_anchors)
    trainer = _trainer(cfg)
    clip, tokenizer = trainer.backbone.model, trainer.backbone.tokenizer
    method = AnchorOPT(trainer)
    gen = torch.Generator().manual_seed(5)
    method.prompt.ctx.data = torch.randn(n_ctx, trainer.width, generator=gen) * 0.5
    method.anchor.anchors.data = torch.randn(n_anchors, trainer.width, generator=gen) * 0.5
    w = F.one_hot(torch.tensor([3, 0, 0, 4, 1]), n_ctx + n_anchors).float()  # a fixed W sample (rows one-hot)
    monkeypatch.setattr(methods, "gumbel_hard", lambda *a: w)
    # sanity: the hand-built encoder is CLIP's own on an ordinary prompt
    plain = tokenizer(["a photo of a dog."])
    with torch.no_grad():
        assert torch.allclose(_reference_text(clip, tokenizer, ["a photo of a dog."],
                                              clip.token_embedding(plain)[:, 1:2], 1, 1), clip.encode_text(plain),
                              atol=1e-5)
    method.eval()
    scale = trainer.logit_scale.exp()
    for split in ("base", "novel"):
        ev = trainer.task.evals[split]
        names = [n.replace("_", " ") for n in ev.classnames]
        c = len(names)
        with torch.no_grad():
            block = (w @ torch.cat([method.prompt.ctx, method.anchor.anchors])).expand(c, -1, -1)
            # Stage II: "X" x n_ctx only, the n_ctx + N block spliced in, suffix cut N short of 77
            prompt = _reference_text(clip, tokenizer, [" ".join(["X"] * n_ctx) + f" {n}." for n in names],
                                     block, 1, n_ctx)
            anchor = _reference_text(clip, tokenizer, [" ".join(["X"] * n_anchors) + f" of {n}." for n in names],
                                     method.anchor.anchors.expand(c, -1, -1), 1, n_anchors)
            img = F.normalize(ev.features, dim=-1)
            logits_prompt = scale * img @ F.normalize(prompt, dim=-1).T
            logits_anchor = scale * img @ F.normalize(anchor, dim=-1).T
            expected = logits_prompt if split == "base" else (logits_prompt + logits_anchor) / 2
            got = method.scores(ev)
        assert torch.allclose(got["acc"], expected, rtol=1e-4, atol=1e-3), split
        assert torch.allclose(got["acc_anchor"], logits_anchor, rtol=1e-4, atol=1e-3), split


def test_reference_augmentation_is_dassls(tiny_backbone):
    image = Image.new("RGB", (48, 40), (120, 30, 200))
    for x in range(48):
        image.putpixel((x, x % 40), (x * 5, 255 - x * 5, 0))
    size = tiny_backbone.image_size
    dassl = T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                       T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(REF_MEAN, REF_STD)])
    ours = tiny_backbone.augment(0.08, True)
    for seed in range(5):
        torch.manual_seed(seed)
        a = ours(image)
        torch.manual_seed(seed)
        assert torch.equal(a, dassl(image))
