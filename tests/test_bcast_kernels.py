"""The native kernels for masks with broadcast dims, alpha dropout and DropBlock, bit for bit
against the reference backend: every SIMD path, 1 and 2 threads, all float dtypes, masks shared
over every combination of dims, 1- and 0-sized dims, channels_last, strided and expanded inputs."""

import itertools
import math

import pytest
import torch

from dropkit.backends import reference
from dropkit.functional.alpha import alpha_affine, alpha_dropout, feature_alpha_dropout
from dropkit.functional.dropblock import drop_block2d, drop_block3d, dropblock_gamma
from dropkit.rng import keep_threshold

cpu = pytest.importorskip("dropkit.backends.cpu")
pytestmark = pytest.mark.skipif(cpu.load_error() is not None, reason=f"native kernel: {cpu.load_error()}")

ISAS = cpu.available_isas()
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
STORAGES = ["bits", "bool", "seed"]
STREAMS = [(0, 0), (2**64 - 1, 2**32 - 3), (987654321987, 2**64 - 5)]
THRESHOLDS = [0, 429496730, 2**31, 2**32]
SCALE = 1 / 0.7


@pytest.fixture(params=ISAS)
def isa(request):
    cpu.set_isa(request.param)
    yield request.param
    cpu.set_isa(None)


@pytest.fixture(params=[1, 2])
def threads(request):
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def as_bits(t: torch.Tensor) -> torch.Tensor:
    view = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()]
    return t.contiguous().view(view)


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal bit for bit (+0.0 and -0.0 differ); NaNs only need to be NaN in both."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if actual.is_floating_point():
        nan = torch.isnan(expected)
        assert torch.equal(torch.isnan(actual), nan)
        assert torch.equal(as_bits(actual)[~nan], as_bits(expected)[~nan])
    else:
        assert torch.equal(actual, expected)


def make_input(shape, dtype, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    flat = x.view(-1)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-300, 7e4])
    k = min(flat.numel(), specials.numel())
    flat[:k] = specials[:k]
    return x.to(dtype)


def mask_shapes(shape):
    """Every mask shape over ``shape``: each subset of dims shared."""
    for shared in itertools.product([False, True], repeat=len(shape)):
        yield tuple(1 if s else n for s, n in zip(shared, shape, strict=True))


def layouts(shape, dtype, seed=0):
    """The same values as contiguous, channels_last (rank 4), transposed, sliced and expanded tensors."""
    x = make_input(shape, dtype, seed)
    yield "contiguous", x
    if x.dim() == 4:
        yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    if x.dim() >= 2:
        yield "transposed", x.transpose(0, -1).contiguous().transpose(0, -1)
        big = make_input((*shape[:-1], 2 * shape[-1] + 1), dtype, seed)
        yield "sliced", big[..., 1::2]
    if x.dim() >= 1 and shape[0] > 1:
        yield "expanded", x[:1].expand(shape)


def check_bcast(x, ms, seed, offset, threshold, storage):
    y, saved = cpu.bcast_dropout_forward(x, ms, seed, offset, threshold, SCALE, storage)
    y_ref, saved_ref = reference.bcast_dropout_forward(x, ms, seed, offset, threshold, SCALE, storage)
    assert_same(y, y_ref)
    assert torch.equal(saved.reshape(-1), saved_ref.reshape(-1))
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        assert y.stride() == x.stride()
    g = x.flip(0) if x.dim() else x  # another strided tensor of the same shape
    g_in = cpu.bcast_dropout_backward(g, saved, ms, seed, offset, threshold, SCALE, storage)
    g_ref = reference.bcast_dropout_backward(g, saved_ref, ms, seed, offset, threshold, SCALE, storage)
    assert_same(g_in, g_ref)


