"""MaPLe and MaPLe+AnchorOPT (the deep variant) against hand-written loops over open_clip's layers."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from anchoropt.config import ConfigError
from anchoropt.engine import Trainer
from anchoropt.methods import MaPLe, MaPLeAnchorOPT, MaPLeATP
from anchoropt.task import build_task
from anchoropt.train import cached_backbone, train
from tests.helpers import TINY_VIT

TOL = 1e-5


@pytest.fixture
def vit_cfg(tiny_cfg):
    def make(**overrides):
        return tiny_cfg(**{"backbone": TINY_VIT, "prompt_depth": 3, **overrides})
    return make


def _method(cls, cfg):
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, "cpu", cfg.preprocess)
    method = cls(Trainer(cfg, backbone, build_task(cfg, backbone), torch.device("cpu")))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # trained-looking prompts: every tensor differs from its init
        for module in method.modules():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    method.eval()
    return method


def _hand_text(clip, tokens, block0, layer_block, eos_index):
    """CLIP's text tower on ``SOS block suffix``, the block positions' states set to
    ``layer_block(i, x)`` before layer i >= 1 (None: kept), a plain loop over the resblocks."""
    x = torch.cat([tokens.prefix, block0.expand(len(tokens), -1, -1), tokens.suffix], dim=1)
    length, k = x.shape[1], block0.shape[0]
    x = x + clip.positional_embedding[:length]
    for i, layer in enumerate(clip.transformer.resblocks):
        new = layer_block(i, x) if i else None
        if new is not None:
            x = x.clone()
            x[:, 1:1 + k] = new
        x = layer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x[torch.arange(len(tokens)), eos_index])
    return x @ clip.text_projection


def _hand_image(visual, images, prompts):
    """The ViT with the prompts ``[M, d_v]`` appended before ln_pre and replaced before layers 1..J-1."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(len(images), 1, -1), x], dim=1) + visual.positional_embedding
    m = prompts[0].shape[0]
    x = visual.ln_pre(torch.cat([x, prompts[0].expand(len(images), -1, -1)], dim=1))
    for i, layer in enumerate(visual.transformer.resblocks):
        if 0 < i < len(prompts):
            x = torch.cat([x[:, :-m], prompts[i].expand(len(images), -1, -1)], dim=1)
        x = layer(x)
    return visual.ln_post(x[:, 0]) @ visual.proj


def _coupled(method_deep, ctx):
    """Vision prompts by hand: layer j's text soft tokens through layer j's Linear (x A^T + b)."""
    texts = [ctx, *method_deep.deep]
    return [t @ c.weight.T + c.bias for t, c in zip(texts, method_deep.couplings)]


@pytest.mark.parametrize("share_prefix", [True, False])
def test_maple_text_prompts_replace_the_block_in_layers_2_to_J(vit_cfg, share_prefix):
    method = _method(MaPLe, vit_cfg(share_prefix=share_prefix, prompt_depth=2))
    t, deep = method.trainer, method.prompt.deep.deep
    names = t.task.classnames
    tokens = t.tokens(names, 4, method.rest)
    with torch.no_grad():
        ours = method.text(names)
        hand = _hand_text(t.backbone.model, tokens, method.prompt.ctx, lambda i, x: deep[i - 1] if i < 2 else None,
                          tokens.eos_index)
        shallow = _hand_text(t.backbone.model, tokens, method.prompt.ctx, lambda i, x: None, tokens.eos_index)
    assert (ours - hand).abs().max() < TOL
    assert (ours - shallow).abs().max() > 1e-2  # the replacement is not a no-op


def test_maple_atp_replaces_only_the_soft_tokens_and_carries_the_attribute_part(vit_cfg):
    method = _method(MaPLeATP, vit_cfg(n_ctx=2))
    t, deep = method.trainer, method.prompt.deep.deep
    names = t.task.classnames
    block = method.attributes(method.prompt.ctx, "eurosat")  # [a_1 a_2] habitat [V_1 V_2]
    k = block.shape[0]
    assert k == 2 + len(t.backbone.tokenizer.encode("habitat")) + 2
    tokens = t.tokens(names, k, method.rest)
    with torch.no_grad():
        ours = method.text(names)
        hand = _hand_text(t.backbone.model, tokens, block,
                          lambda i, x: torch.cat([x[0, 1:k - 1], deep[i - 1]]) if i < 3 else None, tokens.eos_index)
        whole = _hand_text(t.backbone.model, tokens, block,  # MaPLe's replacement of the first M positions
                           lambda i, x: torch.cat([deep[i - 1], x[0, 3:1 + k]]) if i < 3 else None, tokens.eos_index)
    assert (ours - hand).abs().max() < TOL
    assert (ours - whole).abs().max() > 1e-3


def test_maple_vision_prompts_are_linear_maps_of_the_text_prompts(vit_cfg):
    method = _method(MaPLe, vit_cfg())
    t = method.trainer
    pixels = next(t.pixel_batches(0))[0]
    images = t.model_input(pixels)
    with torch.no_grad():
        ours = method.image(images)
        hand = _hand_image(t.backbone.model.visual, images, _coupled(method.prompt.deep, method.prompt.ctx))
        frozen = t.backbone.model.encode_image(images)
    assert len(method.prompt.deep.couplings) == 3
    assert (ours - hand).abs().max() < TOL
    assert (ours - frozen).abs().max() > 1e-2


