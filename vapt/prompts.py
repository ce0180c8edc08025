"""Prompt modules: VPT (shallow and deep) and VAPT (adaptive prompts), one module configured by `PromptConfig`.

Token order inside a prompted ViT is ``[CLS, prompts, (register tokens,) patches]``; prompts carry no position
embedding. Block 0 always receives the static input prompt ``P_0``. Before every later block the previous
block's outputs at the prompt slots are discarded and replaced by ``prompts_for_block(i, ...)``:

* VPT-shallow: nothing is replaced (the prompt outputs flow on).
* VPT-deep: the static prompt set ``D[i - 1]``.
* VAPT: static sets for ``i < vpt_depth``, then adaptive prompts computed from the patch tokens that left
  block ``i - 1``::

      Z  = LN_i(patches)                                   (B, G, D), G = gh * gw
      Xc = Dropout2d(conv_KxK(Z as (B, D, gh, gw)))        one K x K kernel shared by all D channels
      G_ = Xc.flatten(2) @ A_i^T + b_i                     (B, D, N), A_i: (N, G'), zero-initialised
      P  = G_ + W2 Dropout(ReLU(W1 G_))                    shared bias-free residual projector (D -> r -> D)

This matches the official VAPT code (Minhchuyentoancbn/Visual-Adaptive-Prompt-Tuning) including its static
layer-0 prompt, per-layer LayerNorm (eps 1e-5), Dropout2d(0.1) after the conv, token-projector bias and the
residual in the feature projector. Unlike the official code, the patch grid comes from the backbone, so
384 px, patch 14 and non-square inputs work.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("linear", "full", "vpt", "vapt")


@dataclass
class PromptConfig:
    """How a frozen ViT is adapted.

    Parameters
    ----------
    method : {"linear", "full", "vpt", "vapt"}
        Linear probe, full fine-tuning, VPT or VAPT.
    num_tokens : int
        N, prompt tokens per layer (vpt / vapt).
    deep : bool
        VPT-deep (True) or VPT-shallow (False). VAPT requires ``deep=True``.
    dropout : float
        Dropout on static prompts (per sample; the official ``MODEL.PROMPT.DROPOUT``).
    project : int
        If > 0, prompts live in ``R^project`` and a Linear(project -> D) maps them (official ``PROJECT``).
    kernel_size, padding : int
        K and padding of the VAPT channel-wise convolution.
    channelwise : bool
        True: one K x K kernel shared by all channels (official default); False: one kernel per channel.
    hidden_dim : int
        r, the bottleneck of the VAPT feature projector.
    mlp_dropout : float
        Dropout after the projector's ReLU (official ``DROPOUT_MLP``).
    conv_dropout : float
        Dropout2d after the conv (hard-coded 0.1 in the official code).
    feature_projector, share_projector : bool
        Use the residual feature projector; share one across layers (official defaults True, True).
    vpt_depth : int
        Number of leading blocks that receive static VPT prompts before adaptive ones start (>= 1).
    """

    method: str = "vapt"
    num_tokens: int = 10
    deep: bool = True
    dropout: float = 0.0
    project: int = -1
    kernel_size: int = 2
    padding: int = 0
    channelwise: bool = True
    hidden_dim: int = 8
    mlp_dropout: float = 0.1
    conv_dropout: float = 0.1
    feature_projector: bool = True
    share_projector: bool = True
    vpt_depth: int = 1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        if self.method in ("vpt", "vapt") and self.num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1 for {self.method}; got {self.num_tokens}.")
        if self.method == "vapt" and not self.deep:
            raise ValueError("VAPT inserts adaptive prompts at every layer and needs deep=True "
                             "(the official code crashes on ADAPTIVE with DEEP=False).")
        if self.vpt_depth < 1:
            raise ValueError(f"vpt_depth must be >= 1 (block 0 always gets a static prompt); got {self.vpt_depth}.")

    @property
    def uses_prompts(self) -> bool:
        return self.method in ("vpt", "vapt")

    def to_dict(self) -> dict:
        return asdict(self)


def xavier_prompt_bound(patch_size: tuple[int, int], prompt_dim: int, in_chans: int = 3) -> float:
    """Official VPT init bound ``sqrt(6 / (3 * p_h * p_w + prompt_dim))`` (0.0625 for ViT-B/16)."""
    return math.sqrt(6.0 / float(in_chans * patch_size[0] * patch_size[1] + prompt_dim))


class TokenMapDownsample(nn.Module):
    """VAPT channel-wise conv + Dropout2d + token-wise projector of one layer.

    Parameters keep the official meaning: ``kernel`` (1, 1, K, K) (or (D, 1, K, K) when not channel-wise) and
    ``linear`` (N, G') with G' the number of conv outputs. The output is exactly zero at initialisation.

    The conv and the projector are both linear in the token map, so they are applied as one (N, G) matrix
    ``M = A * conv^T`` (built for all layers at once by `PromptGenerator.adaptive_token_matrices`) times the
    patch tokens:
    ``prompts[b, n, c] = mask[b, c] * sum_p M[n, p] x[b, p, c] + bias[n]``. This equals conv -> Dropout2d ->
    linear exactly (Dropout2d's per-(sample, channel) mask commutes with a map over spatial positions), needs
    no transpose of the token map, and is several times cheaper than a depthwise convolution on a GPU.
    """

    def __init__(self, embed_dim: int, grid: tuple[int, int], num_tokens: int, kernel_size: int,
                 padding: int = 0, channelwise: bool = True, conv_dropout: float = 0.1):
        super().__init__()
        out_h = grid[0] + 2 * padding - kernel_size + 1
        out_w = grid[1] + 2 * padding - kernel_size + 1
        if out_h < 1 or out_w < 1:
            raise ValueError(f"VAPT kernel {kernel_size} is larger than the {grid[0]}x{grid[1]} patch grid.")
        self.padding, self.out_grid, self.conv_dropout = padding, (out_h, out_w), conv_dropout
        shape = (1, 1, kernel_size, kernel_size) if channelwise else (embed_dim, 1, kernel_size, kernel_size)
        self.kernel = nn.Parameter(torch.randn(shape))  # official: torch.randn, unscaled
        self.linear = nn.Linear(out_h * out_w, num_tokens)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, tokens: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """Normalised patch tokens (B, G, D) in raster order and this layer's matrix (N, G) or (N, D, G)
        -> prompts (B, N, D)."""
        bias = self.linear.bias[:, None]
        b = tokens.shape[0]
        drop = self.training and self.conv_dropout > 0
        keep = F.dropout(tokens.new_ones(b, 1, tokens.shape[2]), self.conv_dropout, True) if drop else None
        if matrix.ndim == 3:
            out = torch.einsum("ncp,bpc->bnc", matrix, tokens)
            return out * keep + bias if drop else out + bias
        # a stride-0 batch of M: one strided-batched GEMM, no copy of the tokens
        if drop:
            return torch.addcmul(bias, torch.bmm(matrix.expand(b, -1, -1), tokens), keep)
        return torch.baddbmm(bias, matrix.expand(b, -1, -1), tokens)


class FeatureProjector(nn.Module):
    """Bias-free residual MLP ``x + W2 Dropout(ReLU(W1 x))``, (B, N, D) -> (B, N, D)."""

    def __init__(self, embed_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim, bias=False)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.dropout(self.act(self.fc1(x))))


class PromptGenerator(nn.Module):
    """All prompt parameters of a prompted ViT (VPT-shallow, VPT-deep or VAPT).

    Parameters
    ----------
    cfg : PromptConfig
    embed_dim : int
        D of the backbone.
    depth : int
        Number of transformer blocks L.
    patch_size, grid : tuple[int, int]
        Patch size (for the init bound) and patch grid (gh, gw) of the backbone.
    """

    def __init__(self, cfg: PromptConfig, embed_dim: int, depth: int, patch_size: tuple[int, int],
                 grid: tuple[int, int]):
        super().__init__()
        self.cfg, self.embed_dim, self.depth, self.grid = cfg, embed_dim, depth, tuple(grid)
        n = cfg.num_tokens
        prompt_dim = cfg.project if cfg.project > 0 else embed_dim
        bound = xavier_prompt_bound(patch_size, prompt_dim)
        self.init_bound = bound
        self.prompt_embeddings = nn.Parameter(torch.empty(1, n, prompt_dim).uniform_(-bound, bound))
        if cfg.project > 0:
            self.prompt_proj = nn.Linear(prompt_dim, embed_dim)
            nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")
        else:
            self.prompt_proj = nn.Identity()
        self.prompt_dropout = nn.Dropout(cfg.dropout)

        self.adaptive = cfg.method == "vapt"
        if not cfg.deep:
            num_static = 0
        elif self.adaptive:
            num_static = min(cfg.vpt_depth, depth) - 1
        else:
            num_static = depth - 1
        self.num_static_deep = num_static
        self.deep_prompt_embeddings = (
            nn.Parameter(torch.empty(num_static, n, prompt_dim).uniform_(-bound, bound)) if num_static > 0 else None)

        self.first_adaptive_block = 1 + num_static
        num_adaptive = depth - self.first_adaptive_block if self.adaptive else 0
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dim, eps=1e-5) for _ in range(num_adaptive))
        self.downsamples = nn.ModuleList(
            TokenMapDownsample(embed_dim, self.grid, n, cfg.kernel_size, cfg.padding, cfg.channelwise,
                               cfg.conv_dropout) for _ in range(num_adaptive))
        if not (self.adaptive and cfg.feature_projector):
            self.projectors = nn.ModuleList()
        elif cfg.share_projector:
            self.projectors = nn.ModuleList([FeatureProjector(embed_dim, cfg.hidden_dim, cfg.mlp_dropout)])
        else:
            self.projectors = nn.ModuleList(
                FeatureProjector(embed_dim, cfg.hidden_dim, cfg.mlp_dropout) for _ in range(num_adaptive))

    @property
    def num_tokens(self) -> int:
        return self.cfg.num_tokens

    def input_prompts(self, batch_size: int) -> torch.Tensor:
        """Static prompts for block 0, dropout per sample. -> (B, N, D)."""
        return self._static(self.prompt_embeddings[0], batch_size)

    def replaces_prompts(self, block_index: int) -> bool:
        """Whether the prompt slots are refreshed before block ``block_index`` (deep prompting, i >= 1)."""
        return self.cfg.deep and block_index >= 1

    def adaptive_token_matrices(self) -> torch.Tensor | None:
        """Conv + projector matrices of all adaptive layers from one grouped transposed conv.

        Returns (L_a, N, G) for channel-wise kernels, (L_a, N, D, G) for per-channel ones, None without adaptive
        layers. Computed in float32 even under autocast; call once per forward, pass to :meth:`prompts_for_block`.
        """
        if not len(self.downsamples):
            return None
        first = self.downsamples[0]
        layers, channels = len(self.downsamples), first.kernel.shape[0]
        weights = torch.stack([ds.linear.weight for ds in self.downsamples])          # (L, N, G')
        kernels = torch.cat([ds.kernel for ds in self.downsamples])                   # (L * C, 1, K, K)
        with torch.autocast(weights.device.type, enabled=False):
            maps = weights.view(layers, self.num_tokens, *first.out_grid).transpose(0, 1)
            maps = maps.repeat_interleave(channels, dim=1) if channels > 1 else maps   # (N, L * C, H', W')
            m = F.conv_transpose2d(maps, kernels, padding=first.padding, groups=layers * channels)
        m = m.view(self.num_tokens, layers, channels, -1).transpose(0, 1)              # (L, N, C, G)
        return m.squeeze(2) if channels == 1 else m

    def prompts_for_block(self, block_index: int, patches: torch.Tensor,
                          matrices: torch.Tensor | None = None) -> torch.Tensor:
        """Prompts inserted before block ``i >= 1``.

        Parameters
        ----------
        block_index : int
        patches : (B, G, D)
            Patch tokens that left block ``i - 1`` (registers and CLS excluded), in raster order.
        matrices : optional
            :meth:`adaptive_token_matrices`, computed here when not given.

        Returns
        -------
        (B, N, D)
        """
        if block_index < self.first_adaptive_block:
            return self._static(self.deep_prompt_embeddings[block_index - 1], patches.shape[0])
        j = block_index - self.first_adaptive_block
        z = self.norms[j](patches)
        if matrices is None:
            matrices = self.adaptive_token_matrices()
        prompts = self.downsamples[j](z, matrices[j])
        if len(self.projectors):
            prompts = self.projectors[0 if self.cfg.share_projector else j](prompts)
        return prompts

    def _static(self, prompt: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(N, P) -> (B, N, D): project, expand, then per-sample dropout (the official order)."""
        return self.prompt_dropout(self.prompt_proj(prompt).expand(batch_size, -1, -1))
