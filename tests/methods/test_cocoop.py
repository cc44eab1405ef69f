"""CoCoOp, CoCoOp+ATPrompt and CoCoOp+AnchorOPT (issue 11) against hand-built references
(ATPrompt's trainers/cocoop.py, cocoop_atp.py, cocoop_anchoropt.py), on the tiny random model."""
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from anchoropt.config import ConfigError
from anchoropt.methods import CoCoOp, CoCoOpAnchorOPT, CoCoOpATP, build_method
from anchoropt.text import ClassTokens, TextEncoder
from anchoropt.train import train
from tests.helpers import make_trainer
from tests.helpers import reference_text_features
from tests.methods.test_atprompt import hand_built


def _clip_text(clip, tokenizer, texts, learned, cut):
    """The reference's text features: tokenise ``texts`` (77 positions), put ``learned [C, k, d]``
    after SOS in place of ``cut`` tokens, keep 77 positions, encode as the reference."""
    tokens = tokenizer(texts)
    emb = clip.token_embedding(tokens)
    seq = torch.cat([emb[:, :1], learned, emb[:, 1 + cut:]], dim=1)[:, :tokens.shape[1]]
    return reference_text_features(clip, seq, tokens)


def _meta(net, feats):
    """``linear2(relu(linear1(x / |x|)))`` written out from the weights."""
    h = torch.relu(F.normalize(feats, dim=-1) @ net.linear1.weight.T + net.linear1.bias)
    return h @ net.linear2.weight.T + net.linear2.bias


def _randomise(method, gen):
    """Learned tensors large enough that a wrong formula shows."""
    for p in method.prompt.meta_net.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.3
    method.prompt.ctx.data = torch.randn(method.prompt.ctx.shape, generator=gen) * 0.3


@pytest.mark.parametrize("truncate", [True, False])
def test_per_image_prefix_sharing_equals_the_unshared_path(tiny_backbone, truncate):
    """encode_per_image: features [B, C, D] and gradients equal per-sequence encoding."""
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    names = ["red", "dark green", "Herbaceous Vegetation Land"]
    tokens = ClassTokens.build(names, 4, "{}.", tok, model.token_embedding, truncate=truncate)
    gen = torch.Generator().manual_seed(0)
    results = []
    for encoder in (TextEncoder(model), TextEncoder(model, share_prefix=False)):
        blocks = (torch.randn(5, 4, 32, generator=gen.manual_seed(1)) * 0.3).requires_grad_()
        feats = encoder.encode_per_image(tokens, blocks)
        weights = torch.linspace(-1, 1, feats.numel()).reshape(feats.shape)
        (F.normalize(feats, dim=-1) * weights).sum().backward()
        results.append((feats.detach(), blocks.grad))
    (fa, ga), (fb, gb) = results
    assert fa.shape == (5, 3, 32)
    expected = torch.stack([TextEncoder(model, share_prefix=False).encode(tokens, b) for b in blocks.detach()])
    assert (fb - expected).abs().max().item() < 1e-5
    assert (fa - fb).abs().max().item() < 1e-5
    assert gb.abs().max() > 0 and (ga - gb).abs().max().item() < 1e-5


@pytest.mark.parametrize("share_prefix", [True, False])
def test_cocoop_logits_are_per_image_context_ctx_plus_meta(tiny_cfg, share_prefix):
    """Image i scored with ``SOS (ctx + meta(x_i)) CLS . EOS``, encoded by CLIP's text tower."""
    trainer = make_trainer(tiny_cfg(method="cocoop", share_prefix=share_prefix))
    method = build_method(trainer)
    assert isinstance(method, CoCoOp)
    _randomise(method, torch.Generator().manual_seed(3))
    clip, tok, m = trainer.backbone.model, trainer.backbone.tokenizer, method.prompt.n_block
    names = trainer.task.classnames
    feats = trainer.train_features[:5, 0]
    scale = trainer.logit_scale.exp()
    with torch.no_grad():
        got = method.logits(feats, names)
        expected = []
        for x, shift in zip(feats, _meta(method.prompt.meta_net, feats)):
            text = _clip_text(clip, tok, [" ".join(["X"] * m) + f" {n}." for n in names],
                              (method.prompt.ctx + shift).expand(len(names), -1, -1), m)
            expected.append(scale * F.normalize(x, dim=-1) @ F.normalize(text, dim=-1).T)
    assert got.shape == (5, len(names))
    assert (got - torch.stack(expected)).abs().max().item() < 1e-5


