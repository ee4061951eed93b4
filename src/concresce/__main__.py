"""Entry point for ``python -m concresce``."""

from concresce._demo import main

raise SystemExit(main())
