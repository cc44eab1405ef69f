"""CoCoOp and CoCoOp+AnchorOPT (issue 11) against hand-built references (ATPrompt's
trainers/cocoop.py, trainers/cocoop_anchoropt.py), on the tiny random model."""
import pytest
import torch
import torch.nn.functional as F

from anchoropt.config import ConfigError
from anchoropt.engine import Trainer
from anchoropt.methods import CoCoOp, CoCoOpAnchorOPT, build_method
from anchoropt.task import build_task
from anchoropt.text import ClassTokens, TextEncoder
from anchoropt.train import cached_backbone, resolve_ctx_init, train


def _trainer(cfg):
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, "cpu", cfg.preprocess)
    cfg = resolve_ctx_init(cfg, backbone)
    return Trainer(cfg, backbone, build_task(cfg, backbone), torch.device("cpu"))


def _clip_text(clip, tokenizer, texts, learned, cut):
    """The reference's text features: tokenise ``texts`` (77 positions), put ``learned [C, k, d]``
    after SOS in place of ``cut`` tokens, keep 77 positions, run CLIP's own text tower, read at
    ``tokens.argmax``."""
    tokens = tokenizer(texts)
    emb = clip.token_embedding(tokens)
    seq = torch.cat([emb[:, :1], learned, emb[:, 1 + cut:]], dim=1)[:, :tokens.shape[1]]
    x = clip.ln_final(clip.transformer(seq + clip.positional_embedding, attn_mask=clip.attn_mask))
    return x[torch.arange(len(texts)), tokens.argmax(dim=-1)] @ clip.text_projection


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
    trainer = _trainer(tiny_cfg(method="cocoop", share_prefix=share_prefix))
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


@pytest.mark.parametrize("eos_index", ["correct", "reference"])
def test_cocoop_anchoropt_prompt_is_w_over_shifted_ctx_and_anchors(tiny_cfg, eos_index):
    """Base classes: ``SOS W @ [ctx + meta(x_i); A] CLS . EOS``; novel: the mean with the anchor
    prompt ``SOS A of CLS . EOS`` (reference: suffix cut N short of 77 under ``eos_index: reference``)."""
    n_ctx, n_anchors = 3, 2
    trainer = _trainer(tiny_cfg(method="cocoop_anchoropt", n_ctx=n_ctx, n_anchors=n_anchors, eos_index=eos_index))
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


def test_gradients_reach_ctx_and_meta_net(tiny_cfg):
    method = build_method(_trainer(tiny_cfg(method="cocoop")))
    grads = _grads(method)
    for p in [method.prompt.ctx, *method.prompt.meta_net.parameters()]:
        assert grads[id(p)] is not None and grads[id(p)].abs().sum() > 0
    full = build_method(_trainer(tiny_cfg(method="cocoop_anchoropt", cocoop_anchoropt_trains="all")))
    full.fit_anchors()
    full.anchor.anchors.grad = None  # Stage I's last step
    grads = _grads(full)
    for p in [full.prompt.ctx, full.prompt.position, *full.prompt.meta_net.parameters()]:
        assert grads[id(p)] is not None and grads[id(p)].abs().sum() > 0
    assert full.anchor.anchors.grad is None  # anchors detached in Stage II


@pytest.mark.parametrize("method,trains,changed,kept", [
    ("cocoop", "ctx", ["ctx", "meta_net.linear1.weight", "meta_net.linear2.bias"], []),
    ("cocoop_anchoropt", "ctx", ["ctx"], ["position", "meta_net.linear1.weight", "meta_net.linear2.bias"]),
    ("cocoop_anchoropt", "all", ["ctx", "position", "meta_net.linear1.weight", "meta_net.linear2.bias"], []),
])
def test_trains_end_to_end(tiny_cfg, tmp_path, method, trains, changed, kept):
    """``train`` runs each method and learns exactly its trainable tensors (the reference's
    CoCoOp+AnchorOPT optimiser holds the soft tokens only)."""
    cfg = tiny_cfg(method=method, cocoop_anchoropt_trains=trains, batch_size=4, warmup_epochs=0)
    before = build_method(_trainer(cfg)).tensors()
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
        build_method(_trainer(tiny_cfg(method="cocoop", meta_net_ratio=64)))
