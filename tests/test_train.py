import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from anchoropt.cli import main
from anchoropt.config import ConfigError, load_config
from anchoropt.engine import NonFiniteLoss, Trainer, lr_at, stream_generator
from anchoropt.methods import AnchorOPT
from anchoropt.prompts import AnchorOPTPrompt, clip_logits, kd_loss, normal_init
from anchoropt.schedules import two_stage
from anchoropt.task import build_task
from anchoropt.train import cached_backbone, train
from tests.conftest import TINY
from tests.helpers import make_split_dataset

SHARED_CUPL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cupl"


def _trainer(cfg):
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, "cpu", cfg.preprocess)
    return Trainer(cfg, backbone, build_task(cfg, backbone), torch.device("cpu"))


def _prompt(n_ctx: int, n_anchors: int, width: int, **kw) -> AnchorOPTPrompt:
    n = n_ctx + n_anchors
    return AnchorOPTPrompt(normal_init(n_ctx, width, stream_generator(0, "ctx")),
                           torch.randn(n, n, generator=stream_generator(0, "p")), stream_generator(0, "g"), **kw)


def test_stage1_loss_decreases(tiny_cfg):
    cfg = tiny_cfg(anchor_epochs=8, anchor_lr=1e-4, warmup_epochs=0, n_anchors=3, momentum=0.0)
    trainer = _trainer(cfg)
    method = AnchorOPT(trainer)
    losses = []
    trainer.run_loop("stage1", cfg.anchor_epochs, lambda epoch: [method.anchor_step], [method.anchor_stepper],
                     lambda e, info: losses.append(info["loss"]))
    assert len(losses) == 8 and all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.8 * losses[0]


def _spy_stage1(trainer, calls):
    original = trainer.run_loop
    trainer.run_loop = lambda phase, *a, **k: calls.append(phase) or original(phase, *a, **k)


def test_stage1_is_computed_once_per_config(tiny_cfg):
    first = AnchorOPT(_trainer(tiny_cfg()))
    first.fit_anchors()
    calls = []
    trainer = _trainer(tiny_cfg(lr=0.01, kd_weight=5.0, n_ctx=6))  # Stage II settings differ, Stage I the same
    _spy_stage1(trainer, calls)
    second = AnchorOPT(trainer)
    second.fit_anchors()
    assert calls == [] and torch.equal(first.anchor.anchors, second.anchor.anchors)
    trainer = _trainer(tiny_cfg(n_anchors=2))
    _spy_stage1(trainer, calls)
    AnchorOPT(trainer).fit_anchors()
    assert calls == ["stage1"]


def test_position_matrix_rows_one_hot_and_learns(tiny_backbone, tiny_cfg):
    trainer = _trainer(tiny_cfg(n_ctx=3, n_anchors=2))
    learner = _prompt(3, 2, trainer.width)
    learner.train()
    w = learner.position_matrix()
    assert w.shape == (5, 5) and torch.equal(w.sum(-1), torch.ones(5)) and set(w.unique().tolist()) == {0.0, 1.0}
    anchors = torch.randn(2, trainer.width)
    tokens = trainer.tokens(trainer.task.classnames, 5, learner.rest)
    feats, labels = next(trainer.image_batches(0))
    logits = clip_logits(feats, learner(trainer.encoder, tokens, anchors), trainer.logit_scale)
    F.cross_entropy(logits, labels).backward()
    assert learner.position.grad is not None and learner.position.grad.abs().sum() > 0
    assert learner.ctx.grad.abs().sum() > 0
    learner.eval()
    assert torch.equal(learner.position_matrix(), F.one_hot(learner.position.argmax(-1), 5).float())


def test_stage2_changes_soft_tokens_and_positions_not_anchors(tiny_cfg):
    cfg = tiny_cfg(lr=0.5, warmup_epochs=0, epochs=3)
    method = AnchorOPT(_trainer(cfg))
    method.fit_anchors()
    before = [t.detach().clone() for t in (method.prompt.ctx, method.prompt.position, method.anchor.anchors)]
    method.train()
    two_stage(method)
    assert not torch.equal(before[0], method.prompt.ctx) and not torch.equal(before[1], method.prompt.position)
    assert torch.equal(before[2], method.anchor.anchors)


