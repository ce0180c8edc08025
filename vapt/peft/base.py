"""The interface every PEFT method implements, and the registry that finds a method by its name.

A method is an ``nn.Module`` built from its config dataclass and the frozen `ViTEncoder` it adapts (HF PEFT's
tuner layout: one module per method, registered by name). `PromptedViT` embeds the images, hands the tokens
to :meth:`PeftMethod.forward_tokens` and pools what comes back, so a method may insert tokens (VPT, VAPT,
VFPT, E2VPT, GateVPT), change how a block attends (E2VPT key-value prompts, gated prompts) or add to a
frozen layer's output through forward hooks it owns (Adapter), run blocks with merged weights (LoRA, RepLoRA)
or act on the pooled feature before the head (MLP-k).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch
from torch import nn

_REGISTRY: dict[str, type["PeftMethod"]] = {}


@dataclass
class MethodConfig:
    """Base of every method config: ``method`` names the registered method; the rest are its keywords."""

    method: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


class PeftMethod(nn.Module):
    """One parameter-efficient adaptation of a frozen ViT.

    Class attributes
    ----------------
    names : tuple of str
        Registry names served by the class (``method:`` in a model config).
    config_class : type
        Its config dataclass.
    attribute : str
        Attribute of `PromptedViT` holding the method, i.e. its state-dict prefix (``prompts`` for VPT / VAPT,
        whose official layouts use it; ``peft`` otherwise).
    trains_backbone : bool
        True only for full fine-tuning.
    """

    names: ClassVar[tuple[str, ...]] = ()
    config_class: ClassVar[type] = MethodConfig
    attribute: ClassVar[str] = "peft"
    trains_backbone: ClassVar[bool] = False

    def __init__(self, cfg, encoder):
        super().__init__()
        self.cfg = cfg

    # ------------------------------------------------------------------ what the model and the tools ask
    @property
    def frozen_prefix_blocks(self) -> int:
        """How many leading blocks produce exactly the frozen backbone's tokens (their output can be cached).

        ``depth`` for a linear probe (the whole trunk is frozen), 0 when block 0 already sees a change.
        """
        return 0

    def forward_tokens(self, encoder, h: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Run the blocks on embedded tokens.

        Parameters
        ----------
        encoder : ViTEncoder
        h : (B, P + G, D)
            ``[CLS, (registers,) patches]`` with position embeddings, from ``encoder.embed``.

        Returns
        -------
        tokens : (B, L, D)
            After the last block, before the final norm.
        num_skip : int
            Leading tokens that average pooling skips.
        """
        for block in encoder.blocks:
            h = encoder.run_block(block, h)
        return h, encoder.num_prefix_tokens

    def head_input(self, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """What the classification head sees: the pooled features (B, F), changed by methods that act after
        the trunk (MLP-k's hidden layers). ``images`` (B, 3, H, W) are the model's inputs. Default: ``features``.
        """
        return features

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role for ``vapt summary`` (default: by the first component of their name)."""
        groups: dict[str, list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            groups.setdefault(name.split(".")[0], []).append(p)
        return groups


def register(cls: type[PeftMethod]) -> type[PeftMethod]:
    """Class decorator: make ``cls`` available under each of its ``names``."""
    for name in cls.names:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"PEFT method name {name!r} is registered twice.")
        _REGISTRY[name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    """Every registered method name, in registration order."""
    return tuple(_REGISTRY)


def method_class(name: str) -> type[PeftMethod]:
    if name not in _REGISTRY:
        raise ValueError(f"Unknown method {name!r}; choose one of {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def make_config(method: str, **fields_) -> MethodConfig:
    """``method`` + keywords -> that method's config (unknown keywords are refused, naming the valid ones)."""
    cls = method_class(method).config_class
    unknown = sorted(set(fields_) - cls.field_names())
    if unknown:
        raise ValueError(f"Method {method!r} has no option(s) {', '.join(unknown)}; its options are "
                         f"{', '.join(sorted(cls.field_names() - {'method'}))}.")
    return cls(method=method, **fields_)


def build_method(cfg: MethodConfig, encoder) -> PeftMethod:
    """The method module ``cfg`` describes, built for ``encoder``."""
    return method_class(cfg.method)(cfg, encoder)


def timm_only(encoder, method: str) -> None:
    """Refuse encoders whose blocks the method cannot reach (it edits timm attention or linear layers)."""
    if encoder.library != "timm" or not hasattr(encoder.blocks[0], "attn") or not hasattr(encoder.blocks[0].attn, "qkv"):
        raise ValueError(f"{method} needs a timm ViT with fused qkv attention; {encoder.name} is not one "
                         "(open_clip towers take vpt, vapt, vfpt, lora, replora, adapter, bitfit, partial, full, "
                         "mlp, sidetune or linear).")


class OutputHook:
    """Forward hook ``output -> method.<fn>(index, input, output)`` on a frozen backbone module.

    A plain object (not a closure), so a deep copy or a pickle of the model keeps each hook pointing at its own
    copy of the method."""

    def __init__(self, method: PeftMethod, fn: str, index: int):
        self.method, self.fn, self.index = method, fn, index

    def __call__(self, module, inputs, output):
        return getattr(self.method, self.fn)(self.index, inputs[0], output)
