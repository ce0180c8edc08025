"""Zero-shot MGPATH: classify slides from the class descriptions alone (no training).

The text side runs the descriptions through the (frozen) tower and the text adaptor with the context vectors
off (``placement="none"``); each description of a class is one prompt set (a class may have several). The
visual side is, by default, the image-adapted tile features themselves (``tokens="tiles"``: every tile is a
visual token), or the model's visual prompt tokens (``tokens="prompts"``, for a trained or imported model).
The same OT head gives ``logit_c = exp(t) * sum_mag (1 - <T*, 1 - cos>)``. Meaningful with aligned adaptors
(e.g. the PLIP-G alignment checkpoint through ``mgpath import-official``).

``mgpath zeroshot --config configs/wsi/x.yaml [--model.init_checkpoint conv.pt] --part test --out preds.csv``
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from mgpath.model import MGPATH, Bag
from mgpath.module import MGPATHModule
from mgpath.ot import OTConfig, ot_similarity
from mgpath.text import PromptLearner, load_descriptions
from vapt.fileio.atomic import atomic_path

__all__ = ["ZeroShotMGPATH", "ZeroShotModule", "run"]


class ZeroShotMGPATH(nn.Module):
    """Zero-shot classifier sharing the tower, adaptors and temperature of an :class:`MGPATH`.

    Parameters
    ----------
    model : the MGPATH model (its context vectors are not used).
    descriptions : description file or table ``{mag: {class: [text, ...]}}``.
    tokens : ``"tiles"`` (adapted tile features) or ``"prompts"`` (the model's visual prompt tokens).

    Forward: list of B slides ``{mag: Bag}`` -> logits (B, C).
    """

    def __init__(self, model: MGPATH, descriptions, tokens: str = "tiles", ot: OTConfig | None = None):
        super().__init__()
        if tokens not in ("tiles", "prompts"):
            raise ValueError(f"mgpath/zeroshot.py: tokens must be 'tiles' or 'prompts', got {tokens!r}")
        table = descriptions if isinstance(descriptions, dict) else load_descriptions(
            descriptions, model.classes, model.magnifications)
        table = {m: {c: ([d] if isinstance(d, str) else list(d)) for c, d in table[m].items()}
                 for m in model.magnifications}
        n_sets = max(len(ds) for per in table.values() for ds in per.values())
        self.model, self.tokens = model, tokens
        self.prompts = PromptLearner(model.text.tower, table, n_ctx=0, n_sets=n_sets, placement="none")
        self.ot = ot or model.ot

    def text_features(self) -> dict[str, torch.Tensor]:
        """``{mag: (S, C, D)}`` L2-normalised description features (no context vectors)."""
        self.prompts.sync_positions(self.model.text.tower)  # the tower may have been (re)loaded since
        x, eot = self.prompts()
        S, P, L, W = x.shape
        h = self.model.text.tower(x.reshape(S * P, L, W), eot.reshape(-1))
        f = F.normalize(self.model.text.adaptor(h), dim=-1).reshape(S, P, -1)
        C = self.model.num_classes
        return {m: f[:, i * C:(i + 1) * C] for i, m in enumerate(self.prompts.magnifications)}

    def visual(self, bag: Bag) -> torch.Tensor:
        """Visual tokens of one bag: (N, D) adapted tiles or (M, D) prompt tokens, L2-normalised."""
        if self.tokens == "prompts":
            return self.model.visual(bag.features, bag.neighbours)
        return F.normalize(self.model.visual.adaptor(bag.features), dim=-1)

    def forward(self, slides: list[dict[str, Bag]]) -> torch.Tensor:
        text = self.text_features()
        rows = []
        for i, s in enumerate(slides):
            sim = 0.0
            for m in self.model.magnifications:
                if m not in s:
                    raise KeyError(f"mgpath/zeroshot.py: slide {i} has no bag at {m!r}")
                if not torch.isfinite(s[m].features).all():
                    raise ValueError(f"mgpath/zeroshot.py: slide {i} has NaN/inf features at {m}")
                sim = sim + ot_similarity(self.visual(s[m])[None], text[m], config=self.ot)
            rows.append(sim)
        return self.model.logit_scale.exp() * torch.cat(rows)


class ZeroShotModule(MGPATHModule):
    """:class:`ZeroShotMGPATH` as a LightningModule (nothing is trained: ``mgpath test`` / the benchmark's
    ``zeroshot`` method run it directly). Takes MGPATHModule's keywords (``init_checkpoint``: e.g. a PLIP-G
    import, whose adaptors align tiles and text) plus ``tokens``."""

    def __init__(self, descriptions: str, feature_dim: int, classes: list[str] | None = None, *,
                 tokens: str = "tiles", **kwargs):
        super().__init__(descriptions, feature_dim, classes, **kwargs)
        self.save_hyperparameters()
        self.zeroshot = ZeroShotMGPATH(self.model, descriptions, tokens)
        self.requires_grad_(False)

    def forward(self, slides: list[dict[str, Bag]]) -> torch.Tensor:
        return self.zeroshot(slides)


def run(a: argparse.Namespace, overrides: list[str]) -> int:
    """``mgpath zeroshot`` after parsing (`mgpath.commands.zeroshot`); ``overrides`` go to the config."""
    import pandas as pd
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    from mgpath.lightning_cli import make_cli
    from mgpath.module import SlideAUROC

    cli = make_cli(["--config", a.config, *overrides], run=False)
    module, dm = cli.model, cli.datamodule
    zs = ZeroShotMGPATH(module.model, module.hparams.descriptions, a.tokens).eval()
    dm.setup()
    ds = dm.datasets[a.part]
    probs = []
    with torch.no_grad():
        for i in range(len(ds)):
            probs.append(zs([ds[i]["bags"]]).softmax(-1))
    probs, y = torch.cat(probs), torch.tensor(ds.labels)
    C = module.model.num_classes
    auc = SlideAUROC(C)
    auc.update(probs, y)
    res = {"auc": auc.compute().item(), "f1": MulticlassF1Score(C, average="macro")(probs, y).item(),
           "acc": MulticlassAccuracy(C, average="micro")(probs, y).item()}
    print(f"zero-shot on {a.part} ({len(ds)} slides): " + ", ".join(f"{k} {v:.4f}" for k, v in res.items()))
    if a.out:
        df = pd.DataFrame(probs.numpy(), columns=[f"p_{c}" for c in module.model.classes])
        df.insert(0, "label", [module.model.classes[t] for t in y.tolist()])
        df.insert(0, "slide_id", ds.slide_ids)
        with atomic_path(a.out) as tmp:
            df.to_csv(tmp, index=False)
    return 0