def test_inference_rule_base_prompt_novel_ensemble(tiny_cfg):
    cfg = tiny_cfg()
    trainer = _trainer(cfg)
    method = AnchorOPT(trainer)
    metrics = trainer.evaluate(method)
    for split in ("base", "novel"):
        ev = trainer.task.evals[split]
        with torch.no_grad():
            prompt = clip_logits(ev.features, method.prompt(trainer.encoder, trainer.tokens(
                ev.classnames, method.prompt.n_block, method.prompt.rest), method.anchor.anchors), trainer.logit_scale)
            anch = clip_logits(ev.features, method.anchor(trainer.encoder, trainer.tokens(
                ev.classnames, cfg.n_anchors, method.anchor.rest)), trainer.logit_scale)
        logits = prompt if split == "base" else (prompt + anch) / 2
        assert metrics[f"acc_{split}"] == pytest.approx(100 * (logits.argmax(-1) == ev.labels).float().mean().item())
        assert metrics[f"acc_anchor_{split}"] == pytest.approx(100 * (anch.argmax(-1) == ev.labels).float().mean().item())
    b, n = metrics["acc_base"], metrics["acc_novel"]
    assert metrics["hm"] == pytest.approx(2 * b * n / (b + n) if b + n else 0.0)


def test_kd_loss_reference_scaling():
    lp, la = torch.randn(4, 3), torch.randn(4, 3)
    t = 2.0
    ens = (lp + la) / 2
    p = F.softmax(ens / t, -1)
    expected = (p * (p.log() - F.log_softmax(lp / t, -1))).sum() * t * t / 12
    assert kd_loss(lp, la, t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_eval_position_sampling_is_random_argmax_is_not():
    learner = _prompt(4, 4, 8, position_eval="sample")
    learner.eval()
    assert any(not torch.equal(learner.position_matrix(), learner.position_matrix()) for _ in range(20))
    learner.position_eval = "argmax"
    assert torch.equal(learner.position_matrix(), learner.position_matrix())


@pytest.mark.parametrize("method, schedule", [("coop", "two_stage"), ("anchoropt", "two_stage"),
                                              ("anchoropt", "one_stage")])
def test_training_is_deterministic(tiny_cfg, tmp_path, method, schedule):
    runs = []
    for i in range(2):
        cfg = tiny_cfg(method=method, schedule=schedule, cache_dir=str(tmp_path / f"cache{i}"))
        record = train(cfg, out_dir=tmp_path / f"run{i}")
        runs.append((record["metrics"], torch.load(tmp_path / f"run{i}" / "prompts.pt", weights_only=True)))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1].keys() == runs[1][1].keys() and all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_nan_loss_names_phase_epoch_and_step(tiny_cfg):
    # the config refuses nan and inf weights; a finite weight too large for float32 still overflows the loss
    with pytest.raises(NonFiniteLoss, match=r"stage1: non-finite loss \((inf|nan)\) at epoch 1, step 1"):
        train(tiny_cfg(mse_weight=1e300))


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 0.002, 10, 1, 1e-5) == 1e-5
    assert lr_at(1, 0.002, 10, 1, 1e-5) == pytest.approx(0.002)
    assert lr_at(6, 0.002, 10, 1, 1e-5) == pytest.approx(0.001)


def test_config_errors_name_key_and_source(tmp_path):
    with pytest.raises(ConfigError, match="unknown key\\(s\\) n_anchor"):
        load_config(overrides=["n_anchor=3"])
    with pytest.raises(ConfigError, match="lr must be float, got 'fast'"):
        load_config(overrides=["lr=fast"])
    with pytest.raises(ConfigError, match="invalid value schedule='three_stage'"):
        load_config(overrides=["schedule=three_stage"])
    path = tmp_path / "c.yaml"
    path.write_text("n_anchors: 4\nepochs: 3\n")
    cfg = load_config(path, ["epochs=5", "lr=1e-3"])
    assert (cfg.n_anchors, cfg.epochs, cfg.lr) == (4, 5, 0.001)


