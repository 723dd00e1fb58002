"""``python -m dropkit`` runs the dropkit command."""

import sys

try:
    from dropkit.cli import main
except KeyboardInterrupt:  # the package is loaded; a Ctrl-C while the command module loads
    sys.stderr.write("dropkit: interrupted while starting; nothing was written\n")
    raise SystemExit(130) from None

raise SystemExit(main())
