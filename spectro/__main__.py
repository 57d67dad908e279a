"""``python -m spectro`` — the same as the ``spectro`` console script."""

from spectro.cli import main

raise SystemExit(main())
