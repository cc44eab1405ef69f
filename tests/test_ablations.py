"""AnchorOPT's ablation switches (issue 12): each replaces exactly one part of the method."""
import pytest
import torch
import torch.nn.functional as F

from anchoropt.config import ConfigError
from anchoropt.engine import Trainer, stream_generator
from anchoropt.methods import AnchorOPT
from anchoropt.prompts import clip_logits, normal_init
from anchoropt.schedules import two_stage
from anchoropt.task import build_task
from anchoropt.train import cached_backbone, train


def _method(cfg) -> AnchorOPT:
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, "cpu", cfg.preprocess)
    return AnchorOPT(Trainer(cfg, backbone, build_task(cfg, backbone), torch.device("cpu")))


def _fit(method: AnchorOPT) -> AnchorOPT:
    method.train()
    two_stage(method)
    method.eval()
    return method


def test_random_anchors_are_stage1_start_untrained(tiny_cfg):
    full, random = _method(tiny_cfg()), _method(tiny_cfg(anchor_source="random"))
    start = normal_init(1, full.trainer.width, stream_generator(1, "anchors"))
    assert torch.equal(full.anchor.anchors.detach(), start) and torch.equal(random.anchor.anchors.detach(), start)
    full.fit_anchors()
    random.fit_anchors()
    assert not torch.equal(full.anchor.anchors.detach(), start) and full.stage1_updates > 0
    assert torch.equal(random.anchor.anchors.detach(), start) and random.updates()["anchors"] == 0
    assert torch.equal(full.prompt.ctx, random.prompt.ctx) and torch.equal(full.prompt.position, random.prompt.position)


def test_word_anchors_are_the_words_token_embeddings(tiny_cfg):
    method = _method(tiny_cfg(anchor_source="word", anchor_word="shape"))
    model, tok = method.trainer.backbone.model, method.trainer.backbone.tokenizer
    expected = model.token_embedding.weight[tok.encode("shape")].float()
    _fit(method)
    assert torch.equal(method.anchor.anchors.detach(), expected)
    with pytest.raises(ConfigError, match="anchor_word='red shape' has 2 BPE tokens but n_anchors=1"):
        _method(tiny_cfg(anchor_source="word", anchor_word="red shape"))
    assert _method(tiny_cfg(anchor_source="word", anchor_word="red shape", n_anchors=2)).anchor.anchors.shape[0] == 2


@pytest.mark.parametrize("kind", ["identity", "permutation"])
def test_fixed_position_matrix_is_used_and_not_trained(tiny_cfg, kind):
    method = _method(tiny_cfg(position_matrix=kind, lr=0.5, warmup_epochs=0))
    ctx = method.prompt.ctx.detach().clone()
    _fit(method)
    w = method.tensors()["position_untrained"]
    assert torch.equal(w.sum(0), torch.ones(len(w))) and torch.equal(w.sum(1), torch.ones(len(w)))
    if kind == "identity":
        assert torch.equal(w, torch.eye(len(w)))
    else:  # drawn from the seed: the same for the same seed, another for another
        assert torch.equal(w, _method(tiny_cfg(position_matrix=kind)).tensors()["position_untrained"])
        others = [_method(tiny_cfg(position_matrix=kind, seed=s)).tensors()["position_untrained"] for s in (2, 3, 4)]
        assert any(not torch.equal(w, o) for o in others)
    assert not torch.equal(ctx, method.prompt.ctx)  # the soft tokens still train
    names = method.trainer.task.classnames
    with torch.no_grad():  # the prompt reads W: text features are those of the fixed order
        fixed = method.prompt(method.trainer.encoder, method.trainer.tokens(names, method.prompt.n_block, "{}."),
                              method.anchor.anchors, w)
        assert torch.allclose(method.text(names), fixed.float())


