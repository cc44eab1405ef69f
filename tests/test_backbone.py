"""Backbone factory: frozen model, OpenAI / open_clip checkpoints, one-line errors."""
import pytest
import torch

from anchoropt.backbone import BackboneError, create_backbone
from tests.conftest import TINY
from tests.helpers import save_openai_style_jit


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
