"""Backbone factory: frozen model, OpenAI / open_clip checkpoints, one-line errors."""
import json
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import torchvision.transforms as T
from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD
from PIL import Image

from anchoropt.backbone import BackboneError, create_backbone, resolve_preprocess
from anchoropt.features import cache_key
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
    with pytest.warns(UserWarning, match="ck.pt guessed: OpenAI's; pass preprocess=<tag>"):
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


INCEPTION = (0.5, 0.5, 0.5)
IMAGENET = tuple(IMAGENET_MEAN)


@pytest.mark.parametrize("name, path, mean, interpolation, resize_mode, guess", [
    ("ViT-L-14", "/hf/models--laion--CLIP-ViT-L-14-laion2B-s32B-b82K/snapshots/1a2b/open_clip_pytorch_model.bin",
     INCEPTION, "bicubic", "shortest", "guessed from its path: that of ViT-L-14 tag laion2b_s32b_b82k"),
    ("ViT-L-14", "/models/ViT-L-14-datacomp_xl_s13b_b90k.pt", tuple(open_clip.OPENAI_DATASET_MEAN), "bicubic",
     "shortest", "tag datacomp_xl_s13b_b90k"),
    ("ViT-L-14-CLIPA", "/models/clipa-l14.pt", IMAGENET, "bilinear", "squash", "the one all ViT-L-14-CLIPA tags share"),
    ("ViT-B-16-SigLIP", "/models/siglip-b16.bin", INCEPTION, "bicubic", "squash", "tags share"),
    ("ViT-L-14", "/models/vitl.pt", tuple(open_clip.OPENAI_DATASET_MEAN), "bicubic", "shortest", "guessed: OpenAI's"),
])
def test_checkpoint_file_gets_its_weights_preprocessing_and_a_warning_when_guessed(
        name, path, mean, interpolation, resize_mode, guess):
    cfg, warning = resolve_preprocess(name, Path(path))
    assert (cfg["mean"], cfg["interpolation"], cfg["resize_mode"]) == (mean, interpolation, resize_mode)
    assert guess in warning and f"pass preprocess=<tag> (tags of {name}: openai, " in warning


def test_preprocess_tag_names_it_without_warning():
    cfg, warning = resolve_preprocess("ViT-L-14", Path("/models/vitl.pt"), "laion2b_s32b_b82k")
    assert cfg["mean"] == INCEPTION and cfg["std"] == INCEPTION and warning is None
    cfg, warning = resolve_preprocess("ViT-L-14-CLIPA", Path("/models/clipa.pt"), "openai")
    assert cfg["mean"] == tuple(open_clip.OPENAI_DATASET_MEAN) and warning is None
    assert resolve_preprocess("ViT-B-16-SigLIP", "webli")[0]["resize_mode"] == "squash"  # a tag: its own cfg
    with pytest.raises(BackboneError, match="preprocess='laion2b' is not a pretrained tag of ViT-L-14: expected "
                                            "openai or one of openai, laion400m_e31"):
        resolve_preprocess("ViT-L-14", Path("/models/vitl.pt"), "laion2b")


def test_checkpoint_with_open_clip_config_json_builds_its_transform(tmp_path, tiny_backbone):
    folder = tmp_path / "hf-download"
    folder.mkdir()
    torch.save(open_clip.create_model(TINY).state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}, "preprocess_cfg": {
        "mean": list(IMAGENET), "std": list(IMAGENET_STD), "interpolation": "bilinear",
        "resize_mode": "squash"}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known, not guessed
        backbone = create_backbone(TINY, str(folder / "open_clip_pytorch_model.bin"))
    steps = backbone.preprocess.transforms
    norm = next(t for t in steps if isinstance(t, T.Normalize))
    assert tuple(norm.mean) == IMAGENET and backbone.mean == IMAGENET
    assert steps[0].interpolation == T.InterpolationMode.BILINEAR
    assert backbone.preprocess(Image.new("RGB", (64, 16))).shape == (3, 32, 32)  # squashed, not cropped
    assert steps[0].size == (32, 32)
    named = create_backbone(TINY, str(folder / "open_clip_pytorch_model.bin"), preprocess="openai")
    assert named.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert cache_key(backbone, [], 0, 0, 1.0, False) != cache_key(named, [], 0, 0, 1.0, False)


