"""Run under torchrun by tests/test_dtensor.py: every supported member of the family on DTensors
of each placement, compared bit for bit with the one-process call on the full tensor.

Writes ``{case: "ok" | error text}`` (rank 0) to ``--out``.
"""

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import Partial, Replicate, Shard, distribute_tensor, init_device_mesh

sys.path.insert(0, str(Path(__file__).parent))
import dropkit  # noqa: E402
import dropkit.functional as F  # noqa: E402
import dropkit.ops  # noqa: E402
from family_members import MEMBERS  # noqa: E402

SUPPORTED = [
    "functional.dropout", "functional.dropout[shared_dims]", "functional.dropout1d", "functional.dropout2d",
    "functional.dropout3d", "functional.drop_path", "functional.locked_dropout",
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "DropPath", "StochasticDepth", "LockedDropout",
    "MCDropout", "functional.scaled_dot_product_attention",
    "functional.alpha_dropout", "functional.feature_alpha_dropout", "AlphaDropout", "FeatureAlphaDropout",
    "functional.gaussian_dropout", "functional.gaussian_noise", "GaussianDropout", "GaussianNoise",
    "functional.dropout_add_norm", "functional.drop_block2d", "functional.drop_block3d", "DropBlock2d",
    "DropBlock3d",
]
# Supported too, but compared to rounding in concrete_cases: torch's transcendental functions.
TO_ROUNDING = ["functional.concrete_dropout"]
REFUSED = sorted(set(MEMBERS) - set(SUPPORTED) - set(TO_ROUNDING))


def placements_for(mesh, ndim):
    if mesh.ndim == 1:
        return [(Replicate(),)] + [(Shard(d),) for d in range(ndim)]
    return [(Shard(0), Shard(1)), (Replicate(), Shard(ndim - 1)), (Shard(0), Shard(0)),
            (Shard(1), Replicate())]


def compare(call, x, mesh, placements, seed=5):
    want = x.clone().requires_grad_()
    expected = call(want, seed)
    weight = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
    (expected * weight).sum().backward()
    dx = distribute_tensor(x, mesh, list(placements)).requires_grad_()
    try:
        got, error = call(dx, seed), None
    except Exception as exc:  # every rank must learn of it before the next collective
        got, error = None, exc
    failed = torch.tensor([error is not None], dtype=torch.int64)
    dist.all_reduce(failed)
    if int(failed):
        return f"failed on {int(failed)} rank(s): {error!r}"
    if tuple(got.placements) != tuple(placements):
        return f"placements {got.placements} != {placements}"
    full = got.full_tensor()
    if not torch.equal(full, expected.detach()):
        return "forward differs"
    (full * weight).sum().backward()
    if not torch.equal(dx.grad.full_tensor(), want.grad):
        return "gradient differs"
    return "ok"


