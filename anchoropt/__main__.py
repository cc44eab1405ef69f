"""``python -m anchoropt`` is the ``anchoropt`` command."""
from anchoropt.cli import main

main()
