"""The interface every method implements, and zero-shot CLIP.

A :class:`Method` is built from a :class:`~anchoropt.engine.Trainer` (the run's backbone, task
and loop), trains with :meth:`Method.fit`, scores a class set with :meth:`Method.scores` (the
method's inference rule) and hands its learned tensors to :meth:`Method.tensors`.
"""
from __future__ import annotations

from typing import ClassVar, Iterator

import torch
from torch import nn

from anchoropt.config import ConfigError
from anchoropt.engine import EpochCallback, Trainer, stream_generator
from anchoropt.prompts import clip_logits, normal_init, phrase_init
from anchoropt.task import EvalSet
from anchoropt.text import prompt_classname


class Method:
    """One interface for every method. Subclasses set :attr:`name` and override what they train."""

    name: ClassVar[str]
    #: a ``ctx_init`` phrase sets ``n_ctx`` to its BPE token count (CoOp); MaPLe keeps ``n_ctx``
    phrase_sets_n_ctx: ClassVar[bool] = True

    def __init__(self, trainer: Trainer):
        self.trainer, self.cfg = trainer, trainer.cfg

    @classmethod
    def check(cls, cfg, backbone) -> None:
        """Refuse a backbone the method cannot run on, before any image is encoded.

        Raises:
            ConfigError: one line naming the backbone (none here; MaPLe needs a ViT)."""

    def modules(self) -> list[nn.Module]:
        """The learners (``nn.Module``) whose tensors the method trains."""
        return []

    def train(self) -> None:
        for m in self.modules():
            m.train()

    def eval(self) -> None:
        for m in self.modules():
            m.eval()

    def fit(self, on_epoch: EpochCallback | None = None) -> None:
        """Train; ``on_epoch(epoch, {"phase", "loss"})`` after each epoch of each phase."""

    def batches(self, epoch: int) -> Iterator:
        """The training batches of ``epoch`` the method's steps take: cached features
        (:meth:`Trainer.image_batches`); a method that prompts the image tower takes pixels."""
        return self.trainer.image_batches(epoch)

    def scores(self, ev: EvalSet) -> dict[str, torch.Tensor]:
        """Logits ``[N, C]`` of the images of ``ev`` over its classes, by score name: ``acc`` is
        the method's prediction; others (``acc_anchor``) are extra diagnostics."""
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """Learned tensors by name, on CPU (``prompts.pt``)."""
        return {}

    def updates(self) -> dict[str, int]:
        """Optimiser updates per trainable group (recorded, so schedules compare by step count)."""
        return {}

    def training_info(self) -> dict:
        """What else the record's ``training`` entry keeps of the run (AnchorOPT: ``stage1``)."""
        return {}

    def load_tensors(self, saved: dict[str, torch.Tensor]) -> None:
        """Put a run's saved tensors (``prompts.pt``, as :meth:`tensors` names them) back into the
        learners, so that :meth:`scores` scores as the run did (``anchoropt eval``).

        Raises:
            ConfigError: the saved tensors are not this method's (other names or shapes: another
                method, ``n_ctx``, ``n_anchors``, backbone width, ...), naming the first difference.
        """
        expected = self.tensors()
        if set(saved) != set(expected):
            raise ConfigError(f"the saved tensors ({', '.join(sorted(saved))}) are not those of method {self.name} "
                              f"({', '.join(sorted(expected))})")
        for key, value in expected.items():
            if tuple(saved[key].shape) != tuple(value.shape):
                raise ConfigError(f"saved tensor {key} has shape {tuple(saved[key].shape)}, method {self.name}'s "
                                  f"{tuple(value.shape)}")
        with torch.no_grad():
            self.put_tensors(saved)

    def put_tensors(self, saved: dict[str, torch.Tensor]) -> None:
        """Copy ``saved`` into the learners: each module's state keys, unprefixed as :meth:`tensors`
        merges them; a method that renames or stacks tensors there extends this."""
        for module in self.modules():
            for key, value in module.state_dict(keep_vars=True).items():
                if key in saved:
                    value.data.copy_(saved[key])


class ZeroShot(Method):
    """Zero-shot CLIP: the dataset's hand-written template, nothing trained (SPEC section 2)."""

    name = "zeroshot"
    phrase_sets_n_ctx = False

    def scores(self, ev: EvalSet) -> dict[str, torch.Tensor]:
        backbone = self.trainer.backbone
        tokens = backbone.tokenizer([ev.template.format(prompt_classname(c)) for c in ev.classnames])
        text = backbone.model.encode_text(tokens.to(self.trainer.device)).float()
        return {"acc": clip_logits(ev.features.to(self.trainer.device), text, self.trainer.logit_scale)}


def soft_token_init(trainer: Trainer) -> torch.Tensor:
    """Initial soft tokens ``[M, d]``: the embeddings of ``ctx_init``'s tokens when given (CoOp),
    else N(0, 0.02) from the run's ``soft_tokens`` stream with M = ``n_ctx``."""
    cfg = trainer.cfg
    if cfg.ctx_init:
        return phrase_init(cfg.ctx_init, trainer.backbone.tokenizer, trainer.backbone.model.token_embedding)
    return normal_init(cfg.n_ctx, trainer.width, stream_generator(cfg.seed, "soft_tokens"))