def partial_case(mesh, world):
    """Partial: every rank applies the same mask to its partial value (p = 0.5: exact sums)."""
    parts = [torch.randint(-8, 8, (6, 4)).float() for _ in range(world)]
    full = torch.stack(parts).sum(0)
    local = parts[dist.get_rank()]
    from torch.distributed.tensor import DTensor

    d = DTensor.from_local(local, mesh, [Partial()], run_check=False)
    out = {}
    for name, call in {"dropout": lambda t: F.dropout(t, 0.5, seed=9),
                       "drop_path": lambda t: F.drop_path(t, 0.5, seed=9)}.items():
        y = call(d)
        ok = y.placements[0].is_partial() and torch.equal(y.full_tensor(), call(full))
        out[f"Partial/{name}"] = "ok" if ok else "differs"
    # Gaussian dropout is linear too: the sum of the ranks' products, to rounding.
    y = F.gaussian_dropout(d, 0.3, seed=9)
    want = F.gaussian_dropout(full, 0.3, seed=9)
    ok = y.placements[0].is_partial() and torch.allclose(y.full_tensor(), want, rtol=1e-6, atol=1e-5)
    out["Partial/gaussian_dropout"] = "ok" if ok else "differs"
    # Affine or additive: refused, never applied once per rank.
    for name, call in {"alpha_dropout": lambda t: F.alpha_dropout(t, 0.3, seed=9),
                       "feature_alpha_dropout": lambda t: F.feature_alpha_dropout(t, 0.3, seed=9),
                       "gaussian_noise": lambda t: F.gaussian_noise(t, 0.3, seed=9)}.items():
        try:
            call(d)
            out[f"Partial/{name} refused"] = "not refused"
        except TypeError as exc:
            out[f"Partial/{name} refused"] = "ok" if "not linear" in str(exc) else repr(exc)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    torch.manual_seed(0)
    results = {}
    meshes = [init_device_mesh("cpu", (world,))]
    if world == 4:  # named: global_batch_cases uses it as a data-parallel x tensor-parallel mesh
        meshes.append(init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp")))
    for mesh in meshes:
        tag = "x".join(map(str, mesh.shape))
        for name in SUPPORTED:
            call, shape = MEMBERS[name]
            x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
            for placements in placements_for(mesh, len(shape)):
                if name == "functional.scaled_dot_product_attention" and any(
                        isinstance(p, Shard) and p.dim >= 2 for p in placements):
                    continue  # shards of batch and head dims only (refused below)
                key = f"{tag}/{name}/{placements}"
                try:
                    results[key] = compare(call, x, mesh, placements)
                except Exception as exc:  # recorded, and reported by the test
                    results[key] = f"{type(exc).__name__}: {exc}"
        uneven = torch.randn(7, 5, generator=torch.Generator().manual_seed(4))
        for placements in placements_for(mesh, 2):
            results[f"{tag}/uneven/{placements}"] = compare(
                lambda t, s: F.dropout(t, 0.3, seed=s, offset=64), uneven, mesh, placements)
    mesh = meshes[0]
    results.update(partial_case(mesh, world))
    for name in REFUSED:
        call, shape = MEMBERS[name]
        d = distribute_tensor(torch.randn(shape), mesh, [Replicate()])
        try:
            call(d, 5)
            results[f"refused/{name}"] = "not refused"
        except (TypeError, RuntimeError) as exc:
            results[f"refused/{name}"] = "ok" if "dtensor" in str(exc).lower() else f"unclear: {exc}"
    try:
        call, shape = MEMBERS["functional.scaled_dot_product_attention"]
        call(distribute_tensor(torch.randn(shape), mesh, [Shard(2)]), 5)
        results["refused/attention Shard(L)"] = "not refused"
    except TypeError as exc:
        results["refused/attention Shard(L)"] = "ok" if "batch and head dims" in str(exc) else str(exc)
    # Ranks seeded differently: refused, never per-rank masks.
    torch.manual_seed(dist.get_rank())
    try:
        dropkit.Dropout(0.3)(distribute_tensor(torch.ones(4, 4), mesh, [Replicate()]))
        results["per-rank seeds"] = "not refused"
    except RuntimeError as exc:
        results["per-rank seeds"] = "ok" if "different stream positions" in str(exc) else str(exc)
    # A seeded layer advances by the global count on every rank.
    layer = dropkit.Dropout(0.3, seed=2)
    layer(distribute_tensor(torch.ones(10, 4), mesh, [Shard(0)]))
    results["global advance"] = "ok" if layer.stream_state()["offset"] == 10 else str(layer.stream_state())
    # seed_streams / seed_model: the replicated seed is the same on the TP mesh and works;
    # a layer given the sharded seed holds another position on each rank, and is refused.
    from dropkit.distributed import seed_model, seed_streams

    streams = seed_streams(7, tensor_parallel_group=mesh.get_group())
    model = torch.nn.Sequential(dropkit.Dropout(0.3), dropkit.Dropout(0.3))
    seeds = seed_model(model, streams)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(8))
    y = model(distribute_tensor(x, mesh, [Shard(1)])).full_tensor()
    expected = F.dropout(F.dropout(x, 0.3, seed=seeds["0"]), 0.3, seed=seeds["1"])
    results["seed_model replicated"] = "ok" if torch.equal(y, expected) else f"differs {seeds}"
    seed_model(model, streams, sharded=["1"])
    try:
        model(distribute_tensor(x, mesh, [Shard(1)]))
        results["seed_model sharded"] = "not refused"
    except RuntimeError as exc:
        results["seed_model sharded"] = "ok" if "different stream positions" in str(exc) else str(exc)
    results.update(global_batch_cases(mesh, meshes[1] if world == 4 else None))
    for m in meshes:
        results.update(fused_cases(m))
    results.update(weight_cases(mesh))
    for m in meshes:
        results.update(drop_block_cases(m))
        results.update(concrete_cases(m))
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        merged = {k: v for r, res in enumerate(gathered) for k, v in res.items() if v != "ok" or r == 0}
        torch.save(merged, args.out)
    dist.barrier()  # every rank done with its groups before any tears them down
    dist.destroy_process_group()
    # The results are written. Leave without the interpreter's finalization, where a gloo thread
    # still joinable at exit can abort the process (torch's defect; the test retries it too).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def ulp_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to the rounding of a float32 sum of terms of order 1 (absolute 1e-6)."""
    return torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def fused_cases(mesh) -> dict:
    """dropout_add_norm on DTensors: y and h as in one process, bit for bit, for shards of every
    dim (the last one gathered for the norm); the gradients of x and residual bit for bit (to
    about 1 ulp for RMS norm over a sharded dim), those of a replicated weight and bias to the
    rounding of their sums across shards."""
    results = {}
    g = torch.Generator().manual_seed(6)
    x, r = torch.randn(4, 6, 8, generator=g), torch.randn(4, 6, 8, generator=g)
    w, b = torch.randn(8, generator=g), torch.randn(8, generator=g)
    for norm in ("layer", "rms"):
        for placements in placements_for(mesh, 3):
            leaves = [t.clone().requires_grad_() for t in (x, r, w, b)]
            want_y, want_h = F.dropout_add_norm(*leaves, p=0.3, seed=4, norm=norm, prenorm=True)
            (want_y * x + want_h).sum().backward()
            dx, dr = (distribute_tensor(t, mesh, list(placements)).requires_grad_() for t in (x, r))
            dw, db = (distribute_tensor(t, mesh, [Replicate()] * mesh.ndim).requires_grad_() for t in (w, b))
            y, h = F.dropout_add_norm(dx, dr, dw, db, p=0.3, seed=4, norm=norm, prenorm=True)
            ok = tuple(y.placements) == tuple(placements) and tuple(h.placements) == tuple(placements)
            ok = ok and torch.equal(y.full_tensor(), want_y) and torch.equal(h.full_tensor(), want_h)
            weights = distribute_tensor(x, mesh, list(placements))
            (y * weights + h).sum().backward()
            # RMS norm with its dim sharded: torch's gather of h rounds the gradient's sum of the
            # two paths into h otherwise than one process, by about 1 ulp of its terms.
            same = torch.equal if norm == "layer" or not any(
                isinstance(p, Shard) and p.dim == 2 for p in placements) else ulp_close
            ok = ok and all(same(d.grad.full_tensor(), t.grad) for d, t in ((dx, leaves[0]), (dr, leaves[1])))
            ok = ok and all(torch.allclose(d.grad.full_tensor(), t.grad, rtol=1e-5, atol=1e-5)
                            for d, t in ((dw, leaves[2]), (db, leaves[3])))
            tag = "x".join(map(str, mesh.shape))
            results[f"{tag}/dropout_add_norm {norm}/{placements}"] = "ok" if ok else "differs"
    return results