@pytest.mark.parametrize("attributes, words", [("", ("habitat",)), ("playfulness,color", ("playfulness", "color"))])
def test_cocoop_atp_shifts_the_context_after_the_attribute_part(tiny_cfg, tiny_backbone, attributes, words):
    """``SOS [a_1] w_1 .. [a_A] w_A (ctx + meta(x_i)) CLS . EOS``: attribute tokens unshifted."""
    method = build_method(make_trainer(tiny_cfg(method="cocoop_atp", attributes=attributes, n_ctx=2, n_att=3)))
    assert isinstance(method, CoCoOpATP)
    gen = torch.Generator().manual_seed(5)
    _randomise(method, gen)
    for att in method.attributes.att:
        att.data = torch.randn(att.shape, generator=gen) * 0.3
    names, scale = method.trainer.task.classnames, method.trainer.logit_scale.exp()
    feats = method.trainer.train_features[:4, 0]
    with torch.no_grad():
        got = method.logits(feats, names)
        expected = []
        for x, shift in zip(feats, _meta(method.prompt.meta_net, feats)):
            text = hand_built(tiny_backbone.model, tiny_backbone.tokenizer, names, words, method.attributes.att,
                              method.prompt.ctx + shift)
            expected.append(scale * F.normalize(x, dim=-1) @ F.normalize(text, dim=-1).T)
    assert (got - torch.stack(expected)).abs().max().item() < 1e-5


@pytest.mark.parametrize("eos_index", ["correct", "reference"])
def test_cocoop_anchoropt_prompt_is_w_over_shifted_ctx_and_anchors(tiny_cfg, eos_index):
    """Base classes: ``SOS W @ [ctx + meta(x_i); A] CLS . EOS``; novel: the mean with the anchor
    prompt ``SOS A of CLS . EOS`` (reference: suffix cut N short of 77 under ``eos_index: reference``)."""
    n_ctx, n_anchors = 3, 2
    trainer = make_trainer(tiny_cfg(method="cocoop_anchoropt", n_ctx=n_ctx, n_anchors=n_anchors, eos_index=eos_index))
    method = build_method(trainer)
    assert isinstance(method, CoCoOpAnchorOPT)
    gen = torch.Generator().manual_seed(4)
    _randomise(method, gen)
    method.anchor.anchors.data = torch.randn(n_anchors, trainer.width, generator=gen) * 0.3
    pick = torch.tensor([3, 0, 0, 4, 1])  # W rows one-hot, a token may be picked twice
    w = F.one_hot(pick, n_ctx + n_anchors).float()
    method.prompt.position.data = 5 * w  # argmax P = W at evaluation
    method.eval()
    clip, tok = trainer.backbone.model, trainer.backbone.tokenizer
    scale = trainer.logit_scale.exp()
    for split in ("base", "novel"):
        ev = trainer.task.evals[split]
        names = [n.replace("_", " ") for n in ev.classnames]
        placeholder = " ".join(["X"] * (n_ctx if eos_index == "reference" else n_ctx + n_anchors))
        with torch.no_grad():
            got = method.scores(ev)
            prompt = []
            for x, shift in zip(ev.features, _meta(method.prompt.meta_net, ev.features)):
                block = w @ torch.cat([method.prompt.ctx + shift, method.anchor.anchors])
                cut = n_ctx if eos_index == "reference" else n_ctx + n_anchors
                text = _clip_text(clip, tok, [f"{placeholder} {n}." for n in names],
                                  block.expand(len(names), -1, -1), cut)
                prompt.append(scale * F.normalize(x, dim=-1) @ F.normalize(text, dim=-1).T)
            prompt = torch.stack(prompt)
            anchor_text = _clip_text(clip, tok, [" ".join(["X"] * n_anchors) + f" of {n}." for n in names],
                                     method.anchor.anchors.expand(len(names), -1, -1), n_anchors)
            anchor = scale * F.normalize(ev.features, dim=-1) @ F.normalize(anchor_text, dim=-1).T
        expected = prompt if split == "base" else (prompt + anchor) / 2
        assert (got["acc"] - expected).abs().max().item() < 1e-5, split
        assert (got["acc_anchor"] - anchor).abs().max().item() < 1e-5, split


