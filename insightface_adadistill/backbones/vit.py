"""Vision Transformer for 112x112 faces, state-dict compatible with arcface_torch `backbones/vit.py`.

Reference: Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021), in the face-recognition
form of arcface_torch: a 9x9 patch conv gives a 12x12 grid of 144 tokens (the last 4 pixels of each
side are dropped), learned position embeddings and no class token, pre-norm blocks with a ReLU6 MLP
and qkv without bias, and a `feature` head that flattens all 144 tokens:
Linear(144 D -> D, no bias) -> BN1d(D, eps 2e-5) -> Linear(D -> E, no bias) -> BN1d(E, eps 2e-5).
In training with `mask_ratio > 0` a random subset of each sample's tokens skips the blocks and is
replaced by the learned `mask_token` after the final norm.

Key names, shapes and parameter order equal the host's, so a host ViT loads with `strict=True` and
optimizer state (matched by position) passes both ways.
Differences from the host, all invisible in the state dict:
- no timm: drop path and truncated-normal init are written here with torch;
- precision follows our `fp16` flag (`base.FaceBackbone`), while the host autocasts qkv, proj and the
  MLP on CUDA even with fp16=False. On CPU the host runs in fp32, as we do with fp16=False;
- the attention core always runs in fp32, as in the host, via `scaled_dot_product_attention`.
See docs/backbones.md for the registered sizes.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from insightface_adadistill.backbones.base import FaceBackbone, reject_dropout
from insightface_adadistill.backbones.spec import BackboneSpec, register_variant

HEAD_BN_EPS = 2e-5  # the host's `feature.1` / `feature.3`
NORM_LAYERS = ("ln", "bn")


def _autocast_off(device_type: str) -> ContextManager:
    """Autocast switched off, on devices that have autocast (the meta device used for shapes has none)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al., ECCV 2016): zero a residual branch per sample with prob. `p`.

    Kept samples are scaled by 1 / (1 - p), so the expectation equals the eval-mode output.
    x: (B, ...) -> same shape.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, 1)
    return x * mask / keep


