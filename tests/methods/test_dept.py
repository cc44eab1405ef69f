"""DePT, DePT+ATPrompt and DePT+AnchorOPT (anchoropt/methods/dept.py) against hand-built references."""
import math

import pytest
import torch

from anchoropt.config import ConfigError
from anchoropt.engine import stream_generator
from anchoropt.methods import DePT, DePTAnchorOPT, DePTATP, build_method
from anchoropt.methods.dept import DePTHead
from anchoropt.train import train
from tests.helpers import make_trainer
from tests.methods.test_atprompt import hand_built

VARIANTS = [DePT, DePTATP, DePTAnchorOPT]


def _randomise(head: DePTHead, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))


def _hand_head(x, scale, shift, weight, bias):
    """Row by row, class by class: sum_d (x_d * scale_d + shift_d) * W_cd + b_c."""
    return torch.tensor([[sum((x[i, d] * scale[d] + shift[d]) * weight[c, d] for d in range(x.shape[1])) + bias[c]
                          for c in range(weight.shape[0])] for i in range(x.shape[0])])


def _hand_ce(logits, labels):
    rows = [logits[i].exp().div(logits[i].exp().sum()).log()[labels[i]] for i in range(len(labels))]
    return -torch.stack(rows).mean()


def _hand_clip(img, txt, logit_scale):
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return logit_scale.exp() * img @ txt.T


def test_head_starts_as_reference_and_computes_cwt_then_linear():
    head = DePTHead(6, 3, stream_generator(1, "dept_head"))
    assert torch.equal(head.image_scale, torch.ones(6)) and torch.equal(head.text_shift, torch.zeros(6))
    bound = 1 / math.sqrt(6)  # torch.nn.Linear's default init
    assert head.class_weight.abs().max() <= bound and head.class_bias.abs().max() <= bound
    assert torch.equal(head.class_weight, DePTHead(6, 3, stream_generator(1, "dept_head")).class_weight)
    _randomise(head)
    img, txt, labels = torch.randn(4, 6), torch.randn(3, 6), torch.tensor([2, 0, 0, 1])
    w, b = head.class_weight.detach(), head.class_bias.detach()
    expected_img = _hand_head(img, head.image_scale.detach(), head.image_shift.detach(), w, b)
    assert (head(img) - expected_img).abs().max() < 1e-5
    logits, out_labels = head.train_logits(img, txt, labels)
    expected_txt = _hand_head(txt[labels], head.text_scale.detach(), head.text_shift.detach(), w, b)
    assert logits.shape == (8, 3) and torch.equal(out_labels, torch.cat([labels, labels]))
    assert (logits - torch.cat([expected_txt, expected_img])).abs().max() < 1e-5


@pytest.mark.parametrize("cls", VARIANTS)
def test_training_loss_matches_hand_computation(tiny_cfg, cls):
    cfg = tiny_cfg(method=cls.name, dept_weight=0.3, ce_weight=2.0, kd_weight=5.0, kd_temperature=2.0)
    trainer = make_trainer(cfg)
    method = build_method(trainer)
    assert type(method) is cls
    _randomise(method.head)
    method.train()
    feats, labels = next(trainer.image_batches(0))
    loss, stepper = method.prompt_step((feats, labels))
    with torch.no_grad():
        if cls is not DePTAnchorOPT:
            text = method.text(trainer.task.classnames)
        else:  # the W sample the step drew: replay the Gumbel stream from the same state
            method.prompt.generator = stream_generator(cfg.seed, "gumbel")
            text = method.text(trainer.task.classnames)
        h = method.head
        clip = _hand_clip(feats, text, trainer.logit_scale)
        head_logits = torch.cat([_hand_head(text[labels], h.text_scale, h.text_shift, h.class_weight, h.class_bias),
                                 _hand_head(feats, h.image_scale, h.image_shift, h.class_weight, h.class_bias)])
        expected = 0.7 * _hand_ce(clip, labels) + 0.3 * _hand_ce(head_logits, torch.cat([labels, labels]))
        if cls is DePTAnchorOPT:
            anchor = _hand_clip(feats, method.anchor_text(trainer.task.classnames), trainer.logit_scale)
            p = ((clip + anchor) / 2 / 2.0).softmax(-1)
            kd = (p * (p.log() - (clip / 2.0).log_softmax(-1))).sum() * 2.0 ** 2 / clip.numel()
            expected = 2.0 * expected + 5.0 * kd
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stepper is (method.prompt_stepper if cls is DePTAnchorOPT else method.stepper)


