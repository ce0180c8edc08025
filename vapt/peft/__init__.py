"""Parameter-efficient adaptation of frozen ViTs: one method per module, registered by name.

``method:`` in a model config picks the method; its keywords are the fields of the method's config class:

=========  ===============================  ==========================
name       config                           module
=========  ===============================  ==========================
linear     PromptConfig                     `vapt.peft.baselines`
full       PromptConfig                     `vapt.peft.baselines`
bitfit     BitFitConfig                     `vapt.peft.baselines`
partial    PartialConfig                    `vapt.peft.baselines`
vpt, vapt  PromptConfig                     `vapt.peft.vpt` (+ `vapt.peft.vapt`)
lora       LoraConfig                       `vapt.peft.lora`
adapter    AdapterConfig                    `vapt.peft.adapter`
vfpt       VFPTConfig                       `vapt.peft.vfpt`
e2vpt      E2VPTConfig                      `vapt.peft.e2vpt`
gatevpt    GateVPTConfig                    `vapt.peft.gatevpt`
replora    RepLoraConfig                    `vapt.peft.replora`
gated_prompt  GatedPromptConfig             `vapt.peft.gated`
mlp        MlpHeadConfig                    `vapt.peft.mlp_head`
sidetune   SideTuneConfig                   `vapt.peft.sidetune`
=========  ===============================  ==========================
"""
from __future__ import annotations

from vapt.peft.base import (MethodConfig, PeftMethod, build_method, make_config, method_class, method_names,
                            register)
from vapt.peft.vpt import PromptConfig, PromptGenerator
from vapt.peft.baselines import BitFitConfig, PartialConfig
from vapt.peft.lora import LoraConfig
from vapt.peft.adapter import AdapterConfig
from vapt.peft.vfpt import VFPTConfig
from vapt.peft.e2vpt import E2VPTConfig
from vapt.peft.gatevpt import GateVPTConfig
from vapt.peft.replora import RepLoraConfig
from vapt.peft.gated import GatedPromptConfig
from vapt.peft.mlp_head import MlpHeadConfig
from vapt.peft.sidetune import SideTuneConfig

__all__ = ["MethodConfig", "PeftMethod", "build_method", "make_config", "method_class", "method_names", "register",
           "PromptConfig", "PromptGenerator", "BitFitConfig", "PartialConfig", "LoraConfig", "AdapterConfig",
           "VFPTConfig", "E2VPTConfig", "GateVPTConfig", "RepLoraConfig", "GatedPromptConfig", "MlpHeadConfig",
           "SideTuneConfig"]