def test_novel_rule_prompt_scores_unseen_classes_with_the_prompt_alone(tiny_cfg):
    ensemble, prompt = (train(tiny_cfg(novel_rule=r))["metrics"] for r in ("ensemble", "prompt"))
    same = ("acc_base", "acc_anchor_base", "acc_anchor_novel")
    assert {k: ensemble[k] for k in same} == {k: prompt[k] for k in same}
    method = _fit(_method(tiny_cfg(novel_rule="prompt")))
    ev = method.trainer.task.evals["novel"]
    with torch.no_grad():
        logits = clip_logits(ev.features, method.text(ev.classnames), method.trainer.logit_scale)
    assert prompt["acc_novel"] == pytest.approx(100 * (logits.argmax(-1) == ev.labels).float().mean().item())


def test_kd_off_trains_on_cross_entropy_alone(tiny_cfg):
    method = _method(tiny_cfg(kd_weight=0.0))
    method.fit_anchors()
    method.eval()  # W = argmax, so both sides below see the same prompt
    batch = next(iter(method.trainer.image_batches(0)))
    loss, _ = method.prompt_step(batch)
    logits = clip_logits(batch[0], method.text(method.trainer.task.classnames), method.trainer.logit_scale)
    assert loss.item() == pytest.approx(method.cfg.ce_weight * F.cross_entropy(logits, batch[1]).item(), rel=1e-4)
    assert method._teacher is None  # the anchor prompt's logits are never computed


def test_ablation_keys_are_validated(tiny_cfg):
    with pytest.raises(ConfigError, match="anchor_source=random keeps the anchors fixed"):
        tiny_cfg(anchor_source="random", schedule="one_stage")
    for key in ("anchor_source", "position_matrix", "novel_rule"):
        with pytest.raises(ConfigError, match=f"invalid value {key}='bogus'"):
            tiny_cfg(**{key: "bogus"})


def test_ablation_suite_changes_one_key_per_method():
    """benchmarks/toy11_ablations.yaml: every method's resolved config differs from the full
    method's (the baseline) in exactly one TrainConfig key, on every dataset."""
    from anchoropt.config import make_config
    from anchoropt.suite import load_suite, method_values
    from tests.helpers import REPO_ROOT

    suite = load_suite(REPO_ROOT / "benchmarks" / "toy11_ablations.yaml")
    assert suite.baseline == "anchoropt" and len(suite.datasets) == 11 and suite.seeds == [1, 2, 3]
    changed = {}
    for dataset in suite.datasets:
        full = make_config(method_values(suite, "anchoropt", dataset)[0]).to_dict()
        for method in suite.methods:
            if method != "anchoropt":
                cfg = make_config(method_values(suite, method, dataset)[0]).to_dict()
                diff = {k for k in cfg if cfg[k] != full[k]}
                assert len(diff) == 1, (method, dataset, diff)
                changed[method] = diff.pop()
    assert set(changed.values()) == {"anchor_source", "position_matrix", "kd_weight", "novel_rule", "n_anchors"}


def test_ablation_suites_full_method_is_the_best_stage1_variant():
    """Issue 23: the ablations run with the Stage I variant that scored best in
    benchmarks/toy11_stage1.yaml (reports/toy11_stage1: stage1_ce, stage1_ce_weight 1), settings
    and all, so the ablation report's full method is that suite's stage1_ce cell."""
    from anchoropt.config import make_config
    from anchoropt.suite import load_suite, method_values
    from tests.helpers import REPO_ROOT

    ablations = load_suite(REPO_ROOT / "benchmarks" / "toy11_ablations.yaml")
    stage1 = load_suite(REPO_ROOT / "benchmarks" / "toy11_stage1.yaml")
    assert ablations.datasets == stage1.datasets and ablations.seeds == stage1.seeds
    for dataset in ablations.datasets:
        full = make_config(method_values(ablations, "anchoropt", dataset)[0]).to_dict()
        best = make_config(method_values(stage1, "stage1_ce", dataset)[0]).to_dict()
        assert full == best and full["stage1_ce_weight"] == 1
