"""``python -m dropkit`` runs the dropkit command."""

import sys

try:
    from dropkit.app.cli import main
except KeyboardInterrupt:  # a Ctrl-C after the start-up handler is gone, while the command module loads
    sys.stderr.write("dropkit: interrupted while starting; nothing was written\n")
    raise SystemExit(130) from None

raise SystemExit(main())
