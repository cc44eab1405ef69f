"""anchoropt: tune and benchmark AnchorOPT prompt learning on CLIP (arXiv 2511.21188)."""
from anchoropt import torchvision_compat  # noqa: F401  (must precede any open_clip import)

__version__ = "0.1.0"
