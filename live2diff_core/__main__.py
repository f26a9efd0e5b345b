"""``python -m live2diff_core``: see :mod:`live2diff_core.cli`."""
from .cli import main

raise SystemExit(main())
