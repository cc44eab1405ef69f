"""AnchorOPT's schedules as named loops (SPEC section 6); ``TrainConfig.schedule`` picks one.

- :func:`two_stage`: Stage I (anchors, SPEC section 3) to completion, anchors frozen, then
  Stage II (soft tokens + position matrix, SPEC section 4) for ``epochs``.
- :func:`one_stage`: over ``epochs``, blocks of ``period`` anchor steps (Stage I loss, prompt
  frozen) alternate with blocks of ``period`` prompt steps (Stage II loss, anchors frozen).

The one-stage budget rule ``one_stage_budget`` says what one-stage spends its steps on:
``equal_prompt_updates`` (default) gives the prompt as many updates as two-stage's Stage II
(``epochs`` x batches per epoch) and the anchors as many again, interleaved;
``equal_total_steps`` keeps the steps per epoch of two-stage's Stage II and splits them
between anchors and prompt (about half each). Both counts are recorded (``training.updates``).
"""
from __future__ import annotations

from itertools import count
from typing import TYPE_CHECKING, Callable

from anchoropt.config import ONE_STAGE_BUDGETS
from anchoropt.engine import EpochCallback

if TYPE_CHECKING:
    from anchoropt.methods import AnchorOPTMethod

def two_stage(method: "AnchorOPTMethod", on_epoch: EpochCallback | None = None) -> None:
    """Stage I to completion (or from the Stage I cache), then Stage II with the anchors frozen;
    ``on_epoch`` gets the epochs of both (phase ``stage1``, then ``stage2``)."""
    method.fit_anchors(on_epoch)
    t = method.trainer
    t.run_loop("stage2", method.cfg.epochs,
               lambda epoch: [lambda b=b: method.prompt_step(b) for b in method.batches(epoch)],
               [method.prompt_stepper], on_epoch)


def one_stage_plan(epochs: int, batches: int, period: int, budget: str) -> list[list[str]]:
    """The phase (``"anchor"`` or ``"prompt"``) of every step, per epoch.

    ``batches`` is the image batches per epoch. ``equal_prompt_updates``: each epoch runs every
    batch as a prompt step, in blocks of ``period``, each block after as many anchor steps.
    ``equal_total_steps``: each epoch runs ``batches`` steps, alternating blocks of ``period``
    anchor and prompt steps counted over the whole run (anchors first).

    Raises:
        ValueError: an unknown budget rule.
    """
    if budget == "equal_prompt_updates":
        epoch = []
        for start in range(0, batches, period):
            block = min(period, batches - start)
            epoch += ["anchor"] * block + ["prompt"] * block
        return [list(epoch) for _ in range(epochs)]
    if budget == "equal_total_steps":
        steps = count()
        return [["anchor" if (next(steps) // period) % 2 == 0 else "prompt" for _ in range(batches)]
                for _ in range(epochs)]
    raise ValueError(f"unknown one_stage_budget '{budget}' (expected one of {', '.join(ONE_STAGE_BUDGETS)})")


def one_stage(method: "AnchorOPTMethod", on_epoch: EpochCallback | None = None) -> None:
    """Alternate anchor and prompt steps as :func:`one_stage_plan` lays them out. Prompt steps take
    the image batches in order, continuing into the next epoch's shuffle when a budget leaves
    some unused."""
    t, cfg = method.trainer, method.cfg
    plan = one_stage_plan(cfg.epochs, t.steps_per_epoch, cfg.period, cfg.one_stage_budget)
    batches = (b for epoch in count() for b in method.batches(epoch))

    def steps(epoch: int) -> list[Callable]:
        return [method.anchor_step if phase == "anchor" else (lambda b=next(batches): method.prompt_step(b))
                for phase in plan[epoch]]
    t.run_loop("one_stage", cfg.epochs, steps, [method.prompt_stepper, method.anchor_stepper], on_epoch)


SCHEDULES: dict[str, Callable[["AnchorOPTMethod", EpochCallback | None], None]] = {
    "two_stage": two_stage, "one_stage": one_stage}
