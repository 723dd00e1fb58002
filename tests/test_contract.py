"""Every backend against the written contract (dropkit.backends.contract): each field filled, each
callable with the contract's parameters, limits declared, and routes chosen from the records."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pathlib
import re

import pytest
import torch

import dropkit
from dropkit.backends import contract
from dropkit.backends.contract import DEVICE, HOST, KERNELS, NOT_PROVIDED, Backend
from dropkit.ops import _dispatch


def _backends() -> list[Backend]:
    records = [importlib.import_module("dropkit.backends.reference").BACKEND,
               importlib.import_module("dropkit.backends.cpu").BACKEND]
    try:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        records.append(importlib.import_module("dropkit.backends.triton").BACKEND)
    except ImportError:
        pass
    return records


BACKENDS = _backends()


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request) -> Backend:
    return request.param


def test_every_field_is_filled(backend):
    fields = {f.name for f in dataclasses.fields(Backend)}
    assert set(KERNELS) <= fields
    for kernel in KERNELS:
        value = getattr(backend, kernel)
        assert value is NOT_PROVIDED or callable(value), (backend.name, kernel, value)
    assert backend.position in (HOST, DEVICE)
    assert backend.dtypes is None or all(isinstance(d, torch.dtype) and d.is_floating_point
                                         for d in backend.dtypes)
    assert backend.max_dims is None or (isinstance(backend.max_dims, int) and backend.max_dims >= 1)


def test_signatures_match_the_contract(backend):
    for kernel in KERNELS:
        fn = getattr(backend, kernel)
        if fn is NOT_PROVIDED:
            continue
        got = list(inspect.signature(fn).parameters)
        assert got == contract.parameters_of(kernel), (backend.name, kernel, got)


def test_the_reference_backend_provides_every_kernel_but_the_optional_ones():
    reference = BACKENDS[0]
    assert reference.name == "reference"
    optional = {"bcast_dropout_redraw", "fused_attention", "fused_norm"}
    assert {k for k in KERNELS if not reference.provides(k)} == optional
    assert reference.dtypes is None and reference.max_dims is None and reference.position == HOST


def test_the_native_backend_declares_the_limit_of_its_c_loop_nest():
    cpu = importlib.import_module("dropkit.backends.cpu")
    source = (pathlib.Path(cpu.__file__).parent / "dk_bcast.c").read_text()
    limits = [int(n) for n in re.findall(r"#define\s+DK_MAX_DIMS\s+(\d+)", source)]
    assert limits == [cpu.BACKEND.max_dims]


def test_describe_refuses_a_module_that_leaves_a_kernel_out():
    import types

    module = types.ModuleType("partial")
    module.keep_mask = lambda numel, seed, offset, threshold, device=None: None
    with pytest.raises(TypeError, match="pack_mask"):
        contract.describe(module, "partial", HOST, None, None)


def test_provides_names_an_unknown_kernel():
    with pytest.raises(ValueError, match="'dropout_fwd'"):
        BACKENDS[0].provides("dropout_fwd")


def test_a_kernel_a_backend_does_not_provide_runs_on_the_reference():
    # Every preferred backend that declines a kernel: the route for it is the reference backend.
    for backend in BACKENDS[1:]:
        if backend.error:
            continue
        name = "native" if backend.name == "cpu" else backend.name
        with dropkit.ops.use_backend(name):
            for kernel in KERNELS:
                chosen = _dispatch.route(kernel, "cpu", torch.float32)
                assert chosen is (backend if backend.provides(kernel) else _dispatch.REFERENCE), kernel
            # A dtype outside the backend's declared dtypes goes to the reference backend.
            if backend.dtypes is not None:
                assert _dispatch.route("dropout_forward", "cpu", torch.complex64) is _dispatch.REFERENCE


def test_shared_masks_past_the_declared_max_dims_match_the_reference():
    cpu = BACKENDS[1]
    if cpu.error:
        pytest.skip(cpu.error)
    limit = cpu.max_dims
    shape = (2,) * (limit + 1)  # more dims of size > 1 than the native kernels take
    x = torch.randn(shape)
    mask_shape = (2,) + (1,) * limit
    got = dropkit.ops.bcast_dropout(x, mask_shape, 3, 0, 2**31, 2.0, "bits")
    with dropkit.ops.use_backend("reference"):
        expected = dropkit.ops.bcast_dropout(x, mask_shape, 3, 0, 2**31, 2.0, "bits")
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match=f"at most {limit} dims"):
        cpu.bcast_dropout_forward(x, mask_shape, 3, 0, 2**31, 2.0, "bits")


def test_ops_never_probe_a_backend_module():
    ops_dir = pathlib.Path(dropkit.ops.__file__).parent
    for path in ops_dir.glob("*.py"):
        text = path.read_text()
        assert "hasattr(" not in text, path.name
        for name in re.findall(r"getattr\(\s*(\w+)", text):
            # thread-local state only: the forced backend, and whether a call runs shape-only
            assert name in ("_forced", "_state"), (path.name, name)
        assert "x.dim() <= 8" not in text and "_MAX_DIMS" not in text, path.name
