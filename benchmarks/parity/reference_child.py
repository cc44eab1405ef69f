"""Run the authors' ``train.py`` (github.com/zhengli97/ATPrompt, on Dassl) once, on the CPU, with an
OpenAI-format ToyCLIP-ViT file: every adaptation is made here at run time, none in their code.

Usage (by ``run.py``; the working directory holds ``templates/`` and ``anchor_weights/``):
    python reference_child.py ATPROMPT_DIR DASSL_DIR WEIGHTS.pt HEAD_WIDTH -- <train.py arguments>

Adaptations (the README lists them):
1. ``clip._download`` returns ``WEIGHTS.pt`` (a local file instead of OpenAI's URL);
2. OpenAI's builder gets ``HEAD_WIDTH``-wide attention heads (ToyCLIP-ViT: 32, not 64) in the
   text transformer and the image ViT;
3. its QuickGELU computes GELU (ToyCLIP-ViT was trained with GELU);
4. ``.cuda()`` of tensors and modules is the identity (CPU);
5. ``Tensor.half()`` is the identity (fp16 matmuls are not a CPU path; the run is fp32);
6. ``torch.load`` reads Dassl's own checkpoints with ``weights_only=False`` (torch >= 2.6 default
   refuses their pickled optimiser state);
7. torch's ``LRScheduler`` accepts (and ignores) the ``verbose`` argument Dassl's warm-up scheduler
   passes (torch 2.13 removed it);
8. CLIP's ``encode_text`` runs without autograd. Of the trainers run here only Stage I
   (``CoOp_Pretrain_Anchor``) calls it, once, for the descriptions' target features, on a second
   copy of CLIP whose weights keep ``requires_grad``: its MSE loss then backpropagates every step
   through that copy's text encoder for every description (120 sequences on a toy dataset), into
   gradients no optimiser reads. The anchor's gradient is the same either way (the targets are
   constants of the loss); without the graph a Stage I step costs a fraction of the CPU time.
"""
from __future__ import annotations

import functools
import os
import runpy
import sys


def main() -> None:
    atprompt, dassl, weights, head_width = sys.argv[1:5]
    head_width = int(head_width)
    train_args = sys.argv[sys.argv.index("--") + 1:]
    sys.path[:0] = [atprompt, dassl]

    import anchoropt.torchvision_compat  # noqa: F401  (this torch build's torchvision, before Dassl imports it)
    import torch
    import torch.nn.functional as F

    torch.nn.Module.cuda = lambda self, *a, **k: self                      # 4
    torch.Tensor.cuda = lambda self, *a, **k: self                         # 4
    torch.Tensor.half = lambda self, *a, **k: self                         # 5
    torch.load = functools.partial(torch.load, weights_only=False)         # 6
    scheduler_init = torch.optim.lr_scheduler.LRScheduler.__init__

    def scheduler_without_verbose(self, optimizer, last_epoch=-1, verbose=None):  # 7
        scheduler_init(self, optimizer, last_epoch)
    torch.optim.lr_scheduler.LRScheduler.__init__ = scheduler_without_verbose

    from clip import clip as ref_clip
    from clip import model as ref_model

    ref_clip._download = lambda url, root=None: weights                   # 1
    ref_model.QuickGELU.forward = lambda self, x: F.gelu(x)               # 3
    encode_text = ref_model.CLIP.encode_text

    @functools.wraps(encode_text)
    def encode_text_without_graph(self, text):                            # 8
        with torch.no_grad():
            return encode_text(self, text)
    ref_model.CLIP.encode_text = encode_text_without_graph

    def heads_by_width(init):                                             # 2 (image ViT)
        @functools.wraps(init)
        def wrapped(self, *args, **kwargs):
            kwargs["heads"] = kwargs["width"] // head_width
            return init(self, *args, **kwargs)
        return wrapped

    for name in ("VisionTransformer", "VisionTransformer_MaPLe"):
        cls = getattr(ref_model, name, None)
        if cls is not None:
            cls.__init__ = heads_by_width(cls.__init__)
    clip_init = ref_model.CLIP.__init__

    @functools.wraps(clip_init)
    def clip_with_heads(self, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                        context_length, vocab_size, transformer_width, transformer_heads, *rest, **kwargs):
        return clip_init(self, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                         context_length, vocab_size, transformer_width, transformer_width // head_width,  # 2 (text)
                         *rest, **kwargs)
    ref_model.CLIP.__init__ = clip_with_heads

    sys.argv = [os.path.join(atprompt, "train.py"), *train_args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