def concrete_cases(mesh) -> dict:
    """Concrete dropout: the output and the gradients of x and p_logit (plain, or a replicated
    DTensor) as one process's, to rounding (torch's log and sigmoid round their vector and
    scalar paths apart); with shared dims too; and on plain rows inside global_batch."""
    from dropkit.distributed import global_batch

    def close(a, b):
        return torch.allclose(a, b, rtol=1e-5, atol=1e-6)

    results = {}
    tag = "x".join(map(str, mesh.shape))
    x = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(13))
    for shared in ((), (2,)):
        logit = torch.tensor(-1.2, requires_grad=True)
        whole = x.clone().requires_grad_()
        want = F.concrete_dropout(whole, logit, shared_dims=shared, seed=8)
        (want * x).sum().backward()
        for placements in placements_for(mesh, 3):
            for kind in ("plain", "DTensor"):
                p = torch.tensor(-1.2, requires_grad=True)
                p_in = p if kind == "plain" else distribute_tensor(p.detach(), mesh, [Replicate()] * mesh.ndim
                                                                   ).requires_grad_()
                dx = distribute_tensor(x, mesh, list(placements)).requires_grad_()
                y = F.concrete_dropout(dx, p_in, shared_dims=shared, seed=8)
                (y * distribute_tensor(x, mesh, list(placements))).sum().backward()
                p_grad = p.grad if kind == "plain" else p_in.grad.full_tensor()
                ok = tuple(y.placements) == tuple(placements) and close(y.full_tensor(), want.detach())
                ok = ok and close(dx.grad.full_tensor(), whole.grad) and close(p_grad, logit.grad)
                key = f"{tag}/concrete shared {shared} p_logit {kind}/{placements}"
                results[key] = "ok" if ok else "differs"
    if mesh.ndim == 1:
        world, rank = dist.get_world_size(), dist.get_rank()
        rows = torch.randn(2 * world, 5, generator=torch.Generator().manual_seed(14))
        want = F.concrete_dropout(rows, torch.tensor(-1.0), seed=3).chunk(world)[rank]
        with global_batch(mesh, 0):
            got = F.concrete_dropout(rows.chunk(world)[rank], torch.tensor(-1.0), seed=3)
        ok = type(got) is torch.Tensor and close(got, want)
        results["global_batch/concrete"] = "ok" if ok else "differs"
    return results


