"""ATPrompt: attribute words, the attribute block against a hand-built prompt, CoOp+ATPrompt training."""
import pytest
import torch

from anchoropt.attributes import REFERENCE_ATTRIBUTES, dataset_attributes
from anchoropt.config import ConfigError, load_config
from anchoropt.engine import stream_generator
from anchoropt.methods import CoOpATP
from anchoropt.methods.atprompt import ATT_INIT_STD
from anchoropt.prompts import clip_logits, normal_init
from anchoropt.train import train
from tests.conftest import EUROSAT_CLASSES
from tests.helpers import make_split_dataset, make_trainer, reference_text_features

DTD_CLASSES = ["banded", "blotchy", "braided"]


def hand_built(model, tokenizer, classnames, words, att, ctx):
    """The reference's prompt built by hand: tokenise ``X..X w_1 X..X w_2 ... X..X CLASS.`` and put
    the soft tokens where the X are (every BPE token of a word kept); encode as the reference."""
    n_att, n_ctx = att[0].shape[0], ctx.shape[0]
    text = " ".join(" ".join(["X"] * n_att) + " " + w for w in words) + " " + " ".join(["X"] * n_ctx)
    ids = tokenizer([f"{text} {c}." for c in classnames])
    embeds = model.token_embedding(ids).clone()
    x_id, soft, pos = tokenizer.encode("X")[0], [], 1
    for i, w in enumerate(words):
        soft.append((pos, att[i]))
        pos += n_att + len(tokenizer.encode(w))
    soft.append((pos, ctx))
    for start, vectors in soft:
        assert (ids[:, start:start + len(vectors)] == x_id).all()  # the layout is the reference's
        embeds[:, start:start + len(vectors)] = vectors
    return reference_text_features(model, embeds, ids)


@pytest.mark.parametrize("attributes, words, share_prefix", [
    ("", ("habitat",), True), ("playfulness, color,shape", ("playfulness", "color", "shape"), True),
    ("playfulness, color,shape", ("playfulness", "color", "shape"), False)])
def test_prompt_equals_hand_built_reference(tiny_cfg, tiny_backbone, attributes, words, share_prefix):
    """EuroSAT's own word, and an override with a word of two BPE tokens (``play fulness``), through
    the shared-prefix and the per-class encoder."""
    method = CoOpATP(make_trainer(tiny_cfg(method="coop_atp", attributes=attributes, n_ctx=2, n_att=3,
                                           share_prefix=share_prefix)))
    assert method.trainer.encoder.share_prefix == share_prefix
    classes = method.trainer.task.classnames
    assert [tuple(a.shape) for a in method.attributes.att] == [(3, 32)] * len(words)
    with torch.no_grad():
        got = method.text(classes)
        want = hand_built(tiny_backbone.model, tiny_backbone.tokenizer, classes, words, method.attributes.att,
                          method.prompt.ctx)
    assert (got - want).abs().max().item() < 1e-5


def test_gradients_reach_attribute_tokens_and_context(tiny_cfg):
    method = CoOpATP(make_trainer(tiny_cfg(method="coop_atp", attributes="color,shape")))
    loss, stepper = method.prompt_step(next(method.trainer.image_batches(0)))
    loss.backward()
    assert len(method.attributes.att) == 2
    for p in [*method.attributes.att, method.prompt.ctx]:
        assert p.grad is not None and p.grad.abs().max() > 0
    assert {id(p) for g in stepper.optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in [*method.attributes.att, method.prompt.ctx]}


