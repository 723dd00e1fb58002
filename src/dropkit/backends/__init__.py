"""Kernels behind dropkit's ops.

Each backend describes what it provides in one :class:`dropkit.backends.contract.Backend`
record (``BACKEND`` in its module): its limits and one callable per kernel, or an explicit
``NOT_PROVIDED``. :mod:`.contract` states every kernel's signature and formula; :mod:`.reference`
is the oracle (torch operations, every kernel), :mod:`.cpu` the native C kernels and
:mod:`.triton` the GPU kernels (with :mod:`.triton_bcast`, :mod:`.triton_noise`,
:mod:`.triton_norm` and :mod:`.triton_attention`). Only :mod:`dropkit.ops` calls them.
"""
