"""Stage I: anchors from a file (the reference's Dassl checkpoints), the image terms and joint mode
reconstructed from the shipped anchors' logs, and the leak-free best_val epoch."""
import hashlib
import pickle

import pytest
import torch
import torch.nn.functional as F

from anchoropt.anchor_file import read_anchor_file
from anchoropt.config import ConfigError
from anchoropt.methods import build_method
from anchoropt.methods.anchoropt import stage1_cache_path
from anchoropt.methods.stage1 import Stage1
from anchoropt.prompts import clip_logits, stage1_loss
from anchoropt.search.space import load_space
from anchoropt.train import train
from tests.helpers import REPO_ROOT, TINY_VIT, make_trainer

TINY_WIDTH = 32  # token width of TinyCLIP-test and TinyViT-test (tests/model_configs)


def dassl_checkpoint(path, anchors: torch.Tensor, n_classes: int = 3, payload=None):
    """A file laid out as the reference's anchor_weights/<Dataset>/anchor_prompt_learner/model.pth.tar:
    Dassl's save_checkpoint of the AnchorPromptLearner (anchor_ctx_1 [N, d] in fp16 plus its fixed
    token buffers), the epoch, the SGD state and the warm-up scheduler's state, whose ``successor``
    pickles the CosineAnnealingLR object and, inside it, the SGD optimiser."""
    param = torch.nn.Parameter(anchors.clone())
    opt = torch.optim.SGD([param], lr=0.002, momentum=0.9, weight_decay=5e-4)
    param.grad = torch.ones_like(param)
    opt.step()
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 100)
    d = anchors.shape[1]
    state = {"anchor_ctx_1": anchors,
             "token_prefix": torch.randn(n_classes, 1, d).half(), "token_of": torch.randn(n_classes, 1, d).half(),
             "token_suffix": torch.randn(n_classes, 74, d).half()}
    scheduler = {"cons_lr": 1e-5, "successor": cosine, "warmup_epoch": 1, "last_epoch": 100}
    if payload is not None:
        scheduler["payload"] = payload
    torch.save({"state_dict": state, "epoch": 100, "optimizer": opt.state_dict(), "scheduler": scheduler}, path)
    return path


