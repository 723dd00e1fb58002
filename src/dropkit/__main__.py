"""``python -m dropkit`` runs the dropkit command."""

from dropkit.cli import main

raise SystemExit(main())