def test_coop_atp_trains_end_to_end(tiny_cfg, tmp_path):
    cfg = tiny_cfg(method="coop_atp", epochs=2)
    record = train(cfg, tmp_path / "run")
    assert {"acc_base", "acc_novel", "hm"} <= set(record["metrics"])
    tensors = torch.load(tmp_path / "run" / "prompts.pt", weights_only=True)
    init = normal_init(cfg.n_ctx, 32, stream_generator(cfg.seed, "attribute_tokens"), ATT_INIT_STD)
    assert tensors["att"].shape == (1, cfg.n_ctx, 32) and tensors["ctx"].shape == (cfg.n_ctx, 32)
    assert not torch.allclose(tensors["att"][0], init)  # trained away from its init
    assert record["training"]["updates"]["prompt"] == 2 * (4 * 3 // 8)  # 3 base classes x 4 shots, batch 8


def test_cross_dataset_targets_use_their_own_words(tiny_cfg, tiny_backbone, tmp_path):
    """As the reference's evaluation script: a target is prompted with its words; slots the source
    (EuroSAT: 1 word) has no word for (DTD: 3) keep their initial tokens."""
    make_split_dataset(tmp_path, "eurosat", "2750", "split_zhou_EuroSAT.json", EUROSAT_CLASSES)
    make_split_dataset(tmp_path, "dtd", "images", "split_zhou_DescribableTextures.json", DTD_CLASSES)
    cfg = tiny_cfg(method="coop_atp", data_root=str(tmp_path), protocol="cross_dataset", targets="dtd", n_att=1)
    method = CoOpATP(make_trainer(cfg))
    method.fit()
    att = torch.stack(list(method.attributes.att)).detach()
    assert att.shape == (3, 1, 32)
    init = normal_init(3, 32, stream_generator(cfg.seed, "attribute_tokens"), ATT_INIT_STD).view(3, 1, 32)
    assert not torch.allclose(att[0], init[0]) and torch.equal(att[1:], init[1:])
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    with torch.no_grad():
        for name, words in (("eurosat", ("habitat",)), ("dtd", ("pattern", "color", "design"))):
            ev = method.trainer.task.evals[name]
            want = hand_built(model, tok, ev.classnames, words, att, method.prompt.ctx)
            assert (method.text(ev.classnames, ev.dataset) - want).abs().max().item() < 1e-5
            want_logits = clip_logits(ev.features, want, method.trainer.logit_scale)
            assert (method.scores(ev)["acc"] - want_logits).abs().max().item() < 1e-3


def test_attribute_words_per_dataset():
    assert dataset_attributes("oxford_flowers") == ("color", "habitat", "growth")
    assert dataset_attributes("imagenet_r") == ("color", "shape") == REFERENCE_ATTRIBUTES["imagenet"]
    assert len(REFERENCE_ATTRIBUTES) == 15  # 11 datasets + 4 ImageNet variants
    # toy-11: the varying attributes, hidden one first, as caption words where captions have one
    assert dataset_attributes("toy_shape") == ("shape", "colour")
    assert dataset_attributes("toy_layout") == ("position", "colour")  # count is fixed (1) there
    assert dataset_attributes("toy_size_shape") == ("sized", "shape")
    assert dataset_attributes("toy_pattern") == ("pattern", "background")
    assert dataset_attributes("toy_shape", "color , shape") == ("color", "shape")


def test_toy_attribute_words_are_caption_words_where_captions_name_the_attribute():
    from anchoropt.attributes import TOY_ATTRIBUTE_WORDS
    from anchoropt.toy import world
    from anchoropt.toy.datasets import TOY11
    caption_words = set(" ".join(world.caption_phrases()).replace("-", " ").split())
    used = {w for d in TOY11 for w in dataset_attributes(d.name)}
    assert used == set(TOY_ATTRIBUTE_WORDS.values())
    assert {w for w in used if w in caption_words} == {"shape", "pattern", "background", "sized"}


def test_attribute_errors_are_one_line_naming_the_dataset():
    with pytest.raises(ConfigError, match="dataset 'my_plants' has no ATPrompt attribute words") as err:
        load_config(overrides={"method": "coop_atp", "dataset": "my_plants"})
    assert "\n" not in str(err.value)
    assert load_config(overrides={"method": "coop_atp", "dataset": "my_plants", "attributes": "leaf"})
    assert load_config(overrides={"method": "coop", "dataset": "my_plants"})  # words only for *_atp
    with pytest.raises(ConfigError, match="dataset 'my_target'"):
        load_config(overrides={"method": "coop_atp", "protocol": "cross_dataset", "targets": "eurosat,my_target"})
    with pytest.raises(ConfigError, match="attributes"):
        load_config(overrides={"method": "coop_atp", "attributes": "color,,shape"})
    with pytest.raises(ConfigError, match="n_att"):
        load_config(overrides={"method": "coop_atp", "n_att": -1})


def test_block_per_image_context_equals_one_block_per_context(tiny_cfg):
    """CoCoOp+ATPrompt's use: a context per image ``[B, n_ctx, d]`` gives ``[B, k, d]``, row b the
    block of context b (attribute parts shared)."""
    method = CoOpATP(make_trainer(tiny_cfg(method="coop_atp", attributes="playfulness,energy", n_ctx=2)))
    ctx = torch.randn(3, 2, 32)
    blocks = method.attributes(ctx, "eurosat")
    assert blocks.shape == (3, 2 * 2 + 3 + 2, 32)  # play+fulness, energy: 3 word tokens
    for b in range(3):
        assert torch.equal(blocks[b], method.attributes(ctx[b], "eurosat"))