def test_cli_train_prints_metrics_and_writes_record(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg(pretrained="none")
    overrides = [f"{k}={v}" for k, v in cfg.to_dict().items() if v not in (None, "")]
    main(["train", "--out", str(tmp_path / "out"), *overrides])
    out = capsys.readouterr().out
    assert "epoch   2" in out and "HM" in out
    # issue 26: never silent while it encodes the images and runs Stage I (minutes on ViT-B-16)
    lines = out.splitlines()
    assert lines[0].startswith("encoding eurosat's few-shot training images (2 augmented views each)")
    assert lines[1].startswith("features ready (") and lines[2].startswith("Stage I: fitting 1 anchor(s)")
    assert lines[3].startswith("stage1 epoch   1/2  loss ") and lines[4].startswith("stage1 epoch   2/2  loss ")
    record = json.loads((tmp_path / "out" / "record.json").read_text())
    assert record["method"] == "anchoropt_two_stage" and record["seed"] == 1
    assert set(record["metrics"]) >= {"acc_base", "acc_novel", "hm", "acc_anchor_base", "acc_anchor_novel"}
    assert set(torch.load(tmp_path / "out" / "prompts.pt", weights_only=True)) == {"ctx", "position", "anchors"}


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:
        main(["train", f"data_root={tmp_path}", "dataset=eurosat", "pretrained=none", f"backbone={TINY}"])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "folder not found" in err


@pytest.mark.skipif(not SHARED_CUPL.is_dir(), reason="../shared/data/cupl (real CuPL descriptions) is absent")
def test_trains_on_real_cupl_descriptions(tmp_path, tiny_cfg):
    pets = json.loads((SHARED_CUPL / "pets_prompts_full.json").read_text())
    classes = sorted(pets)[:6]
    make_split_dataset(tmp_path, "oxford_pets", "images", "split_zhou_OxfordPets.json", classes, per_class=(4, 1, 2))
    cfg = tiny_cfg(dataset="oxford_pets", data_root=str(tmp_path), descriptions_dir=str(SHARED_CUPL),
                   anchor_epochs=3)
    record = train(cfg)
    assert 0 <= record["metrics"]["hm"] <= 100 and "acc_anchor_novel" in record["metrics"]


def test_feature_cache_follows_image_and_checkpoint_files(tiny_backbone, tmp_path):
    import os
    from dataclasses import replace

    import numpy as np

    from anchoropt.data import Datum
    from anchoropt.features import encode_images
    from tests.helpers import write_image

    path = tmp_path / "img.png"
    write_image(path, (200, 10, 10), np.random.default_rng(0))
    items = [Datum(str(path), 0, "red")]
    cache = str(tmp_path / "cache")
    first = encode_images(tiny_backbone, items, 0, 1, cache, "cpu")
    write_image(path, (10, 10, 200), np.random.default_rng(1))  # the same file, replaced
    os.utime(path, ns=(1, 1))
    second = encode_images(tiny_backbone, items, 0, 1, cache, "cpu")
    assert not torch.allclose(first, second)
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 2
    moved = replace(tiny_backbone, weights_id=tiny_backbone.weights_id + ":other")  # e.g. a retrained checkpoint
    encode_images(moved, items, 0, 1, cache, "cpu")
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 3


def test_runs_that_differ_in_quick_gelu_share_no_cached_features_or_stage1(tiny_cfg, tmp_path):
    from anchoropt.features import encode_images

    gelu, quick = tiny_cfg(quick_gelu=False), tiny_cfg(quick_gelu=True)  # one cache_dir
    records = [train(cfg) for cfg in (gelu, quick)]
    assert [r["activation"]["function"] for r in records] == ["gelu", "quick_gelu"]
    assert records[1]["activation"]["decided_by"] == "quick_gelu=true given"
    assert len(list((tmp_path / "cache" / "stage1").glob("*.pt"))) == 2
    backbone = cached_backbone(quick.backbone, quick.pretrained, True, "cpu", quick.preprocess)
    task = build_task(quick, backbone)  # reads the cache the QuickGELU run wrote
    items = task.evals["base"].items
    fresh = encode_images(backbone, items)  # no cache
    assert torch.equal(task.evals["base"].features, fresh)
    other = cached_backbone(gelu.backbone, gelu.pretrained, False, "cpu", gelu.preprocess)
    assert not torch.allclose(encode_images(other, items), fresh)
