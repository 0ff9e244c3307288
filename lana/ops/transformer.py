"""Transformer candidates: ``vit`` blocks, bottleneck transformers ``bot_trans`` and ``lambda`` layers.

Paper ranges: ``vit`` depth d in {1, 2}, width w in {32, ..., 1024}, heads h in {4, 8, 16};
``bot_trans`` (4 heads) and ``lambda`` with expansion e in {1/4, 1/2, 1, 2, 3, 4}.

Attention over every position of an early, high-resolution layer would be quadratic in 10^4 tokens, so
``vit`` embeds patches (at most 256 tokens) and resizes back, and ``bot_trans`` attends to keys and values
pooled to at most 256 positions (queries keep full resolution).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from lana.ops._blocks import ConvBnAct, Residual, Resize, hidden_width, spatial_pool
from lana.ops._registry import register_family
from lana.spec import OpSpec, Shape

MAX_TOKENS = 256
VIT_DEPTHS = (1, 2)
VIT_WIDTHS = (32, 64, 128, 256, 512, 1024)
VIT_HEADS = (4, 8, 16)
EXPANSIONS = (1 / 4, 1 / 2, 1, 2, 3, 4)


class Attention(nn.Module):
    """Multi-head self-attention on (B, N, D) tokens, written with matmuls so it exports anywhere."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(),
                                 nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _patch(height: int, width: int, stride: int) -> int:
    patch = stride
    while math.ceil(height / patch) * math.ceil(width / patch) > MAX_TOKENS:
        patch *= 2
    return patch


class ViTOp(nn.Module):
    """Patch embedding, ``d`` transformer blocks, 1x1 projection, resize to the output grid."""

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        (cin, h, w), (cout, oh, ow) = spec.in_shape, spec.out_shape
        dim, heads, depth = int(spec.param("w")), int(spec.param("h")), int(spec.param("d"))
        patch = _patch(h, w, spec.stride)
        self.embed = nn.Conv2d(cin, dim, patch, patch)
        grid = ((h - patch) // patch + 1, (w - patch) // patch + 1)
        self.grid = grid
        self.pos = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.out = ConvBnAct(dim, cout, 1, act=None)
        self.resize = Resize((oh, ow))
        self.residual = spec.in_shape == spec.out_shape and spec.stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        b, d = t.shape[0], t.shape[1]
        t = self.norm(self.blocks(t.flatten(2).transpose(1, 2) + self.pos))
        y = self.resize(self.out(t.transpose(1, 2).reshape(b, d, self.grid[0], self.grid[1])))
        return y + x if self.residual else y


class SpatialAttention(nn.Module):
    """4-head attention over a feature map; keys/values pooled to at most MAX_TOKENS positions."""

    def __init__(self, channels: int, heads: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.heads, self.scale = heads, (channels // heads) ** -0.5
        self.q = nn.Conv2d(channels, channels, 1, bias=False)
        self.kv = nn.Conv2d(channels, 2 * channels, 1, bias=False)
        r = 1
        while math.ceil(size[0] / r) * math.ceil(size[1] / r) > MAX_TOKENS:
            r *= 2
        self.kv_pool = spatial_pool(r)
        self.pos = nn.Parameter(torch.zeros(1, channels, size[0], size[1]))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x + self.pos
        q = self.q(x).reshape(b, self.heads, c // self.heads, h * w)
        k, v = self.kv(self.kv_pool(x)).flatten(2).chunk(2, dim=1)
        k = k.reshape(b, self.heads, c // self.heads, -1)
        v = v.reshape(b, self.heads, c // self.heads, -1)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)  # b, h, n_q, n_kv
        return (v @ attn.transpose(-2, -1)).reshape(b, c, h, w)


class LambdaLayer(nn.Module):
    """Lambda layer (content lambda + local position lambdas of radius ``r``), 4 heads, k = 16, u = 1."""

    def __init__(self, channels: int, heads: int = 4, dim_k: int = 16, r: int = 5) -> None:
        super().__init__()
        self.heads, self.dim_k, self.dim_v = heads, dim_k, channels // heads
        self.q = nn.Conv2d(channels, dim_k * heads, 1, bias=False)
        self.q_bn = nn.BatchNorm2d(dim_k * heads)
        self.k = nn.Conv2d(channels, dim_k, 1, bias=False)
        self.v = nn.Conv2d(channels, self.dim_v, 1, bias=False)
        self.v_bn = nn.BatchNorm2d(self.dim_v)
        self.pos = nn.Conv3d(1, dim_k, (1, r, r), padding=(0, r // 2, r // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.q_bn(self.q(x)).reshape(b, self.heads, self.dim_k, h * w)
        k = self.k(x).reshape(b, self.dim_k, h * w).softmax(dim=-1)
        v = self.v_bn(self.v(x))
        v_flat = v.reshape(b, self.dim_v, h * w)
        content = k @ v_flat.transpose(1, 2)  # b, k, v
        y_c = torch.einsum("bhkn,bkv->bhvn", q, content)
        position = self.pos(v.unsqueeze(1)).reshape(b, self.dim_k, self.dim_v, h * w)
        y_p = torch.einsum("bhkn,bkvn->bhvn", q, position)
        return (y_c + y_p).reshape(b, self.heads * self.dim_v, h, w)


def _bottleneck(spec: OpSpec, mixer: type[nn.Module]) -> nn.Module:
    cin, cout = spec.in_shape[0], spec.out_shape[0]
    mid = hidden_width(cout, float(spec.param("e")), divisor=4)
    oh, ow = spec.out_shape[1:]
    body = nn.Sequential(
        ConvBnAct(cin, mid, 1),
        spatial_pool(spec.stride),
        Resize((oh, ow)),
        mixer(mid, 4, (oh, ow)) if mixer is SpatialAttention else mixer(mid),
        nn.BatchNorm2d(mid), nn.ReLU(),
        ConvBnAct(mid, cout, 1, act=None),
    )
    return Residual(body, spec, project=True, act=nn.ReLU)


def vit_variants(in_shape: Shape, out_shape: Shape, stride: int):
    for d, w, h in itertools.product(VIT_DEPTHS, VIT_WIDTHS, VIT_HEADS):
        yield {"d": d, "w": w, "h": h}


def expansion_variants(in_shape: Shape, out_shape: Shape, stride: int):
    for e in EXPANSIONS:
        yield {"e": e}


register_family("vit", variants=vit_variants, paper_name="ViT",
                description="ViT blocks on patches (<=256 tokens), resized back")(ViTOp)
register_family("bot_trans", variants=expansion_variants, paper_name="bot_trans",
                description="bottleneck transformer: 1x1, 4-head MHSA, 1x1 + shortcut")(
    lambda spec: _bottleneck(spec, SpatialAttention))
register_family("lambda", variants=expansion_variants, paper_name="lambda",
                description="lambda bottleneck: 1x1, lambda layer, 1x1 + shortcut")(
    lambda spec: _bottleneck(spec, LambdaLayer))