def drop_block_cases(mesh) -> dict:
    """DropBlock with blocks across shard borders, shared channels and torchvision's eps: the
    one-process output and gradient, bit for bit (the kept count is the global one)."""
    results = {}
    x = torch.randn(2, 4, 9, 7, generator=torch.Generator().manual_seed(12))
    calls = {
        "b4": lambda t, s: F.drop_block2d(t, 0.4, 4, seed=s),
        "shared channels": lambda t, s: F.drop_block2d(t, 0.4, (3, 2), shared_channels=True, seed=s),
        "eps": lambda t, s: dropkit.DropBlock2d(0.4, 3, eps=1e-6, seed=s)(t),
        "eps shared channels": lambda t, s: dropkit.DropBlock2d(0.4, 3, eps=50.0, shared_channels=True,
                                                                seed=s)(t),
    }
    for name, call in calls.items():
        for placements in placements_for(mesh, 4):
            tag = "x".join(map(str, mesh.shape))
            results[f"{tag}/drop_block {name}/{placements}"] = compare(call, x, mesh, placements)
    return results


def weight_cases(mesh) -> dict:
    """Dropout of a DTensor weight: embedding dropout (vocabulary rows) and DropConnect on a
    linear layer whose parameters are DTensors give the one-process outputs bit for bit (small
    integers and p = 0.5, so every sum is exact whatever order the sharded matmul takes)."""
    results = {}
    g = torch.Generator().manual_seed(6)
    w, idx = torch.randn(10, 4, generator=g), torch.tensor([[1, 3, 9], [0, 5, 5]])
    want = F.embedding_dropout(idx, w, 0.4, seed=3)
    lin, x = nn.Linear(4, 3), torch.randint(-4, 4, (2, 4), generator=g).float()
    with torch.no_grad():
        lin.weight.copy_(torch.randint(-4, 4, (3, 4), generator=g))
        lin.bias.copy_(torch.randint(-4, 4, (3,), generator=g))
    want_dc = dropkit.DropConnect(lin, 0.5, seed=2)(x)
    for placement in (Replicate(), Shard(0), Shard(1)):
        d_idx, d_w = distribute_tensor(idx, mesh, [Replicate()]), distribute_tensor(w, mesh, [placement])
        y = F.embedding_dropout(d_idx, d_w, 0.4, seed=3).full_tensor()
        results[f"weight/embedding_dropout {placement}"] = "ok" if torch.equal(y, want) else "differs"
        copy = nn.Linear(4, 3)
        copy.weight = nn.Parameter(distribute_tensor(lin.weight.detach(), mesh, [placement]))
        copy.bias = nn.Parameter(distribute_tensor(lin.bias.detach(), mesh, [Replicate()]))
        y = dropkit.DropConnect(copy, 0.5, seed=2)(distribute_tensor(x, mesh, [Replicate()])).full_tensor()
        results[f"weight/DropConnect {placement}"] = "ok" if torch.equal(y, want_dc) else "differs"
    return results