class DropPath(nn.Module):
    """`drop_path` as a module (no parameters, so no state-dict entry)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)


class TokenBatchNorm(nn.Module):
    """The host's `norm_layer="bn"`: BatchNorm1d over the token axis, keys `<name>.bn.*` of shape (N,).

    (B, N, D) is read by BatchNorm1d as N channels of length D, so it needs all N tokens (no masking).
    """

    def __init__(self, num_tokens: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_tokens)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x)


def _norm(kind: str, dim: int, num_tokens: int) -> nn.Module:
    return nn.LayerNorm(dim) if kind == "ln" else TokenBatchNorm(num_tokens)


class Mlp(nn.Module):
    """fc1 (D -> hidden) -> ReLU6 -> dropout -> fc2 (hidden -> D) -> dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention with a bias-free qkv projection; softmax(q k^T / sqrt(d)) v in fp32."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).float().unbind(0)  # 3 x (B, heads, N, D / heads)
        # fp32 even under autocast: the host keeps the attention scores out of half precision
        with _autocast_off(x.device.type):
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)  # (B, N, D)
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(attn(norm1(x))), then x + DropPath(mlp(norm2(x)))."""

    def __init__(self, dim: int, num_heads: int, num_tokens: int, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path_rate: float = 0.0, norm_layer: str = "ln") -> None:
        super().__init__()
        # The host's registration order (norm1, norm2, attn, mlp): optimizer state follows it by position.
        self.norm1 = _norm(norm_layer, dim, num_tokens)
        self.norm2 = _norm(norm_layer, dim, num_tokens)
        self.attn = Attention(dim, num_heads, attn_drop, drop)
        self.drop_path = DropPath(drop_path_rate)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """(B, 3, S, S) -> (B, (S // P)^2, D) with a P x P stride-P conv; S must equal `img_size`."""

    def __init__(self, img_size: int, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"ViT expects {self.img_size}x{self.img_size} inputs, got {tuple(x.shape[-2:])}")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


def random_masking(x: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor]:
    """Keep a random `int(N * (1 - mask_ratio))` tokens of each sample (He et al., MAE, CVPR 2022).

    x: (B, N, D) -> kept (B, N_keep, D) and `restore` (B, N): the permutation that puts the kept
    tokens followed by N - N_keep fillers back in their original positions.
    """
    batch, tokens, dim = x.shape
    keep = int(tokens * (1 - mask_ratio))
    order = torch.rand(batch, tokens, device=x.device).argsort(dim=1)  # (B, N): a random permutation
    restore = order.argsort(dim=1)  # (B, N)
    kept = torch.gather(x, 1, order[:, :keep, None].expand(-1, -1, dim))  # (B, N_keep, D)
    return kept, restore


class VisionTransformer(FaceBackbone):
    """ViT face backbone: (B, 3, 112, 112) -> (B, E) un-normalised float32 embedding.

    Args:
        img_size: square input side (the host's 112).
        patch_size: patch side (9 on 112 gives 144 tokens).
        num_features: embedding size E (the host's `num_classes` argument).
        embed_dim: token width D.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        drop_rate, attn_drop_rate: dropout after the MLP/proj and on the attention weights.
        drop_path_rate: stochastic depth of the last block; block i gets i / (depth - 1) of it.
        norm_layer: 'ln' (LayerNorm over D) or 'bn' (BatchNorm1d over the tokens).
        mask_ratio: fraction of tokens masked per sample in training (0 disables masking).
        using_checkpoint: recompute each block in backward during training (saves memory).
        fp16, amp_dtype: autocast the trunk (see `base.FaceBackbone`); the `feature` head runs in fp32.
        dropout: accepted for `get_model` compatibility; the host ignores it, so it must be 0.
    """

    def __init__(self, img_size: int = 112, patch_size: int = 9, in_channels: int = 3, num_features: int = 512,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer: str = "ln", mask_ratio: float = 0.1, using_checkpoint: bool = False,
                 fp16: bool = False, amp_dtype: Optional[str] = None, dropout: float = 0.0) -> None:
        super().__init__(fp16=fp16, amp_dtype=amp_dtype)
        if norm_layer not in NORM_LAYERS:
            raise ValueError(f"norm_layer {norm_layer!r} is not supported; use one of {list(NORM_LAYERS)}")
        if norm_layer == "bn" and mask_ratio > 0:
            raise ValueError("norm_layer='bn' normalises over the token axis and needs every token; set mask_ratio=0")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        reject_dropout(type(self).__name__, dropout)
        self.embed_dim = embed_dim
        self.mask_ratio = mask_ratio
        self.using_checkpoint = using_checkpoint
        self.patch_embed = PatchEmbed(img_size, patch_size, in_channels, embed_dim)
        self.num_patches = num_tokens = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # stochastic depth per block
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, num_tokens, mlp_ratio, drop_rate, attn_drop_rate, rate, norm_layer)
            for rate in rates)
        self.norm = _norm(norm_layer, embed_dim, num_tokens)
        self.feature = nn.Sequential(
            nn.Linear(embed_dim * num_tokens, embed_dim, bias=False),
            nn.BatchNorm1d(embed_dim, eps=HEAD_BN_EPS),
            nn.Linear(embed_dim, num_features, bias=False),
            nn.BatchNorm1d(num_features, eps=HEAD_BN_EPS),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """Host init: position embeddings and Linear weights trunc-normal(0.02), mask token N(0, 0.02)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)  # (B, N, D)
        masking = self.training and self.mask_ratio > 0
        if masking:
            x, restore = random_masking(x, self.mask_ratio)  # (B, N_keep, D)
        for block in self.blocks:
            # checkpointing keeps the RNG state, so drop path repeats itself in the recomputation
            x = checkpoint(block, x, use_reentrant=False) if self.using_checkpoint and self.training else block(x)
        x = self.norm(x.float())
        if masking:
            fillers = self.mask_token.expand(x.shape[0], restore.shape[1] - x.shape[1], -1)
            x = torch.cat([x, fillers.to(x.dtype)], dim=1)  # (B, N, D): kept tokens, then mask tokens
            x = torch.gather(x, 1, restore[:, :, None].expand(-1, -1, x.shape[2]))  # original token order
        return x.flatten(1)  # (B, N * D)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.feature(x)


def _host_vit(**kwargs) -> VisionTransformer:
    """The host's `get_model` ViT: 112 input, patch 9, 8 heads, LayerNorm; `kwargs` gives the size and ours."""
    return VisionTransformer(img_size=112, patch_size=9, num_heads=8, norm_layer="ln", **kwargs)


HOST = BackboneSpec(source="arcface_torch backbones/vit.py")
register_variant("vit_t", "ViT-T: D 256, depth 12, drop path 0.1, mask 0.1.", _host_vit, HOST,
                 embed_dim=256, depth=12, drop_path_rate=0.1, mask_ratio=0.1)
register_variant("vit_t_dp005_mask0", "ViT-T for WebFace42M: D 256, depth 12, drop path 0.05, no mask.", _host_vit,
                 HOST, embed_dim=256, depth=12, drop_path_rate=0.05, mask_ratio=0.0)
register_variant("vit_s", "ViT-S: D 512, depth 12, drop path 0.1, mask 0.1.", _host_vit, HOST,
                 embed_dim=512, depth=12, drop_path_rate=0.1, mask_ratio=0.1)
register_variant("vit_s_dp005_mask_0", "ViT-S for WebFace42M: D 512, depth 12, drop path 0.05, no mask.", _host_vit,
                 HOST, embed_dim=512, depth=12, drop_path_rate=0.05, mask_ratio=0.0)
register_variant("vit_b", "ViT-B: D 512, depth 24, drop path 0.1, mask 0.1, gradient checkpointing.", _host_vit, HOST,
                 embed_dim=512, depth=24, drop_path_rate=0.1, mask_ratio=0.1, using_checkpoint=True)
register_variant("vit_b_dp005_mask_005", "ViT-B for WebFace42M: D 512, depth 24, drop path 0.05, mask 0.05, gradient "
                 "checkpointing.", _host_vit, HOST,
                 embed_dim=512, depth=24, drop_path_rate=0.05, mask_ratio=0.05, using_checkpoint=True)
register_variant("vit_l_dp005_mask_005", "ViT-L for WebFace42M: D 768, depth 24, drop path 0.05, mask 0.05, gradient "
                 "checkpointing.", _host_vit, HOST,
                 embed_dim=768, depth=24, drop_path_rate=0.05, mask_ratio=0.05, using_checkpoint=True)
register_variant("vit_h", "ViT-H: D 1024, depth 48, drop path 0.1, no mask, gradient checkpointing.", _host_vit, HOST,
                 embed_dim=1024, depth=48, drop_path_rate=0.1, mask_ratio=0.0, using_checkpoint=True)