class Payload:
    """What an attacker pickles: unpickling it would run a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_dassl_file_is_a_real_dassl_layout_that_weights_only_refuses(tmp_path):
    path = dassl_checkpoint(tmp_path / "model.pth.tar", torch.randn(1, TINY_WIDTH).half())
    with pytest.raises(pickle.UnpicklingError):  # why the reader cannot be torch.load(weights_only=True)
        torch.load(path, weights_only=True)
    found = read_anchor_file(path)
    assert (found.layout, found.epoch) == ("dassl", 100)
    assert found.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("method, backbone", [("anchoropt", None), ("maple_anchoropt", TINY_VIT)])
def test_dassl_anchors_load_bit_identical_and_stay_through_training(tiny_cfg, tmp_path, method, backbone):
    anchors = torch.randn(1, TINY_WIDTH, generator=torch.Generator().manual_seed(3)).half()
    path = dassl_checkpoint(tmp_path / "model.pth.tar", anchors)
    extra = {"backbone": backbone, "prompt_depth": 2} if backbone else {}
    cfg = tiny_cfg(method=method, anchors=str(path), **extra)
    m = build_method(make_trainer(cfg))
    assert torch.equal(m.anchor.anchors.data, anchors.float())  # fp16 -> fp32 is exact
    record = train(cfg, tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "prompts.pt", weights_only=True)["anchors"]
    assert torch.equal(saved, anchors.float())
    stage1 = record["training"]["stage1"]
    assert stage1["anchors_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (stage1["anchors_layout"], stage1["file_epoch"], record["training"]["updates"]["anchors"]) == ("dassl", 100, 0)


def test_a_reduce_payload_is_refused_in_one_line_and_never_runs(tiny_cfg, tmp_path):
    marker = tmp_path / "pwned"
    path = dassl_checkpoint(tmp_path / "evil.pth.tar", torch.randn(1, TINY_WIDTH), payload=Payload(marker))
    with pytest.raises(ConfigError) as err:
        train(tiny_cfg(anchors=str(path)))
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "system" in message and "refused" in message
    assert not marker.exists()


@pytest.mark.parametrize("shape, overrides, named", [((1, 7), {}, ("7", str(TINY_WIDTH))),
                                                      ((1, TINY_WIDTH), {"n_anchors": 2}, ("1", "n_anchors=2"))])
def test_width_or_count_mismatch_is_one_line_naming_both(tiny_cfg, tmp_path, shape, overrides, named):
    path = dassl_checkpoint(tmp_path / "model.pth.tar", torch.randn(*shape))
    with pytest.raises(ConfigError) as err:
        train(tiny_cfg(anchors=str(path), **overrides))
    assert "\n" not in str(err.value) and all(v in str(err.value) for v in named)


def test_own_prompts_pt_is_an_anchor_file(tiny_cfg, tmp_path):
    train(tiny_cfg(), tmp_path / "first")
    first = torch.load(tmp_path / "first" / "prompts.pt", weights_only=True)["anchors"]
    record = train(tiny_cfg(anchors=str(tmp_path / "first" / "prompts.pt"), kd_weight=0), tmp_path / "second")
    assert torch.equal(torch.load(tmp_path / "second" / "prompts.pt", weights_only=True)["anchors"], first)
    assert record["training"]["stage1"]["anchors_layout"] == "anchoropt"


@pytest.mark.parametrize("overrides", [{"anchors": "/nonexistent/model.pth.tar"},
                                       {"anchors": __file__, "anchor_source": "random"},
                                       {"anchors": __file__, "schedule": "one_stage"},
                                       {"stage1_select": "best_val", "eval_split": "val"},
                                       {"stage1_mode": "both"}])
def test_stage1_keys_that_cannot_work_are_refused(tiny_cfg, overrides):
    with pytest.raises(ConfigError):
        tiny_cfg(**overrides)


def _batch(trainer):
    return next(trainer.image_batches(0, trainer.cfg.anchor_batch_size, "stage1_batches"))


def test_stage1_ce_weight_adds_the_anchor_prompts_cross_entropy(tiny_cfg):
    m = build_method(make_trainer(tiny_cfg(stage1_ce_weight=2.5, anchor_batch_size=8)))
    t = m.trainer
    feats, labels = _batch(t)
    loss, stepper = Stage1(m).step((feats, labels))
    text = m.anchor_text(t.task.classnames)
    hand = stage1_loss(text, t.description_targets(), 1000.0) + 2.5 * F.cross_entropy(
        clip_logits(feats, text, t.logit_scale), labels)
    assert torch.allclose(loss, hand, rtol=1e-6) and stepper is m.anchor_stepper


def test_joint_mode_trains_anchors_ctx_and_w_in_one_optimiser_and_keeps_only_anchors(tiny_cfg, tmp_path):
    cfg = tiny_cfg(stage1_mode="joint", mse_weight=0, stage1_prompt_ce_weight=3.0, anchor_batch_size=8)
    m = build_method(make_trainer(cfg))
    stage1 = Stage1(m)
    params = {id(p) for g in stage1.stepper.optimizer.param_groups for p in g["params"]}
    assert params == {id(m.anchor.anchors), id(stage1.prompt.ctx), id(stage1.prompt.position)}
    assert stage1.prompt.gumbel_tau == 2.0 and not torch.equal(stage1.prompt.ctx, m.prompt.ctx)
    loss, _ = stage1.step(_batch(m.trainer))
    loss.backward()  # MSE off, no anchor CE: the anchors' gradient comes from the Stage I prompt's CE alone
    assert m.anchor.anchors.grad.abs().sum() > 0 and stage1.prompt.position.grad.abs().sum() > 0
    record = train(cfg, tmp_path)
    assert record["training"]["stage1"] == {"mode": "joint", "select": "last", "epoch": cfg.anchor_epochs}
    assert "stage1_ctx" not in torch.load(tmp_path / "prompts.pt", weights_only=True)


def test_best_val_keeps_the_epoch_whose_anchor_prompt_scores_best_on_val(tiny_cfg, monkeypatch):
    cfg = tiny_cfg(stage1_select="best_val", anchor_epochs=4, anchor_lr=0.5, stage1_ce_weight=1.0)
    seen = []
    original = Stage1.score_epoch

    def spy(self, epoch, info):  # accuracy recomputed by hand from the val images, and the anchors then
        val, t = self.trainer.task.val, self.trainer
        text = F.normalize(self.method.anchor_text(val.classnames), dim=-1)
        pred = (F.normalize(val.features, dim=-1) @ text.T).argmax(-1)
        seen.append(((pred == val.labels).float().mean().item(), self.method.anchor.anchors.detach().clone()))
        original(self, epoch, info)

    monkeypatch.setattr(Stage1, "score_epoch", spy)
    record = train(cfg)
    accs = [a for a, _ in seen]
    best = accs.index(max(accs))
    assert len(seen) == 4 and record["training"]["stage1"]["epoch"] == best + 1
    m = build_method(make_trainer(cfg))  # the cached result keeps the epoch and its anchors
    m.fit_anchors()
    assert m.stage1["epoch"] == best + 1 and torch.equal(m.anchor.anchors.data, seen[best][1])
    assert make_trainer(tiny_cfg()).task.val is None  # val images are encoded for best_val only


@pytest.mark.parametrize("key, value", [("stage1_ce_weight", 1.0), ("stage1_mode", "joint"),
                                        ("stage1_select", "best_val")])
def test_stage1_settings_key_the_stage1_cache(tiny_cfg, key, value):
    t = make_trainer(tiny_cfg())
    assert stage1_cache_path(t, 1) != stage1_cache_path(make_trainer(tiny_cfg(**{key: value})), 1)


def test_full_space_searches_the_stage1_keys():
    space = load_space(REPO_ROOT / "search_spaces" / "full.yaml")
    names = {p.name for p in space.params}
    assert {"stage1_ce_weight", "stage1_mode", "stage1_prompt_ce_weight"} <= names


def test_a_cells_identity_holds_its_anchor_files_contents(tmp_path):
    """Issue 23: the anchor file's sha256 keys a result, so edited anchors at the same path never
    reuse a stale record (the benchmark refuses, naming the file)."""
    from anchoropt.benchmark import Cell, cell_identity, identity_change

    path = tmp_path / "anchors.pt"
    torch.save({"anchors": torch.zeros(2, 8)}, path)
    cell = Cell("anchoropt", "eurosat", 1, {"data_root": "/d", "anchors": str(path), "epochs": 5},
                {"eurosat": "x.json"}, "untuned")
    before = cell_identity(cell, {("/d", "eurosat"): "fp"})
    assert before["anchors_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    torch.save({"anchors": torch.ones(2, 8)}, path)
    after = cell_identity(cell, {("/d", "eurosat"): "fp"})
    assert after != before and "anchors file" in identity_change(before, after)
    path.unlink()
    with pytest.raises(ConfigError, match="anchors=.*anchors.pt: cannot read"):
        cell_identity(cell, {("/d", "eurosat"): "fp"})
