"""anchoropt: tune and benchmark AnchorOPT prompt learning on CLIP (arXiv 2511.21188).

Importing the package loads no torch: the command line's help, ``report`` and ``data list`` stay
fast. Modules that import open_clip import :mod:`anchoropt.torchvision_compat` first.
"""

__version__ = "0.1.0"