def _grads(method):
    method.train()
    loss, stepper = method.prompt_step(next(method.trainer.image_batches(0)))
    loss.backward()
    return {id(p): p.grad for g in stepper.optimizer.param_groups for p in g["params"]}


def test_gradients_reach_ctx_meta_net_and_attribute_tokens(tiny_cfg):
    method = build_method(make_trainer(tiny_cfg(method="cocoop")))
    grads = _grads(method)
    for p in [method.prompt.ctx, *method.prompt.meta_net.parameters()]:
        assert grads[id(p)] is not None and grads[id(p)].abs().sum() > 0
    atp = build_method(make_trainer(tiny_cfg(method="cocoop_atp")))
    grads = _grads(atp)
    for p in [atp.prompt.ctx, *atp.prompt.meta_net.parameters(), *atp.attributes.att]:
        assert grads[id(p)] is not None and grads[id(p)].abs().sum() > 0
    full = build_method(make_trainer(tiny_cfg(method="cocoop_anchoropt", cocoop_anchoropt_trains="all")))
    full.fit_anchors()
    full.anchor.anchors.grad = None  # Stage I's last step
    grads = _grads(full)
    for p in [full.prompt.ctx, full.prompt.position, *full.prompt.meta_net.parameters()]:
        assert grads[id(p)] is not None and grads[id(p)].abs().sum() > 0
    assert full.anchor.anchors.grad is None  # anchors detached in Stage II


@pytest.mark.parametrize("method,trains,changed,kept", [
    ("cocoop", "ctx", ["ctx", "meta_net.linear1.weight", "meta_net.linear2.bias"], []),
    ("cocoop_atp", "ctx", ["ctx", "meta_net.linear1.weight", "att"], []),
    ("cocoop_anchoropt", "ctx", ["ctx"], ["position_untrained", "meta_net.linear1.weight", "meta_net.linear2.bias"]),
    ("cocoop_anchoropt", "all", ["ctx", "position", "meta_net.linear1.weight", "meta_net.linear2.bias"], []),
])
def test_trains_end_to_end(tiny_cfg, tmp_path, method, trains, changed, kept):
    """``train`` runs each method and learns exactly its trainable tensors (the reference's
    CoCoOp+AnchorOPT optimiser holds the soft tokens only)."""
    cfg = tiny_cfg(method=method, cocoop_anchoropt_trains=trains, batch_size=4, warmup_epochs=0)
    before = build_method(make_trainer(cfg)).tensors()
    record = train(cfg, out_dir=tmp_path)
    after = torch.load(tmp_path / "prompts.pt", weights_only=True)
    assert {"acc_base", "acc_novel", "hm"} <= set(record["metrics"])
    assert record["training"]["updates"]["prompt"] == 2 * 3  # 12 base images / 4, 2 epochs
    for name in changed:
        assert not torch.equal(before[name], after[name]), name
    for name in kept:
        assert torch.equal(before[name], after[name]), name


def test_meta_net_without_hidden_units_is_a_config_error(tiny_cfg):
    with pytest.raises(ConfigError, match="meta_net_ratio=64"):
        build_method(make_trainer(tiny_cfg(method="cocoop", meta_net_ratio=64)))


@pytest.mark.parametrize("overrides", [{"method": "cocoop_anchoropt", "cocoop_anchoropt_trains": "ctx"},
                                       {"method": "anchoropt", "position_matrix": "identity"}])
def test_an_untrained_w_is_never_shown_as_learned(tiny_cfg, tmp_path, overrides):
    """W at its init (the reference's CoCoOp+AnchorOPT optimiser) or fixed (ablation) is saved as
    ``position_untrained``: the report's learned-position figure leaves such runs out."""
    from anchoropt.report.positions import learned_positions

    train(tiny_cfg(batch_size=4, **overrides), out_dir=tmp_path)
    saved = torch.load(tmp_path / "prompts.pt", weights_only=True)
    assert "position" not in saved and "position_untrained" in saved
    records = pd.DataFrame([{"method": overrides["method"], "dataset": "eurosat", "seed": 1,
                             "path": str(tmp_path / "record.json")}])
    assert learned_positions(records).empty