def global_batch_cases(mesh, mesh2) -> dict:
    """dropkit.distributed.global_batch: each rank's rows of the batch get their rows of the
    one-process mask, for plain tensors and for DTensors on the rest of a 2-D mesh."""
    from dropkit.distributed import global_batch

    results = {}
    world, rank = dist.get_world_size(), dist.get_rank()
    x = torch.randn(2 * world, 3, 6, generator=torch.Generator().manual_seed(9))
    rows = x.chunk(world)[rank]
    for name in ("functional.dropout", "functional.dropout[shared_dims]", "functional.dropout1d",
                 "functional.drop_path", "Dropout", "DropPath", "functional.alpha_dropout",
                 "functional.feature_alpha_dropout", "functional.gaussian_dropout", "GaussianNoise",
                 "functional.drop_block2d"):
        call = MEMBERS[name][0]
        whole = x.clone().requires_grad_()
        expected = call(whole, 5)
        expected.sum().backward()
        local = rows.clone().requires_grad_()
        with global_batch(mesh, 0):
            got = call(local, 5)
        ok = type(got) is torch.Tensor and torch.equal(got, expected.detach().chunk(world)[rank])
        got.sum().backward()
        ok = ok and torch.equal(local.grad, whole.grad.chunk(world)[rank])
        results[f"global_batch/{name}"] = "ok" if ok else "differs"
    # Weights are not shards of the batch: every rank draws their whole masks, and the stream
    # advances as in one process (the dropout drawn after them from the same generator agrees).
    w = torch.randn(10, 6, generator=torch.Generator().manual_seed(2))
    lin = nn.Linear(6, 4)
    idx = torch.randint(0, 10, (2 * world, 3), generator=torch.Generator().manual_seed(3))

    def weights_then_dropout(i):
        gen = torch.Generator().manual_seed(7)
        e = F.embedding_dropout(i, w, 0.4, generator=gen)
        e = F.drop_connect(lin, (e,), p=0.3, generator=gen)
        return F.dropout(e, 0.3, generator=gen)

    want = weights_then_dropout(idx).chunk(world)[rank]
    with global_batch(mesh, 0):
        got = weights_then_dropout(idx.chunk(world)[rank])
    results["global_batch/weights then dropout"] = "ok" if torch.equal(got, want) else "differs"
    if mesh2 is not None:  # FSDP x TP: 2 data-parallel ranks, each a DTensor over a 2-rank TP mesh
        dp_rank = mesh2.get_local_rank("dp")
        for placement in (Replicate(), Shard(2)):
            local = distribute_tensor(x.chunk(2)[dp_rank], mesh2["tp"], [placement])
            with global_batch(mesh2, "dp"):
                got = F.dropout(local, 0.3, seed=5)
            want = F.dropout(x, 0.3, seed=5).chunk(2)[dp_rank]
            ok = got.placements == (placement,) and torch.equal(got.full_tensor(), want)
            results[f"global_batch/2-D {placement}"] = "ok" if ok else "differs"
    refusals = {
        "concrete on a DTensor": lambda: F.concrete_dropout(distribute_tensor(rows, mesh, [Replicate()]),
                                                             torch.tensor(-1.0), seed=1),
        "low-level op": lambda: dropkit.ops.dropout(rows.contiguous(), 1, 0, 2**31, 2.0, "bits"),
        "nested": lambda: global_batch(mesh, 0).__enter__(),
        "unequal batches": lambda: F.dropout(x[: rank + 1], 0.3, seed=1),
        "mesh dim name": lambda: global_batch(mesh, "dp").__enter__(),
    }
    expected_errors = {
        "concrete on a DTensor": (TypeError, "global_batch"),
        "low-level op": (TypeError, "global-batch"), "nested": (RuntimeError, "nest"),
        "unequal batches": (ValueError, "same batch size"), "mesh dim name": (ValueError, "dp"),
    }
    for name, fn in refusals.items():
        kind, words = expected_errors[name]
        try:
            if name == "mesh dim name":
                fn()
            else:
                with global_batch(mesh, 0):
                    fn()
            results[f"global_batch/refused {name}"] = "not refused"
        except kind as exc:
            results[f"global_batch/refused {name}"] = "ok" if words in str(exc) else repr(exc)
    return results


if __name__ == "__main__":
    main()