SHAPES = [(), (5,), (3, 5, 7), (2, 0, 3), (1, 4, 1, 6), (4, 3, 5, 6), (3, 67, 5), (2, 3, 2, 3, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bcast_dropout_every_mask_shape_and_layout(isa, shape, dtype):
    for i, ms in enumerate(mask_shapes(shape)):
        for j, (_, x) in enumerate(layouts(shape, dtype, seed=i)):
            seed, offset = STREAMS[(i + j) % len(STREAMS)]
            threshold = THRESHOLDS[(i + 2 * j) % len(THRESHOLDS)]
            check_bcast(x, ms, seed, offset, threshold, STORAGES[(i + j) % 3])


@pytest.mark.parametrize("storage", STORAGES)
def test_bcast_dropout_threads(isa, threads, storage):
    # more than 2 * 2**17 elements so that two threads run; ragged everywhere
    shape = (33, 67, 131)
    dtypes = (torch.float32, torch.bfloat16, torch.float64)
    for k, ms in enumerate([(33, 1, 1), (1, 67, 131), (33, 67, 1), (33, 1, 131)]):
        _, x = list(itertools.islice(layouts(shape, dtypes[k % 3], seed=k), 3))[k % 3]
        check_bcast(x, ms, *STREAMS[k % 3], 429496730, storage)


def test_bcast_channels_last_large(isa, threads):
    x = make_input((8, 40, 30, 31), torch.float32).contiguous(memory_format=torch.channels_last)
    for ms in [(8, 40, 1, 1), (1, 40, 1, 1), (8, 1, 30, 31)]:
        check_bcast(x, ms, 3, 5, 2**31, "bits")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels", [3, 64, 70, 1000])
def test_channels_last_rows_share_one_mask_pattern(isa, threads, dtype, channels):
    # channels_last with a per-channel mask runs whole rows of C elements as one periodic stretch;
    # two threads split it inside a row.
    x = make_input((3, channels, 11, 13), dtype).contiguous(memory_format=torch.channels_last)
    ms = (3, channels, 1, 1)
    check_bcast(x, ms, 7, 2**32 - 9, 429496730, "bits")
    a, b, alpha_p = alpha_affine(0.3)
    args = (ms, 7, 2**32 - 9, keep_threshold(0.3))
    y, _ = cpu.alpha_forward(x, *args, a, b, a * alpha_p + b, "seed")
    assert_same(y, reference.alpha_forward(x, *args, a, b, a * alpha_p + b, "seed")[0])


@pytest.mark.parametrize("shape", [(5,), (3, 5, 7), (2, 0, 3), (4, 3, 5, 6), (33, 67, 131)], ids=str)
def test_redraw_is_the_seed_storage_forward_and_backward(isa, threads, shape):
    # The mask drawn in the call and kept nowhere: forward and backward are the same map.
    for i, ms in enumerate(mask_shapes(shape)):
        for j, (_, x) in enumerate(itertools.islice(layouts(shape, torch.float32, seed=i), 3)):
            seed, offset = STREAMS[(i + j) % len(STREAMS)]
            args = (ms, seed, offset, THRESHOLDS[(i + j) % len(THRESHOLDS)], SCALE)
            y_ref, saved = reference.bcast_dropout_forward(x, *args[:4], SCALE, "seed")
            assert_same(cpu.bcast_dropout_redraw(x, *args), y_ref)
            g = x.flip(0) if x.dim() else x
            assert_same(cpu.bcast_dropout_redraw(g, *args),
                        reference.bcast_dropout_backward(g, saved, *args[:4], SCALE, "seed"))


def test_bcast_bad_mask_shape():
    with pytest.raises(ValueError, match="mask_shape"):
        cpu.bcast_dropout_forward(torch.ones(2, 3), (2, 2), 0, 0, 0, 1.0, "bits")
    with pytest.raises(ValueError, match="mask_shape"):
        cpu.bcast_dropout_forward(torch.ones(2, 3), (2,), 0, 0, 0, 1.0, "bits")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7,), (4, 3, 5), (3, 4, 5, 6), (2, 0, 3), (33, 67, 131)], ids=str)
def test_alpha_matches_reference(isa, threads, dtype, shape):
    for i, ms in enumerate([shape, (*shape[:2], *(1,) * (len(shape) - 2))]):
        for j, (_, x) in enumerate(itertools.islice(layouts(shape, dtype, seed=i), 3)):
            p = (0.1, 0.5, 0.9)[(i + j) % 3]
            a, b, alpha_p = alpha_affine(p)
            args = (ms, *STREAMS[j % 3], keep_threshold(p))
            storage = STORAGES[(i + j) % 3]
            y, saved = cpu.alpha_forward(x, *args, a, b, a * alpha_p + b, storage)
            y_ref, saved_ref = reference.alpha_forward(x, *args, a, b, a * alpha_p + b, storage)
            assert_same(y, y_ref)
            assert torch.equal(saved.reshape(-1), saved_ref.reshape(-1))
            g = cpu.alpha_backward(x, saved, *args, a, storage)
            assert_same(g, reference.alpha_backward(x, saved_ref, *args, a, storage))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_alpha_reference_is_the_functional_form(dtype):
    x = make_input((6, 5, 4), dtype).requires_grad_()
    for feature in (False, True):
        p = 0.3
        a, b, alpha_p = alpha_affine(p)
        ms = (6, 5, 1) if feature else (6, 5, 4)
        y = (feature_alpha_dropout if feature else alpha_dropout)(x, p, seed=4, offset=9)
        y_ref, saved = reference.alpha_forward(
            x.detach(), ms, 4, 9, keep_threshold(p), a, b, a * alpha_p + b, "bits"
        )
        assert_same(y.detach(), y_ref)
        g = make_input((6, 5, 4), dtype, seed=1)
        (grad,) = torch.autograd.grad(y, x, g)
        assert_same(grad, reference.alpha_backward(g, saved, ms, 4, 9, keep_threshold(p), a, "bits"))


def dropblock_cases():
    yield (2, 3, 14, 13), (5, 4), 0.2
    yield (3, 4, 7, 7), (7, 7), 0.1
    yield (2, 2, 9, 1), (3, 1), 0.3
    yield (1, 3, 5, 6, 7), (2, 3, 4), 0.25
    yield (2, 2, 4, 4, 4), (1, 1, 1), 0.5
    yield (4, 16, 64, 64), (7, 7), 0.1  # two threads
    yield (2, 3, 5, 130), (2, 7), 0.3  # rows of three 64-bit words
    yield (3, 2, 9, 64), (4, 64), 0.4  # one word per row, the block as wide as the map
    yield (2, 2, 3, 200), (3, 65), 0.6  # a block wider than one word
    yield (1, 5, 3, 4, 70), (2, 1, 33), 0.3  # 3-D with multi-word rows
    yield (8, 1000, 5, 7), (2, 4), 0.2  # planes of 35 bits (not whole bytes), two threads
    yield (2, 3, 11, 9), (6, 4), 0.95  # dense seeds


