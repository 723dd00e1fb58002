"""The ``dropkit`` command, an application built on the library: ``demo``, ``train``, ``predict``
and ``bench``, with its data loading, training loop, reports, plots, model files and the demo's
models.

The library (``import dropkit``) never imports this package. Importing it installs the start-up
Ctrl-C handler (:mod:`dropkit.app._startup`, in the command only) and then loads torch and the
library under it, so a Ctrl-C while they load ends the command with one line and exit code 130.
"""

from dropkit.app import _startup  # isort: skip  (first: it installs the handler)
import dropkit.layers  # noqa: E402, F401  (loads torch and the library under the handler)
import dropkit.uncertainty  # noqa: E402, F401

_startup.end()