def test_pixel_batches_are_the_views_of_the_cached_features(vit_cfg):
    t = _method(MaPLe, vit_cfg()).trainer
    for (pixels, feats, labels), (cached, cached_labels) in zip(t.pixel_batches(1), t.image_batches(1)):
        with torch.no_grad():
            encoded = t.backbone.model.encode_image(t.model_input(pixels))
        assert torch.equal(feats, cached) and torch.equal(labels, cached_labels)
        assert (encoded - feats).abs().max() < TOL
    ev = t.task.evals["novel"]
    with torch.no_grad():
        encoded = torch.cat([t.backbone.model.encode_image(x) for x in t.eval_images(ev, 2)])
    assert (encoded - ev.features).abs().max() < TOL


@pytest.mark.parametrize("carry_index, offset", [("correct", 1), ("reference", 0)])
def test_deep_anchoropt_carries_anchors_and_applies_w_at_every_layer(vit_cfg, carry_index, offset):
    method = _method(MaPLeAnchorOPT, vit_cfg(n_ctx=2, n_anchors=2, carry_index=carry_index))
    t, deep = method.trainer, method.deep.deep
    names = t.task.classnames
    tokens = t.tokens(names, 4, "{}.")
    anchors = method.anchor.anchors
    # positions 0..3 take: anchor 0, soft 1, anchor 0 again, soft 0; anchor 1 is picked by no row
    w = F.one_hot(torch.tensor([2, 1, 2, 0]), 4).float()

    def layer_block(i, x):
        if i >= 3:
            return None
        carried = torch.stack([x[0, offset + 0], torch.zeros_like(x[0, 0])])  # anchor 0: first row picking it
        return w @ torch.cat([deep[i - 1], carried])

    with torch.no_grad():
        ours = method.text(names, w)
        hand = _hand_text(t.backbone.model, tokens, w @ torch.cat([method.prompt.ctx, anchors]), layer_block,
                          tokens.eos_index)
        fresh_only = _hand_text(t.backbone.model, tokens, w @ torch.cat([method.prompt.ctx, anchors]),
                                lambda i, x: w @ torch.cat([deep[i - 1], torch.zeros(2, x.shape[-1])]) if i < 3
                                else None, tokens.eos_index)
    assert (ours - hand).abs().max() < TOL
    assert (ours - fresh_only).abs().max() > 1e-3  # the carried anchor matters


def test_deep_anchoropt_scores_the_teacher_on_frozen_features(vit_cfg):
    method = _method(MaPLeAnchorOPT, vit_cfg())
    ev = method.trainer.task.evals["base"]
    with torch.no_grad():
        _, feats = method.prompt_scores(ev)
    assert torch.equal(feats, ev.features)


def test_resnet_tower_and_too_deep_prompts_are_refused(vit_cfg):
    cfg = vit_cfg(backbone="ToyCLIP", method="maple")
    with pytest.raises(ConfigError, match="backbone ToyCLIP has a ModifiedResNet") as err:
        train(cfg)
    assert "\n" not in str(err.value)
    assert not (Path(cfg.cache_dir) / "features").exists()  # refused before any image was encoded
    with pytest.raises(ConfigError, match="prompt_depth=4 exceeds the 3 layers of backbone TinyViT-test's text tower"):
        train(vit_cfg(method="maple_anchoropt", prompt_depth=4))


def test_maple_learns_the_first_n_ctx_tokens_of_ctx_init(vit_cfg):
    cfg = vit_cfg(method="maple", ctx_init="a photo of a", n_ctx=2, epochs=1)
    record = train(cfg)
    assert record["config"]["n_ctx"] == 2
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, "cpu", cfg.preprocess)
    method = MaPLe(Trainer(cfg, backbone, build_task(cfg, backbone), torch.device("cpu")))
    emb = backbone.model.token_embedding(backbone.tokenizer(["a photo of a cat."]))[0]
    assert method.rest == "of a {}."
    assert torch.equal(method.prompt.ctx.data, emb[1:3])
    tokens = method.trainer.tokens(["cat"], 2, method.rest)
    assert torch.equal(tokens.suffix[0, :4], emb[3:7])  # "of a cat ." stay fixed words


@pytest.mark.parametrize("method, schedule", [("maple", "two_stage"), ("maple_atp", "two_stage"),
                                              ("maple_anchoropt", "two_stage"), ("maple_anchoropt", "one_stage")])
def test_each_maple_method_trains_end_to_end(vit_cfg, tmp_path, method, schedule):
    cfg = vit_cfg(method=method, schedule=schedule, position_eval="sample")
    record = train(cfg, tmp_path)
    metrics, updates = record["metrics"], record["training"]["updates"]
    assert {"acc_base", "acc_novel", "hm"} <= set(metrics)
    assert updates["prompt"] == cfg.epochs * (3 * 4 // 8)  # 3 base classes x 4 shots, batches of 8
    saved = set(torch.load(tmp_path / "prompts.pt", weights_only=True))
    expected = {"maple": {"ctx", "deep.deep", "deep.couplings.2.weight"},
                "maple_atp": {"ctx", "deep.deep", "deep.couplings.2.weight", "att"},
                "maple_anchoropt": {"ctx", "position", "deep", "couplings.2.weight", "anchors"}}[method]
    assert expected <= saved


@pytest.mark.parametrize("method", ["maple", "maple_atp", "maple_anchoropt"])
def test_prompt_depth_1_is_shallow_maple(vit_cfg, tmp_path, method):
    """J = 1 (the reference's shallow MaPLe): input prompts only, no deep tokens, one coupling."""
    record = train(vit_cfg(method=method, prompt_depth=1, epochs=1, anchor_epochs=1), tmp_path)
    assert {"acc_base", "acc_novel", "hm"} <= set(record["metrics"])
    saved = torch.load(tmp_path / "prompts.pt", weights_only=True)
    deep = saved["deep"] if method == "maple_anchoropt" else saved["deep.deep"]
    assert deep.shape[0] == 0
    assert not any(k.startswith(("deep.couplings.1", "couplings.1")) for k in saved)
