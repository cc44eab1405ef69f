"""CoOp (Zhou et al., IJCV 2022): shared soft tokens before the class name, trained with CE."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anchoropt.engine import EpochCallback, Stepper, Trainer
from anchoropt.methods.base import Method, soft_token_init
from anchoropt.prompts import CoOpPrompt, clip_logits
from anchoropt.task import EvalSet


class CoOp(Method):
    """CoOp: shared soft tokens trained with cross-entropy on the few-shot images."""

    name = "coop"

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        self.prompt = CoOpPrompt(soft_token_init(trainer)).to(trainer.device)
        self.stepper = Stepper.sgd(list(self.prompt.parameters()), self.cfg.lr, self.cfg)

    def modules(self) -> list[nn.Module]:
        return [self.prompt]

    def text(self, classnames: list[str], dataset: str | None = None) -> torch.Tensor:
        """Text features ``[C, D]`` of ``classnames`` in ``dataset``'s prompt (default the task's;
        CoOp's is the same for every dataset, ATPrompt's holds the dataset's attribute words)."""
        return self.prompt(self.trainer.encoder, self.trainer.tokens(classnames, self.prompt.n_block,
                                                                      self.prompt.rest)).float()

    def logits(self, feats: torch.Tensor, classnames: list[str], dataset: str | None = None) -> torch.Tensor:
        """Logits ``[B, C]`` of image features ``[B, D]`` over ``classnames`` of ``dataset``."""
        return clip_logits(feats, self.text(classnames, dataset), self.trainer.logit_scale)

    def prompt_step(self, batch) -> tuple[torch.Tensor, Stepper]:
        feats, labels = batch
        return F.cross_entropy(self.logits(feats, self.trainer.task.classnames), labels), self.stepper

    def fit(self, on_epoch: EpochCallback | None = None) -> None:
        self.train()
        t = self.trainer
        t.run_loop(self.name, self.cfg.epochs,
                   lambda epoch: [lambda b=b: self.prompt_step(b) for b in t.image_batches(epoch)],
                   [self.stepper], on_epoch)
        self.eval()

    def scores(self, ev: EvalSet) -> dict[str, torch.Tensor]:
        return {"acc": self.logits(ev.features.to(self.trainer.device), ev.classnames, ev.dataset)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.prompt.state_dict().items()}

    def updates(self) -> dict[str, int]:
        return {"prompt": self.stepper.updates}