def test_anchoropt_variant_default_kd_off_is_the_reference_loss(tiny_cfg):
    """kd_weight 0 (the reference's DePT_AnchorOPT): ce_weight * DePT loss, nothing else."""
    trainer = make_trainer(tiny_cfg(method="dept_anchoropt", kd_weight=0.0, ce_weight=3.0, position_matrix="identity"))
    method = build_method(trainer)
    feats, labels = next(trainer.image_batches(0))
    loss = method.prompt_step((feats, labels))[0]
    text = method.text(trainer.task.classnames)
    clip = _hand_clip(feats, text, trainer.logit_scale)
    head_logits, head_labels = method.head.train_logits(feats, text, labels)
    expected = 3.0 * (0.3 * _hand_ce(clip, labels) + 0.7 * _hand_ce(head_logits, head_labels))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("cls", VARIANTS)
def test_base_fuses_the_head_novel_does_not(tiny_cfg, cls):
    cfg = tiny_cfg(method=cls.name, dept_weight=0.4)
    trainer = make_trainer(cfg)
    method = build_method(trainer)
    _randomise(method.head)
    method.eval()
    metrics = trainer.evaluate(method)
    for split in ("base", "novel"):
        ev = trainer.task.evals[split]
        with torch.no_grad():
            scores = method.scores(ev)
            clip = _hand_clip(ev.features, method.text(ev.classnames), trainer.logit_scale)
            h = method.head
            if split == "base":
                expected = 0.6 * clip + 0.4 * _hand_head(ev.features, h.image_scale, h.image_shift, h.class_weight,
                                                         h.class_bias)
            elif cls is not DePTAnchorOPT:
                expected = clip
            else:
                expected = (clip + _hand_clip(ev.features, method.anchor_text(ev.classnames), trainer.logit_scale)) / 2
        assert (scores["acc"] - expected).abs().max() < 1e-5
        acc = 100 * (expected.argmax(-1) == ev.labels).float().mean().item()
        assert metrics[f"acc_{split}"] == pytest.approx(acc)


def test_head_refuses_a_seen_set_of_other_classes(tiny_cfg):
    trainer = make_trainer(tiny_cfg(method="dept"))
    method = build_method(trainer)
    ev = trainer.task.evals["base"]
    ev.classnames = ev.classnames[::-1]
    with pytest.raises(ValueError, match="training classes in training order"):
        method.scores(ev)


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_head_gradients_follow_the_weight(tiny_cfg, weight):
    """The head learns from its CE only; at w=1 the prompt still learns, through text[labels] in the head."""
    trainer = make_trainer(tiny_cfg(method="dept", dept_weight=weight))
    method = build_method(trainer)
    method.train()
    method.prompt_step(next(trainer.image_batches(0)))[0].backward()
    head_grads = [p.grad for p in method.head.parameters()]
    if weight == 0.0:
        assert all(g is None or not g.any() for g in head_grads)
    else:
        assert all(g is not None and g.abs().sum() > 0 for g in head_grads)
    assert method.prompt.ctx.grad.abs().sum() > 0


