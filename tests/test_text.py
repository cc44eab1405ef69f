"""Text encoder over token embeddings, truncation, over-long class names."""
import pytest
import torch

from anchoropt.text import ClassTokens, TextEncoder

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
