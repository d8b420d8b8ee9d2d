"""``python -m codomyrmex_orchestration`` is the console script."""

from codomyrmex_orchestration.cli import main

raise SystemExit(main())
