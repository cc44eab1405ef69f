import pytest
import torch

from anchoropt.backbone import BackboneError, create_backbone
from anchoropt.text import ClassTokens, TextEncoder
from tests.conftest import TINY
from tests.helpers import save_openai_style_jit

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


def test_backbone_is_frozen_and_eval(tiny_backbone):
    assert not tiny_backbone.model.training
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())


def test_openai_file_and_tag_give_same_model_and_logits(tmp_path, monkeypatch):
    import open_clip
    reference = open_clip.create_model(TINY, force_quick_gelu=True)
    path = save_openai_style_jit(reference.state_dict(), tmp_path / "TinyCLIP-test.pt")
    # Pretend TinyCLIP has an "openai" tag whose download is this file (no network in tests).
    real_cfg = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda name, tag: {"quick_gelu": True} if (name, tag) == (TINY, "openai") else real_cfg(name, tag))
    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg, **kw: str(path))
    by_tag, by_file = create_backbone(TINY, "openai"), create_backbone(TINY, str(path))
    for b in (by_tag, by_file):
        assert type(b.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    images, text = torch.randn(3, 3, 32, 32), by_tag.tokenizer(["a photo of a cat.", "a dog."])
    logits_tag = by_tag.model.get_logits(images, text)[0]
    logits_file = by_file.model.get_logits(images, text)[0]
    assert torch.equal(logits_tag, logits_file)
    assert (logits_file - reference.get_logits(images, text)[0]).abs().max() < 1e-5


def test_open_clip_state_dict_checkpoint_loads(tmp_path):
    import open_clip
    model = open_clip.create_model(TINY)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ck.pt")
    loaded = create_backbone(TINY, str(tmp_path / "ck.pt"))
    assert torch.equal(loaded.model.token_embedding.weight, model.token_embedding.weight)


@pytest.mark.parametrize("pretrained, match", [
    ("/no/such/ViT.pt", "checkpoint file not found: /no/such/ViT.pt"),
    ("laion_typo", "neither a pretrained tag"),
])
def test_bad_pretrained_is_one_line_error(pretrained, match):
    with pytest.raises(BackboneError, match=match) as err:
        create_backbone(TINY, pretrained)
    assert "\n" not in str(err.value)


def test_unreadable_checkpoint_and_unknown_model(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="cannot read checkpoint .*broken.pt"):
        create_backbone(TINY, str(bad))
    with pytest.raises(BackboneError, match="unknown model 'ViT-Q-99'"):
        create_backbone("ViT-Q-99", "")


def test_offline_tag_error_names_tag_and_alternative(monkeypatch):
    import open_clip

    def offline(*a, **k):
        raise OSError("network unreachable")
    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(BackboneError, match="cannot fetch pretrained tag 'openai' for RN50.*local checkpoint path"):
        create_backbone("RN50", "openai")