@pytest.mark.parametrize("case", list(dropblock_cases()), ids=str)
@pytest.mark.parametrize("shared", [False, True])
def test_dropblock_matches_reference(isa, threads, case, shared):
    shape, blocks, p = case
    threshold = keep_threshold(dropblock_gamma(p, blocks, shape[2:]))
    keep, kept = cpu.dropblock_mask(shape, blocks, 11, 2**64 - 3, threshold, shared)
    keep_ref, kept_ref = reference.dropblock_mask(shape, blocks, 11, 2**64 - 3, threshold, shared)
    assert torch.equal(keep, keep_ref) and kept == kept_ref
    for k, dtype in enumerate(DTYPES if math.prod(shape) < 2**17 else DTYPES[:1]):
        storage = STORAGES[k % 3]
        layout = list(layouts(shape, dtype, seed=k))[k % 3][1]
        y, saved, scale = cpu.dropblock_forward(layout, blocks, 11, 5, threshold, shared, storage)
        y_ref, saved_ref, scale_ref = reference.dropblock_forward(
            layout, blocks, 11, 5, threshold, shared, storage
        )
        assert scale == scale_ref
        assert_same(y, y_ref)
        assert torch.equal(saved.reshape(-1), saved_ref.reshape(-1))
        g = cpu.dropblock_backward(layout, saved, blocks, 11, 5, threshold, shared, scale, storage)
        g_ref = reference.dropblock_backward(
            layout, saved_ref, blocks, 11, 5, threshold, shared, scale, storage
        )
        assert_same(g, g_ref)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dropblock_equals_the_functional_form(dims, dtype):
    g = torch.Generator().manual_seed(dims)
    for trial in range(12):
        spatial = tuple(int(v) for v in torch.randint(1, 12, (dims,), generator=g))
        blocks = tuple(min(b, f) for b, f in zip((3, 5, 2)[:dims], spatial, strict=True))
        x = make_input((2, 3, *spatial), dtype, seed=trial).requires_grad_()
        p = (0.05, 0.3, 0.7)[trial % 3]
        shared = trial % 2 == 1
        fn = drop_block2d if dims == 2 else drop_block3d
        y = fn(x, p, blocks, seed=trial, offset=2, shared_channels=shared)
        threshold = keep_threshold(dropblock_gamma(p, blocks, spatial))
        y_cpu, saved, scale = cpu.dropblock_forward(x.detach(), blocks, trial, 2, threshold, shared, "bits")
        assert_same(y_cpu, y.detach())
        gy = make_input(x.shape, dtype, seed=100 + trial)
        (grad,) = torch.autograd.grad(y, x, gy)
        assert_same(
            cpu.dropblock_backward(gy, saved, blocks, trial, 2, threshold, shared, scale, "bits"), grad
        )


def test_dropblock_everything_dropped_and_nothing_dropped():
    x = make_input((2, 3, 6, 6), torch.float32)
    y, _, scale = cpu.dropblock_forward(x, (3, 3), 0, 0, 2**32, False, "bits")
    assert scale == 0.0 and torch.equal(as_bits(y), torch.zeros_like(as_bits(y)))
    y, _, scale = cpu.dropblock_forward(x, (3, 3), 0, 0, 0, False, "seed")
    assert scale == 1.0 and torch.equal(as_bits(y), as_bits(x * 1.0))
    assert math.prod(cpu.dropblock_mask((0, 3, 6, 6), (3, 3), 0, 0, 5)[0].shape) == 0



@pytest.mark.parametrize("row", [3, 9, 65, 1024, 1025])
def test_bcast_rows_under_one_mask_bit(isa, threads, row):
    # Innermost rows shorter than a mask byte or word, the mask varying along them or not, rows
    # starting inside a mask byte; at 2 threads the split falls inside a row. Rows of up to 1024
    # elements with one bit each are run several to a 2048-element tile; 1025 is one past that.
    small = (3, 11, row)
    for i, ms in enumerate(mask_shapes(small)):
        for j, (_, x) in enumerate(itertools.islice(layouts(small, torch.float32, seed=i), 4)):
            check_bcast(x, ms, *STREAMS[(i + j) % 3], THRESHOLDS[1 + (i + j) % 2], STORAGES[(i + j) % 3])
    if threads == 2:
        rows = (2**18 + 37) // row
        x = make_input((rows, row), torch.float32)
        for ms in [(1, row), (rows, 1)]:
            check_bcast(x, ms, 5, 3, 2**31, "bits")
        x = make_input((2, row, 3, rows // 6 + 1), torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        check_bcast(x, (2, row, 1, 1), 7, 2**32 - 9, 2**31, "seed")