# QuickGELU for every form of weights: each test saves random weights of the tiny model in one form and
# checks the activation decided, the record's reason and that the features are those of the right model.

def _activation(backbone) -> str:
    return type(backbone.model.transformer.resblocks[0].mlp.gelu).__name__


def _same_features(backbone, reference) -> bool:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return torch.equal(backbone.model.encode_image(images), reference.eval().requires_grad_(False).encode_image(images))


@pytest.fixture
def published_tags(monkeypatch):
    """Give TinyCLIP-test published weights (tag -> quick_gelu), as ViT-B-16 has (no network in tests)."""
    def publish(tags: dict[str, bool]):
        real_tags, real_cfg = open_clip.list_pretrained_tags_by_model, open_clip.get_pretrained_cfg
        monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model",
                            lambda name: list(tags) if name == TINY else real_tags(name))
        monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                            lambda name, tag: {"quick_gelu": tags[tag]} if name == TINY and tag in tags
                            else real_cfg(name, tag))
    return publish


def test_plain_openai_state_dict_of_an_all_quickgelu_architecture_gets_quickgelu(tmp_path, published_tags):
    published_tags({"openai": True, "yfcc15m": True})  # as RN50: every published weights use QuickGELU
    reference = open_clip.create_model(TINY, force_quick_gelu=True)
    torch.save(reference.state_dict(), tmp_path / "rn50.pt")  # torch.save(model.state_dict()) of OpenAI's model
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="cannot tell")
        backbone = create_backbone(TINY, str(tmp_path / "rn50.pt"))
    assert backbone.activation == "quick_gelu" and _activation(backbone) == "QuickGELU"
    assert "every published TinyCLIP-test weights (openai, yfcc15m) use it" in backbone.activation_from
    assert _same_features(backbone, reference)


def test_plain_state_dict_of_an_ambiguous_architecture_warns_naming_quick_gelu(tmp_path, published_tags):
    published_tags({"openai": True, "laion2b_s34b_b88k": False})  # as ViT-B-16
    reference = open_clip.create_model(TINY, force_quick_gelu=True)
    torch.save(reference.state_dict(), tmp_path / "vitb16.pt")
    with pytest.warns(UserWarning, match=r"cannot tell from .*vitb16.pt whether its TinyCLIP-test weights use "
                                         r"QuickGELU \(as openai\) or GELU .* pass quick_gelu=true"):
        guessed = create_backbone(TINY, str(tmp_path / "vitb16.pt"))
    assert guessed.activation == "gelu"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="cannot tell")  # stated: no warning
        stated = create_backbone(TINY, str(tmp_path / "vitb16.pt"), quick_gelu=True)
    assert stated.activation_from == "quick_gelu=true given" and _same_features(stated, reference)


def test_plain_state_dict_with_openai_entries_gets_quickgelu(tmp_path, published_tags):
    published_tags({"openai": True, "laion2b_s34b_b88k": False})
    reference = open_clip.create_model(TINY, force_quick_gelu=True)
    # torch.jit.load(OpenAI file).state_dict() saved as a plain file keeps OpenAI's extra entries
    torch.save({**reference.state_dict(), "input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
                "vocab_size": torch.tensor(49408)}, tmp_path / "from_jit.pt")
    backbone = create_backbone(TINY, str(tmp_path / "from_jit.pt"))
    assert backbone.activation == "quick_gelu" and backbone.activation_from.startswith("OpenAI's format")
    assert _same_features(backbone, reference)


