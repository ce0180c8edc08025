"""Former home of the prompt modules; they live in `vapt.peft.vpt` and `vapt.peft.vapt` now."""
from vapt.peft.vapt import FeatureProjector, TokenMapDownsample
from vapt.peft.vpt import METHODS, PromptConfig, PromptGenerator, xavier_prompt_bound

__all__ = ["METHODS", "PromptConfig", "PromptGenerator", "TokenMapDownsample", "FeatureProjector",
           "xavier_prompt_bound"]
