"""``python -m streaming_t2v_core``: see :mod:`streaming_t2v_core.cli`."""
from .cli import main

raise SystemExit(main())
