"""No tensor that a native or Triton kernel cannot read reaches one.

Every member of the family (tests/family_members.py) gets each kind of tensor torch offers:
fake tensors (FakeTensorMode, as torch.compile's tracing uses) and meta tensors give outputs of
the shape the member gives on real data, with no kernel run; nested, sparse and quantized
tensors are refused with a TypeError naming the kind; torch.func's vmap and grad wrappers
either work or are refused the same way. DTensor inputs are tested in tests/test_dtensor.py,
with a process group. A crash (segmentation fault) fails the whole run.
"""

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from dropkit import _torch
from dropkit.ops._inputs import plain
from family_members import MEMBERS, NAMES

SEED = 5


def _expected_shape(name):
    call, shape = MEMBERS[name]
    return call(torch.randn(shape), SEED).shape


@pytest.mark.parametrize("name", NAMES)
def test_fake_tensors_give_shapes_without_a_kernel(name):
    call, shape = MEMBERS[name]
    with FakeTensorMode():
        y = call(torch.randn(shape), SEED)
    assert isinstance(y, FakeTensor)
    assert y.shape == _expected_shape(name)


@pytest.mark.parametrize("name", NAMES)
def test_fake_inputs_to_real_layers(name):
    """A model built on real tensors, run on fake inputs (shape inference, memory estimates)."""
    call, shape = MEMBERS[name]
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    x = mode.from_tensor(torch.randn(shape))
    with mode:
        y = call(x, SEED)
    assert isinstance(y, FakeTensor) and y.shape == _expected_shape(name)


@pytest.mark.parametrize("name", NAMES)
def test_meta_tensors_give_shapes(name):
    call, shape = MEMBERS[name]
    with torch.device("meta"):
        y = call(torch.randn(shape), SEED)
    assert y.device.type == "meta" and y.shape == _expected_shape(name)


def test_drop_path_on_a_fake_tensor_keeps_its_graph():
    import dropkit

    with FakeTensorMode():
        layer = dropkit.DropPath(0.3, seed=1)
        x = torch.randn(6, 3, requires_grad=True)
        layer(x).sum().backward()
        assert isinstance(x.grad, FakeTensor) and x.grad.shape == x.shape


def _nested(shape):
    return torch.nested.nested_tensor([torch.randn(shape), torch.randn(shape)], layout=torch.jagged)


def _nested_strided(shape):
    return torch.nested.nested_tensor([torch.randn(shape), torch.randn(shape)])


REFUSED = {
    "nested": _nested,
    "nested_strided": _nested_strided,
    "sparse": lambda shape: torch.randn(shape).to_sparse(),
    "quantized": lambda shape: torch.quantize_per_tensor(torch.randn(shape), 0.1, 0, torch.qint8),
}


# Weight dropout drops the wrapped module's weights: its input goes to that module (nn.Linear
# takes nested and sparse inputs of its own), never to a dropkit kernel.
INPUT_NOT_READ = {"DropConnect", "functional.drop_connect"}


@pytest.mark.parametrize("kind", sorted(REFUSED))
@pytest.mark.parametrize("name", sorted(set(NAMES) - INPUT_NOT_READ))
def test_unreadable_kinds_are_refused_with_a_type_error(name, kind):
    call, shape = MEMBERS[name]
    x = REFUSED[kind](shape)
    # A member whose other tensor arguments torch checks first (attention's expand, the norm's
    # quantizer) is refused by torch's RuntimeError before any dropkit kernel.
    with pytest.raises((TypeError, RuntimeError), match="(?i)nested|layout|sparse|dense|quantiz|floating"):
        call(x, SEED)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_works_or_is_refused(name):
    call, shape = MEMBERS[name]
    try:
        y = torch.vmap(lambda t: call(t, SEED))(torch.randn(3, *shape))
    except TypeError as exc:
        assert "torch.func" in str(exc) and "functorch" in str(exc)
    except RuntimeError as exc:  # torch's own refusal, before any kernel
        assert re.search("functorch|vmap|data pointer", str(exc)), exc
    else:
        assert y.shape == (3, *_expected_shape(name))


@pytest.mark.parametrize("name", NAMES)
def test_func_grad_works_or_is_refused(name):
    call, shape = MEMBERS[name]
    x = torch.randn(shape)
    try:
        g = torch.func.grad(lambda t: call(t, SEED).sum())(x)
    except TypeError as exc:
        assert "torch.func" in str(exc) and "functorch" in str(exc)
    except RuntimeError as exc:  # torch's own refusal, before any kernel
        assert re.search("functorch|setup_context|data pointer", str(exc)), exc
    else:  # against torch.autograd on the same call
        x = x.clone().requires_grad_()
        call(x, SEED).sum().backward()
        torch.testing.assert_close(g, x.grad)


def test_tensor_kind_names_each_kind():
    assert _torch.tensor_kind(torch.ones(2)) == "dense"
    assert _torch.tensor_kind(torch.nn.Parameter(torch.ones(2))) == "dense"
    assert _torch.tensor_kind(torch.ones(2, device="meta")) == "meta"
    assert _torch.tensor_kind(torch.ones(2, 2).to_sparse_csr()) == "sparse"
    assert _torch.tensor_kind(_nested((2,))) == "nested"
    with FakeTensorMode():
        assert _torch.tensor_kind(torch.ones(2)) == "fake"
    torch.vmap(lambda t: _check_kind(t, "functorch"))(torch.ones(3, 2))


def _check_kind(t, kind):
    assert _torch.tensor_kind(t) == kind
    return t


def test_plain_refuses_a_subclass_with_its_own_dispatch():
    from torch.testing._internal.two_tensor import TwoTensor

    t = TwoTensor(torch.ones(3), torch.ones(3))
    with pytest.raises(TypeError, match="subclass TwoTensor"):
        plain(t, "dropout")