def test_head_is_in_the_prompt_optimiser_at_its_learning_rate(tiny_cfg):
    trainer = make_trainer(tiny_cfg(method="dept_anchoropt", lr=0.0035))
    method = build_method(trainer)
    groups = method.prompt_stepper.optimizer.param_groups
    assert {id(p) for p in method.head.parameters()} <= {id(p) for g in groups for p in g["params"]}
    method.prompt_stepper.set_epoch(3, 10, trainer.cfg)
    assert len({g["lr"] for g in groups}) == 1 and all(g["weight_decay"] == 5e-4 for g in groups)


@pytest.mark.parametrize("method", ["dept", "dept_anchoropt"])
def test_head_lr_mult_scales_the_heads_rate_only(tiny_cfg, method):
    """dept_head_lr_mult 6.5 (DePT's own STAGED_LR, LR_EXP 6.5): head at 6.5x the prompt's rate, every epoch."""
    trainer = make_trainer(tiny_cfg(method=method, lr=0.0035, dept_head_lr_mult=6.5, epochs=10))
    m = build_method(trainer)
    stepper = m.prompt_stepper if method == "dept_anchoropt" else m.stepper
    head = {id(p) for p in m.head.parameters()}
    for epoch in (0, 3, 9):
        stepper.set_epoch(epoch, 10, trainer.cfg)
        lrs = {any(id(p) in head for p in g["params"]): g["lr"] for g in stepper.optimizer.param_groups}
        assert lrs[True] == pytest.approx(6.5 * lrs[False]) and lrs[False] > 0


@pytest.mark.parametrize("method, schedule", [("dept", "two_stage"), ("dept_atp", "two_stage"),
                                              ("dept_anchoropt", "two_stage"), ("dept_anchoropt", "one_stage")])
def test_trains_end_to_end_and_updates_the_head(tiny_cfg, tmp_path, method, schedule):
    cfg = tiny_cfg(method=method, schedule=schedule, epochs=3, lr=0.5, warmup_epochs=0)
    record = train(cfg, out_dir=tmp_path / "run")
    steps = 3 * (12 // 8)  # 3 base classes x 4 shots, batch 8
    assert record["training"]["updates"]["head"] == steps == record["training"]["updates"]["prompt"]
    assert {"acc_base", "acc_novel", "hm"} <= set(record["metrics"])
    tensors = torch.load(tmp_path / "run" / "prompts.pt", weights_only=True)
    start = DePTHead(32, 3, stream_generator(cfg.seed, "dept_head"))
    assert tensors["head.class_weight"].shape == (3, 32) and "ctx" in tensors
    assert ("att" in tensors) == (method == "dept_atp") and ("anchors" in tensors) == (method == "dept_anchoropt")
    for key, value in start.state_dict().items():
        assert not torch.equal(tensors[f"head.{key}"], value), key


def test_atp_variant_prompts_with_the_attribute_block_and_trains_it_through_the_head(tiny_cfg, tiny_backbone):
    """DePT+ATPrompt's text is ATPrompt's hand-built prompt; at w=1 (head loss only) the attribute
    tokens and the context still learn, through text[labels] in the head."""
    method = build_method(make_trainer(tiny_cfg(method="dept_atp", attributes="color,shape", n_ctx=2, n_att=3,
                                            dept_weight=1.0)))
    assert type(method) is DePTATP and method.attributes in method.modules() and method.head in method.modules()
    classes = method.trainer.task.classnames
    with torch.no_grad():
        want = hand_built(tiny_backbone.model, tiny_backbone.tokenizer, classes, ("color", "shape"),
                          method.attributes.att, method.prompt.ctx)
        assert (method.text(classes) - want).abs().max() < 1e-5
    loss, stepper = method.prompt_step(next(method.trainer.image_batches(0)))
    loss.backward()
    trained = [*method.attributes.att, method.prompt.ctx, *method.head.parameters()]
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in trained)
    assert {id(p) for g in stepper.optimizer.param_groups for p in g["params"]} == {id(p) for p in trained}


def test_dept_weight_must_lie_in_unit_interval(tiny_cfg):
    with pytest.raises(ConfigError, match="dept_weight"):
        tiny_cfg(method="dept", dept_weight=1.5)
