"""`anchoropt export openai`: any open_clip backbone as an OpenAI-format file; read back, identical features."""
import copy
import dataclasses
import json
import warnings

import open_clip
import pytest
import torch

from anchoropt.backbone import BackboneError, create_backbone
from anchoropt.cli import main
from anchoropt.export import export_openai
from tests.conftest import TINY


@torch.no_grad()
def _features(backbone) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(3, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(1))
    text = backbone.tokenizer(["a photo of a red circle.", "two green stars."])
    return backbone.model.encode_image(images), backbone.model.encode_text(text)


@pytest.mark.parametrize("name, pretrained, quick_gelu", [
    ("ToyCLIP-ViT", "toy", None),  # GELU, 32-wide heads: what OpenAI's builder cannot infer
    ("ToyCLIP", "toy", None),      # ResNet image tower
    (TINY, "", True),              # QuickGELU
])
def test_export_openai_round_trip_gives_identical_features(tmp_path, capsys, name, pretrained, quick_gelu):
    out = tmp_path / "exported" / f"{name}.pt"
    main(["export", "openai", "--out", str(out), f"backbone={name}", f"pretrained={pretrained}",
          *([f"quick_gelu={str(quick_gelu).lower()}"] if quick_gelu is not None else [])])
    assert "in OpenAI's format, fp32" in capsys.readouterr().out
    original = create_backbone(name, pretrained, quick_gelu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # activation and preprocessing read from open_clip_config.json
        loaded = create_backbone(name, str(out))
    assert loaded.activation == original.activation and loaded.preprocess_cfg == original.preprocess_cfg
    assert all(torch.equal(a, b) for a, b in zip(_features(loaded), _features(original)))
    state = torch.load(out, weights_only=True)
    assert "visual.conv1.weight" in state and all(v.dtype == torch.float32 for v in state.values())


def test_exported_file_is_read_by_open_clips_openai_builder(tmp_path):
    """open_clip's reader of OpenAI state dicts (heads = width / 64, QuickGELU, fp16 weights) reads the file."""
    original = create_backbone("TinyCLIP-openai-test", "")
    export_openai(original, tmp_path / "m.pt")
    rebuilt = open_clip.model.build_model_from_openai_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    rebuilt = rebuilt.float().requires_grad_(False)
    image, text = _features(original)
    theirs = dataclasses.replace(original, model=rebuilt)
    for a, b in zip(_features(theirs), (image, text)):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)  # their builder rounds weights to fp16


def test_export_refuses_a_model_openai_format_cannot_express(tmp_path, tiny_backbone):
    model = copy.deepcopy(tiny_backbone.model)
    model.text_pool_type = "last"  # OpenAI's text tower pools at the EOT token (argmax)
    with pytest.raises(BackboneError, match="parts OpenAI's format cannot express: .* features differ by"):
        export_openai(dataclasses.replace(tiny_backbone, model=model), tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_export_keeps_files_it_would_replace(tmp_path, tiny_backbone, capsys):
    export_openai(tiny_backbone, tmp_path / "a.pt")
    with pytest.raises(SystemExit):
        main(["export", "openai", "--out", str(tmp_path / "a.pt"), f"backbone={TINY}", "pretrained="])
    assert "a.pt exists: pass --overwrite" in capsys.readouterr().err
    quick = create_backbone(TINY, "", quick_gelu=True)
    with pytest.raises(ValueError, match="open_clip_config.json describes another checkpoint"):
        export_openai(quick, tmp_path / "b.pt")  # the folder's config is a's
    assert json.loads((tmp_path / "open_clip_config.json").read_text())["model_cfg"]["quick_gelu"] is False
