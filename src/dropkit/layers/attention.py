"""MultiheadAttention: torch.nn.MultiheadAttention with its attention dropout on dropkit's stream."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dropkit.functional._checks import check_floating
from dropkit.functional.attention import _sdpa
from dropkit.functional.dropout import apply_dropout
from dropkit.layers.dropout import Dropout

__all__ = ["MultiheadAttention"]


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """torch's MHA mask convention (bool True = masked out, float = added) as a float mask."""
    if mask is None or mask.is_floating_point():
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))


class MultiheadAttention(nn.MultiheadAttention):
    r"""A drop-in for ``torch.nn.MultiheadAttention`` whose attention dropout is dropkit's.

    .. math::
        \mathrm{MHA}(Q, K, V) = [\mathrm{head}_1, \dots, \mathrm{head}_h] W^O, \quad
        \mathrm{head}_i = \mathrm{dropout}_p\left(\mathrm{softmax}\left(
        \frac{Q W_i^Q (K W_i^K)^\top}{\sqrt{d_k}} + M\right)\right) V W_i^V

    (Vaswani et al., "Attention Is All You Need", NeurIPS 2017). Same constructor, parameters,
    ``state_dict`` keys, ``batch_first``, masks, ``need_weights`` / ``average_attn_weights`` and
    outputs as torch's class; the attention-probability dropout is drawn by the child module
    ``attn_dropout`` (a :class:`dropkit.Dropout` holding the rate), element ``i`` of the
    ``(N, heads, L, S)`` probabilities using stream word ``i`` as in
    :func:`dropkit.functional.scaled_dot_product_attention`. ``dropout`` reads and writes that
    child's rate. When the dropout is inactive (evaluation, or ``p = 0``) the computation is
    torch's own, bit for bit. :func:`dropkit.uncertainty.mc_dropout` switches ``attn_dropout``
    on alone, so MC dropout sees the attention dropout.

    Args:
        embed_dim: total dimension of the model.
        num_heads: number of parallel heads (``embed_dim`` must be divisible by it).
        dropout: attention dropout probability. Default: 0.0.
        bias: add bias to the input and output projections.
        add_bias_kv: add a learned bias to the key and value sequences.
        add_zero_attn: add a row of zeros to the key and value sequences.
        kdim: features of the keys (None: ``embed_dim``).
        vdim: features of the values (None: ``embed_dim``).
        batch_first: inputs and outputs are ``(N, L, E)`` instead of ``(L, N, E)``.
        device: where to create the parameters.
        dtype: dtype of the parameters.
        seed: give the attention dropout its own stream (kept in the state_dict).
        generator: draw seeds from this generator instead of torch's default one.

    Shape:
        query ``(L, N, E)`` (``(N, L, E)`` with ``batch_first``, ``(L, E)`` unbatched), key
        ``(S, N, kdim)``, value ``(S, N, vdim)``. Output ``(L, N, E)``; weights ``(N, L, S)``
        averaged over heads, or ``(N, heads, L, S)``.

    Examples:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> theirs = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)
        >>> ours = MultiheadAttention(8, 2, dropout=0.1, batch_first=True, seed=3)
        >>> _ = ours.load_state_dict(theirs.state_dict(), strict=False)
        >>> x = torch.randn(2, 5, 8)
        >>> torch.equal(ours.eval()(x, x, x)[0], theirs.eval()(x, x, x)[0])
        True
        >>> a = ours.train()(x, x, x)[0]
        >>> int(ours.attn_dropout.offset)  # 2 * 2 * 5 * 5 = 100 words: 25 blocks
        25
    """

    def _get_name(self) -> str:
        from dropkit._names import repr_name  # dropkit.MultiheadAttention, as for every dropkit layer

        return repr_name(self)

    def __init__(
        self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
        add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
        vdim: int | None = None, batch_first: bool = False, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None, *, seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        attn_dropout = Dropout(dropout, seed=seed, generator=generator)
        super().__init__(
            embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first,
            device=device, dtype=dtype,
        )
        self.__dict__.pop("_pending_dropout", None)
        self.attn_dropout = attn_dropout

    @property
    def dropout(self) -> float:  # type: ignore[override]
        """The attention dropout rate (``attn_dropout.p``)."""
        child = self._modules.get("attn_dropout")
        return self.__dict__.get("_pending_dropout", 0.0) if child is None else child.p

    @dropout.setter
    def dropout(self, p: float) -> None:
        child = self._modules.get("attn_dropout")
        if child is None:  # torch's constructor sets the rate before the child exists
            self.__dict__["_pending_dropout"] = p
        else:
            child.p = p  # checked by the child when set

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
        attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True, is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        drop = self.attn_dropout
        if not (drop.training and drop.p > 0.0):
            return super().forward(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        for t, name in ((query, "query"), (key, "key"), (value, "value")):
            check_floating(t, name)
        return self._dropout_forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                     average_attn_weights)

    def _project(self, query, key, value):
        """The input projections, in torch's ``(L, N, E)`` layout."""
        if self._qkv_same_embed_dim:
            if query is key and key is value:
                return F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
            weights = self.in_proj_weight.chunk(3)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        return tuple(F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases, strict=True))

    def _dropout_forward(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                         average_attn_weights):
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        length, batch, embed = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        q, k, v = self._project(query, key, value)
        dtype = q.dtype
        mask = _additive(attn_mask, dtype)
        if mask is not None:
            mask = mask.view(batch, heads, length, -1) if mask.dim() == 3 else mask.view(1, 1, length, -1)
        padding = _additive(key_padding_mask, dtype)
        if padding is not None:
            padding = padding.view(batch, 1, 1, -1)
            mask = padding if mask is None else mask + padding
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(1, batch, embed)])
            v = torch.cat([v, self.bias_v.expand(1, batch, embed)])
            mask = None if mask is None else F.pad(mask, (0, 1))
        q = q.reshape(length, batch, heads, head_dim).permute(1, 2, 0, 3)
        k = k.reshape(k.shape[0], batch, heads, head_dim).permute(1, 2, 0, 3)
        v = v.reshape(v.shape[0], batch, heads, head_dim).permute(1, 2, 0, 3)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(batch, heads, 1, head_dim)], dim=2)
            v = torch.cat([v, v.new_zeros(batch, heads, 1, head_dim)], dim=2)
            mask = None if mask is None else F.pad(mask, (0, 1))
        # The one place the layer's stream is read; the draw reserves the words it uses.
        stream = self.attn_dropout.stream()
        p = self.attn_dropout.p
        weights = None
        if need_weights:
            # torch returns the probabilities after dropout; they are the same words as below.
            scores = torch.matmul(q, k.transpose(-2, -1)) * head_dim**-0.5
            probs = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            drop = self.attn_dropout
            probs = probs.contiguous()
            dropped = apply_dropout(probs, drop._threshold, drop._scale, (), stream, "bits", False)
            out = torch.matmul(dropped, v)
            weights = dropped.mean(dim=1) if average_attn_weights else dropped
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = _sdpa(q, k, v, mask, p, False, None, False, stream)
        out = out.permute(2, 0, 1, 3).reshape(length, batch, embed)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights
