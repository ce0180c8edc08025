"""VPT (shallow and deep) and VAPT: one prompt module configured by `PromptConfig` (registered as ``vpt``
and ``vapt``; ``linear`` and ``full`` share the config and live in `vapt.peft.baselines`).

Token order inside a prompted ViT is ``[CLS, prompts, (register tokens,) patches]``; prompts carry no position
embedding. Block 0 always receives the static input prompt ``P_0``. Before every later block the previous
block's outputs at the prompt slots are discarded and replaced by ``prompts_for_block(i, ...)``:

* VPT-shallow: nothing is replaced (the prompt outputs flow on).
* VPT-deep: the static prompt set ``D[i - 1]`` (KMnP/vpt @ 4410440).
* VAPT: static sets for ``i < vpt_depth``, then adaptive prompts computed from the patch tokens that left
  block ``i - 1`` (equations in `vapt.peft.vapt`).

This matches the official VAPT code (Minhchuyentoancbn/Visual-Adaptive-Prompt-Tuning) including its static
layer-0 prompt, per-layer LayerNorm (eps 1e-5), Dropout2d(0.1) after the conv, token-projector bias and the
residual in the feature projector. Unlike the official code, the patch grid comes from the backbone, so
384 px, patch 14 and non-square inputs work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vapt.peft.base import MethodConfig, PeftMethod, register
from vapt.peft.vapt import FeatureProjector, TokenMapDownsample

METHODS = ("linear", "full", "vpt", "vapt")


@dataclass
class PromptConfig(MethodConfig):
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


def xavier_prompt_bound(patch_size: tuple[int, int], prompt_dim: int, in_chans: int = 3) -> float:
    """Official VPT init bound ``sqrt(6 / (3 * p_h * p_w + prompt_dim))`` (0.0625 for ViT-B/16)."""
    return math.sqrt(6.0 / float(in_chans * patch_size[0] * patch_size[1] + prompt_dim))


@register
class PromptGenerator(PeftMethod):
    """All prompt parameters of a prompted ViT (VPT-shallow, VPT-deep or VAPT).

    Parameters
    ----------
    cfg : PromptConfig
    encoder : ViTEncoder
        Gives D, the depth L, the patch size (for the init bound) and the patch grid (gh, gw).
    """

    names: ClassVar[tuple[str, ...]] = ("vpt", "vapt")
    config_class: ClassVar[type] = PromptConfig
    attribute: ClassVar[str] = "prompts"

    def __init__(self, cfg: PromptConfig, encoder):
        super().__init__(cfg, encoder)
        embed_dim, depth, patch_size = encoder.embed_dim, len(encoder.blocks), encoder.patch_size
        self.embed_dim, self.depth, self.grid = embed_dim, depth, tuple(encoder.grid_size())
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

    def forward_tokens(self, encoder, h: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Insert ``P_0`` after CLS, refresh the prompt slots before every later block (deep / VAPT).

        (B, P + G, D) -> (B, 1 + N + P - 1 + G, D); pooling skips only CLS (the official MAE pooling averages
        prompts and registers too)."""
        n = self.num_tokens
        first = n + encoder.num_prefix_tokens  # index of the first patch token after prompt insertion
        h = torch.cat([h[:, :1], self.input_prompts(h.shape[0]).to(h.dtype), h[:, 1:]], dim=1)
        matrices = self.adaptive_token_matrices()
        for i, block in enumerate(encoder.blocks):
            if self.replaces_prompts(i):
                new = self.prompts_for_block(i, h[:, first:], matrices).to(h.dtype)
                h = torch.cat([h[:, :1], new, h[:, 1 + n:]], dim=1)
            h = encoder.run_block(block, h)
        return h, 1

    @property
    def frozen_prefix_blocks(self) -> int:
        return 0
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
