"""Verified caches (features, Stage I, description targets) and the description targets' encoding."""
from pathlib import Path

import numpy as np
import pytest
import torch

from anchoropt.data import Datum
from anchoropt.features import encode_images
from anchoropt.methods import AnchorOPT
from tests.helpers import write_image
from tests.test_train import _spy_stage1, _trainer


def _images(tmp_path, n=3):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        write_image(tmp_path / f"img{i}.png", (40 * i, 200 - 30 * i, 90), rng)
        items.append(Datum(str(tmp_path / f"img{i}.png"), i, f"c{i}"))
    return items


def _truncate(path, tensor):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path, tensor):
    """Flip one bit inside the stored values of ``tensor`` (a valid file with other numbers)."""
    data = bytearray(path.read_bytes())
    start = data.find(tensor.contiguous().numpy().tobytes()[:32])
    assert start > 0
    data[start + 9] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip])
def test_damaged_feature_cache_is_rebuilt_with_one_line(tiny_backbone, tmp_path, capsys, damage):
    items, cache = _images(tmp_path), tmp_path / "cache"
    fresh = encode_images(tiny_backbone, items, 2, 1, cache)
    (path,) = (cache / "features").glob("*.pt")
    damage(path, fresh)
    capsys.readouterr()
    again = encode_images(tiny_backbone, items, 2, 1, cache)
    assert torch.equal(again, fresh)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "rebuilding" in lines[0]
    from anchoropt.cache import load_cache
    assert torch.equal(load_cache(path, "features", path.stem), fresh)  # the rebuilt file verifies


@pytest.mark.parametrize("damage", [_truncate, _flip])
def test_damaged_stage1_cache_is_rebuilt_with_one_line(tiny_cfg, capsys, damage):
    first = AnchorOPT(_trainer(tiny_cfg()))
    first.fit_anchors()
    (path,) = Path(first.trainer.cfg.cache_dir).glob("stage1/*.pt")
    damage(path, first.anchor.anchors.detach())
    capsys.readouterr()
    calls = []
    trainer = _trainer(tiny_cfg())
    _spy_stage1(trainer, calls)
    second = AnchorOPT(trainer)
    second.fit_anchors()
    assert calls == ["stage1"] and torch.equal(first.anchor.anchors, second.anchor.anchors)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0]


@pytest.mark.parametrize("damage", [_truncate, _flip])
def test_damaged_description_target_cache_is_rebuilt_with_one_line(tiny_cfg, capsys, damage):
    fresh = _trainer(tiny_cfg()).description_targets()
    (path,) = Path(tiny_cfg().cache_dir).glob("description_targets/*.pt")
    damage(path, fresh)
    capsys.readouterr()
    assert torch.equal(_trainer(tiny_cfg()).description_targets(), fresh)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "rebuilding" in err[0]


def test_cache_header_rejects_other_key_and_layout(tmp_path):
    from anchoropt.cache import CacheDamaged, cached, load_cache, save_cache

    path = tmp_path / "x.pt"
    save_cache({"a": torch.zeros(2, 3)}, path, "stage1", "k1", {"why": "test"})
    assert torch.equal(load_cache(path, "stage1", "k1")["a"], torch.zeros(2, 3))
    with pytest.raises(CacheDamaged, match="not stage1 k2"):
        load_cache(path, "stage1", "k2")
    torch.save({"a": torch.zeros(2, 3)}, path)  # a plain torch file of an older version: no header
    with pytest.raises(CacheDamaged, match="no verification header"):
        load_cache(path, "stage1", "k1")
    built = cached(path, "stage1", "k1", {}, lambda: {"a": torch.ones(1)})
    assert torch.equal(built["a"], torch.ones(1))


def test_description_targets_cut_at_eos_equal_uncut_encoding(tiny_cfg):
    from anchoropt.text import encode_token_ids

    trainer = _trainer(tiny_cfg())
    model, tokenizer = trainer.backbone.model, trainer.backbone.tokenizer
    texts = ["a", "a photo of a red square on grass", "x " * 40, "two words", "x " * 100]  # one cut at the context
    tokens = tokenizer(texts)
    assert len({int(i) for i in tokens.argmax(-1)}) == len(texts)  # every length differs
    with torch.no_grad():
        uncut = model.encode_text(tokens)
    cut = encode_token_ids(trainer.encoder, tokens, truncate=True, batch_size=2)
    torch.testing.assert_close(cut, uncut, rtol=1e-5, atol=1e-5)


def test_description_targets_shared_across_trials_keyed_by_descriptions(tiny_cfg):
    trainer = _trainer(tiny_cfg())
    targets = trainer.description_targets()
    folder = Path(trainer.cfg.cache_dir) / "description_targets"
    assert len(list(folder.glob("*.pt"))) == 1
    other = _trainer(tiny_cfg(seed=3, n_anchors=2, anchor_lr=0.1, anchor_epochs=5))  # other trial, same targets
    other.encoder = None  # the targets must come from the cache: encoding would fail
    assert torch.equal(other.description_targets(), targets)
    fewer = _trainer(tiny_cfg(n_descriptions=2))
    assert fewer.description_targets().shape[1] == 2
    assert len(list(folder.glob("*.pt"))) == 2


def test_encode_features_fills_the_cache_once_per_feature_set(tiny_cfg, monkeypatch):
    """Runs equal on the feature keys share one encoding; afterwards a run encodes nothing itself."""
    import anchoropt.features as features
    from anchoropt.train import encode_features, train

    configs = [tiny_cfg(lr=0.01), tiny_cfg(lr=0.02, n_anchors=2), tiny_cfg(seed=2),
               tiny_cfg(dataset="no_such_dataset")]  # a bad one is left to its own run to report
    threads = torch.get_num_threads()
    assert encode_features(configs, threads=2) == 3
    assert torch.get_num_threads() == threads
    files = sorted((Path(configs[0].cache_dir) / "features").glob("*.pt"))
    assert len(files) == 2 * 3  # train views, base and novel sets of seeds 1 and 2
    monkeypatch.setattr(features, "_encode_seeded", lambda *a, **k: pytest.fail("encoded in the run"))
    train(tiny_cfg(seed=2, epochs=1, anchor_epochs=1))
