"""Attention processors that carry the sequence-parallel all-to-alls INSIDE the attention module's call.

PAB's broadcast hook wraps the attention module and, on a broadcast, returns the cached output without calling the
module; because these processors run inside that call, a broadcast skips their collectives by construction, and the
cached output is already in this rank's shard layout. Every rank takes the same broadcast decision (same timesteps,
same counters), so no collective is needed to agree on it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb

from .comm import all_gather, all_to_all
from .config import ParallelConfigError
from .sharding import TokenLayout


def _no_mask(attention_mask: torch.Tensor | None, where: str) -> None:
    if attention_mask is not None:
        raise NotImplementedError(f"{where}: attention masks are not supported under sequence parallel")


class DSPTemporalProcessor:
    r"""
    DSP around the attention over the sharded axis (Latte's temporal attention).

    Input is `[B*S, F/n, C]` (all spatial positions, this rank's frames). One all-to-all switches the sharded axis to
    `[B*S/n, F, C]`, the wrapped processor attends over all frames, one all-to-all switches back.
    """

    def __init__(self, inner: Any, group: dist.ProcessGroup) -> None:
        self.inner = inner
        self.group = group

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _no_mask(attention_mask, "DSP temporal attention")
        x = all_to_all(hidden_states, scatter_dim=0, gather_dim=1, group=self.group)
        out = self.inner(attn, x, encoder_hidden_states, None, temb)
        return all_to_all(out, scatter_dim=1, gather_dim=0, group=self.group)


class UlyssesAttnProcessor:
    r"""
    Ulysses self-attention for diffusers `Attention` modules whose input is sharded along `seq_dim`.

    q/k/v are projected locally, exchanged from sequence-sharded/all-heads to full-sequence/`heads/n`, attended, and
    exchanged back before the output projection.

    Args:
        group: the sequence-parallel group.
        seq_dim: 1 when the module's token axis is sharded; 0 when its batch axis is (Latte's spatial attention over
            frame-sharded input, where the "sequence" spread over ranks is the frames inside the batch axis).
        joint_text: CogVideoX layout: `encoder_hidden_states` are text tokens that every rank holds in full and that
            are concatenated in front of the video tokens. Their q/k/v are NOT exchanged: each rank takes its own
            heads of them, and their attention output is all-gathered over heads. RoPE applies to video tokens only.
        layout: when the video tokens were padded to a multiple of the ranks, the padding is masked out as keys.
    """

    def __init__(self, group: dist.ProcessGroup, seq_dim: int = 1, joint_text: bool = False,
                 layout: TokenLayout | None = None) -> None:
        if seq_dim not in (0, 1):
            raise ValueError(f"seq_dim must be 0 or 1, got {seq_dim}")
        self.group = group
        self.seq_dim = seq_dim
        self.joint_text = joint_text
        self.layout = layout

    @staticmethod
    def check_module(attn: torch.nn.Module, name: str, n: int) -> None:
        """Reject attention features this processor does not implement, before any collective is issued."""
        if attn.heads % n:
            raise ParallelConfigError(
                f"{name}: {attn.heads} attention heads are not divisible by sp_degree={n}; Ulysses splits heads "
                f"over ranks: use an sp_degree that divides {attn.heads}",
                "sp_degree",
            )
        unsupported = [
            feature
            for feature, present in (
                ("spatial_norm", getattr(attn, "spatial_norm", None) is not None),
                ("group_norm", getattr(attn, "group_norm", None) is not None),
                ("residual_connection", getattr(attn, "residual_connection", False)),
                ("rescale_output_factor", getattr(attn, "rescale_output_factor", 1.0) != 1.0),
                ("added kv projections", getattr(attn, "add_k_proj", None) is not None),
            )
            if present
        ]
        if unsupported:
            raise ParallelConfigError(f"{name}: Ulysses does not support attention with {', '.join(unsupported)}")

    def _to_heads(self, t: torch.Tensor, text_len: int) -> torch.Tensor:
        """[B, L, H, D] sequence-sharded -> [B', L', H/n, D] with the full sequence (text prefix kept in front)."""
        seq = all_to_all(t[:, text_len:], scatter_dim=2, gather_dim=self.seq_dim, group=self.group)
        if not text_len:
            return seq
        text = t[:, :text_len].chunk(dist.get_world_size(self.group), dim=2)[dist.get_rank(self.group)]
        return torch.cat([text, seq], dim=1)

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        _no_mask(attention_mask, "Ulysses attention")
        if encoder_hidden_states is not None and not self.joint_text:
            raise NotImplementedError("Ulysses attention wraps self-attention only; cross-attention runs locally")
        text_len = encoder_hidden_states.size(1) if self.joint_text else 0
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1) if self.joint_text else hidden_states
        batch, length, _ = x.shape
        query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, length, attn.heads, head_dim) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        query, key, value = (self._to_heads(t, text_len).transpose(1, 2) for t in (query, key, value))
        full = query.shape[2]
        valid = full if self.layout is None or not self.layout.padding else full - self.layout.padding
        if image_rotary_emb is not None:
            video = slice(text_len, valid)
            query[:, :, video] = apply_rotary_emb(query[:, :, video], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, video] = apply_rotary_emb(key[:, :, video], image_rotary_emb)
        mask = None
        if valid < full:  # padded video tokens must not be attended to
            mask = (torch.arange(full, device=query.device) < valid).view(1, 1, 1, full)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2)

        seq_out = all_to_all(out[:, text_len:], scatter_dim=self.seq_dim, gather_dim=2, group=self.group)
        if text_len:
            seq_out = torch.cat([all_gather(out[:, :text_len], dim=2, group=self.group), seq_out], dim=1)
        out = seq_out.reshape(batch, length, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if self.joint_text:
            return out[:, text_len:], out[:, :text_len]
        return out