def test_openai_torchscript_gets_quickgelu(tmp_path, published_tags):
    published_tags({"openai": True, "laion2b_s34b_b88k": False})
    reference = open_clip.create_model(TINY, force_quick_gelu=True)
    backbone = create_backbone(TINY, str(save_openai_style_jit(reference.state_dict(), tmp_path / "ViT.pt")))
    assert backbone.activation == "quick_gelu" and _same_features(backbone, reference)


@pytest.mark.parametrize("tag, quick", [("laion400m_e32", True), ("laion2b_e16", False)])
def test_tag_gets_the_activation_of_its_pretrained_config(tmp_path, monkeypatch, published_tags, tag, quick):
    published_tags({"laion400m_e32": True, "laion2b_e16": False})  # as ViT-B-32's tags
    reference = open_clip.create_model(TINY, force_quick_gelu=quick)
    torch.save(reference.state_dict(), tmp_path / f"{tag}.bin")
    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg, **kw: str(tmp_path / f"{tag}.bin"))
    backbone = create_backbone(TINY, tag)
    assert backbone.quick_gelu is quick and f"pretrained config of tag {tag}" in backbone.activation_from
    assert _same_features(backbone, reference)


@pytest.mark.parametrize("evidence", ["params.txt", "run name"])
def test_training_checkpoint_of_a_quickgelu_model_gets_quickgelu(tmp_path, published_tags, evidence):
    published_tags({"openai": True, "laion2b_s34b_b88k": False})
    run = "2024_05_01-09_00_00-model_TinyCLIP-test-quickgelu-lr_0.0005-b_256-j_8-p_amp"
    folder = tmp_path / "logs" / run / "checkpoints"  # open_clip's training script's layout
    folder.mkdir(parents=True)
    reference = open_clip.create_model(TINY + "-quickgelu")
    torch.save({"epoch": 32, "name": run if evidence == "run name" else "my-run",
                "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}, "optimizer": {}},
               folder / "epoch_32.pt")
    if evidence == "params.txt":
        (tmp_path / "logs" / run / "params.txt").write_text("lr: 0.0005\nmodel: TinyCLIP-test-quickgelu\nseed: 0\n")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="cannot tell")
        backbone = create_backbone(TINY, str(folder / "epoch_32.pt"))  # the base name: the checkpoint decides
    assert backbone.activation == "quick_gelu"
    assert backbone.activation_from == "training checkpoint of TinyCLIP-test-quickgelu"
    assert _same_features(backbone, reference)


def test_training_checkpoint_of_a_gelu_model_gets_gelu(tmp_path, published_tags):
    published_tags({"openai": True, "laion2b_s34b_b88k": False})
    reference = open_clip.create_model(TINY)
    torch.save({"epoch": 1, "name": "2024_05_01-09_00_00-model_TinyCLIP-test-lr_0.001-b_64-j_4-p_amp",
                "state_dict": reference.state_dict()}, tmp_path / "epoch_1.pt")
    backbone = create_backbone(TINY + "-quickgelu", str(tmp_path / "epoch_1.pt"))
    assert backbone.activation == "gelu" and _same_features(backbone, reference)


def test_open_clip_config_json_beside_the_file_decides(tmp_path, published_tags):
    published_tags({"openai": True, "laion2b_s34b_b88k": False})
    reference = open_clip.create_model(TINY, force_quick_gelu=True)
    torch.save(reference.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="cannot tell")
        backbone = create_backbone(TINY, str(tmp_path / "open_clip_pytorch_model.bin"))
    assert backbone.activation == "quick_gelu" and "open_clip_config.json" in backbone.activation_from


def test_random_and_unpublished_weights_get_the_model_config_without_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert create_backbone(TINY, "").activation == "gelu"
        assert create_backbone(TINY + "-quickgelu", "").activation == "quick_gelu"
        assert create_backbone("ToyCLIP", "toy").activation_from == "the config of ToyCLIP"
