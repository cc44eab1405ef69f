"""Text encoder over token embeddings, truncation, over-long class names."""
import pytest
import torch

from anchoropt.text import ClassTokens, TextEncoder

NAMES = ["red", "dark green", "Herbaceous Vegetation Land", "a b c d e f"]


@pytest.mark.parametrize("truncate", [True, False])
def test_text_encoder_over_embeddings_equals_encode_text(tiny_backbone, truncate):
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    encoder = TextEncoder(model)
    texts = [f"a photo of {n}." for n in NAMES]
    expected = model.encode_text(tok(texts))
    # The learned block holds the embeddings of the real words "a photo", so the assembled
    # sequence is exactly the tokenised prompt.
    tokens = ClassTokens.build(NAMES, 2, "of {}.", tok, model.token_embedding, truncate=truncate)
    block = model.token_embedding(tok(["a photo"])[0, 1:3])
    got = encoder(tokens.assemble(block), tokens.eos_index)
    assert (got - expected).abs().max().item() < 1e-5
    assert tokens.suffix.shape[1] + 3 == (int(tokens.eos_index.max()) + 1 if truncate else 77)


def test_truncated_sequences_are_shorter(tiny_backbone):
    tokens = ClassTokens.build(NAMES, 4, "{}.", tiny_backbone.tokenizer, tiny_backbone.model.token_embedding)
    assert tokens.assemble(torch.zeros(4, 32)).shape == (len(NAMES), int(tokens.eos_index.max()) + 1, 32)


def test_overlong_class_name_is_reported(tiny_backbone):
    with pytest.raises(ValueError, match="does not fit"):
        ClassTokens.build(["word " * 80], 4, "{}.", tiny_backbone.tokenizer, tiny_backbone.model.token_embedding)


def _features_and_grads(learner, encoder, tokens, *extra, position_seed=None):
    """Text features of ``learner`` and the gradients of a CLIP-like loss of them (a fixed
    function of the normalised features, as the methods' losses)."""
    from anchoropt.prompts import gumbel_hard
    learner.zero_grad()
    if position_seed is not None:  # the same straight-through W sample for both paths
        w = gumbel_hard(learner.position, 1.0, torch.Generator().manual_seed(position_seed))
        feats = learner(encoder, tokens, *extra, w)
    else:
        feats = learner(encoder, tokens, *extra)
    weights = torch.linspace(-1, 1, feats.numel()).reshape(feats.shape)
    (torch.nn.functional.normalize(feats, dim=-1) * weights).sum().backward()
    return feats.detach(), {n: p.grad.clone() for n, p in learner.named_parameters()}


@pytest.mark.parametrize("truncate", [True, False])
@pytest.mark.parametrize("learner_name", ["coop", "anchor", "anchoropt", "anchoropt_reference_eos"])
def test_shared_prefix_equals_per_class_encoding(tiny_backbone, truncate, learner_name):
    """Features and gradients of every learner (CoOp, the Stage I anchor prompt and teacher, the
    Stage II prompt with W, also reading EOS early inside the shared block) match the per-class path."""
    from anchoropt.prompts import AnchorOPTPrompt, AnchorPrompt, CoOpPrompt
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    gen = torch.Generator().manual_seed(0)
    extra, seed = (), None
    if learner_name == "coop":
        learner = CoOpPrompt(torch.randn(4, 32, generator=gen) * 0.02)
    elif learner_name == "anchor":
        learner = AnchorPrompt(torch.randn(2, 32, generator=gen) * 0.02)
    else:  # 3 soft tokens + 5 anchors; the reference EOS shift 5 reads inside the block for short names
        learner = AnchorOPTPrompt(torch.randn(3, 32, generator=gen) * 0.02, torch.randn(8, 8, generator=gen),
                                  torch.Generator(), eos_shift=5 if learner_name.endswith("eos") else 0)
        extra, seed = (torch.randn(5, 32, generator=gen) * 0.02,), 7
    tokens = ClassTokens.build(NAMES, learner.n_block, learner.rest, tok, model.token_embedding, truncate=truncate)
    shared, per_class = TextEncoder(model), TextEncoder(model, share_prefix=False)
    assert shared.share_prefix and not per_class.share_prefix
    feats_a, grads_a = _features_and_grads(learner, shared, tokens, *extra, position_seed=seed)
    feats_b, grads_b = _features_and_grads(learner, per_class, tokens, *extra, position_seed=seed)
    assert (feats_a - feats_b).abs().max().item() < 1e-5
    for name, grad in grads_b.items():
        assert grad.abs().max() > 0, name
        assert (grads_a[name] - grad).abs().max().item() < 1e-5, name


def test_shared_prefix_is_off_where_it_would_not_be_exact(tiny_backbone):
    import copy
    model = copy.deepcopy(tiny_backbone.model)
    model.transformer.grad_checkpointing = True
    assert not TextEncoder(model).share_prefix
    model.transformer.grad_checkpointing = False
    model.attn_mask = torch.zeros_like(model.attn_mask)  # no causal mask: the prefix sees the class name
    assert not TextEncoder(model).share_prefix


@pytest.mark.parametrize("method", ["coop", "anchoropt"])
def test_training_with_and_without_prefix_sharing_agrees(tiny_cfg, tmp_path, method):
    """End to end through the methods (CoOp; AnchorOPT Stage I, teacher, Stage II): the learned
    tensors of a short run do not depend on share_prefix beyond float rounding."""
    from anchoropt.train import train
    learned = []
    for share in (True, False):
        out = tmp_path / f"share_{share}"
        train(tiny_cfg(method=method, share_prefix=share, cache_dir=str(out / "cache")), out_dir=out)
        learned.append(torch.load(out / "prompts.pt", weights_only=True))
    assert learned[0].keys() == learned[1].keys()
    for name in learned[0]:
        assert (learned[0][name] - learned[1][name]).abs().max().item() < 1e-4, name


def test_words_common_to_every_class_join_the_shared_prefix(tiny_backbone):
    """The anchor prompt ``SOS A.. of CLS . EOS`` shares "of" with the block; CoOp's ``{}.`` shares nothing."""
    from anchoropt.prompts import AnchorPrompt, CoOpPrompt
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    anchor = ClassTokens.build(NAMES, 2, AnchorPrompt.rest, tok, model.token_embedding)
    assert anchor.n_shared == 1 and anchor.select(torch.tensor([0])).n_shared == 1
    assert ClassTokens.build(NAMES, 4, CoOpPrompt.rest, tok, model.token_embedding).n_shared == 0
    one = ClassTokens.build(NAMES[:1], 2, AnchorPrompt.rest, tok, model.token_embedding)
    assert one.n_shared == int(one.eos_index[0]) - 3  # a single class: all but EOS, never past it
