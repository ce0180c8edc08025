"""LightningModules of the vision-language baselines MGPATH is compared with: ViLa-MIL, TOP (few-shot MIL) and
the zero-shot classifiers of CONCH / QuiltNet / PLIP (:class:`TowerZeroShotModule`).

Both read class prompts through a text tower of :func:`mgpath.text.build_text_tower` (the papers': CLIP RN50)
and compare tile features with text features directly, so ``feature_dim`` is the text embedding size (RN50:
1024). Sources, recipes and differences: ``docs/baselines.md``.
"""
from __future__ import annotations

import torch

from mgpath.baselines.modules import RECIPES
from mgpath.baselines.recipes import EarlyStoppingAfter
from mgpath.baselines.top import TOP, clip_logit_scale, read_top_prompts
from mgpath.baselines.tower_zeroshot import TowerZeroShot, read_zeroshot_prompts, tower_logit_scale
from mgpath.baselines.vila import ViLaMIL, text_projection
from mgpath.lit import SlideClassifier
from mgpath.selection import BestCheckpoint
from mgpath.text import build_text_tower, load_descriptions

__all__ = ["TOPModule", "TowerZeroShotModule", "ViLaMILModule"]



def read_magnification(magnifications: list[str] | None, magnification: str | None) -> str:
    """The one magnification a single-scale prompt model reads: ``magnification``, else the data's highest."""
    mags = list(magnifications or ["5x", "10x"])
    chosen = magnification or mags[-1]
    if chosen not in mags:
        raise ValueError(f"mgpath/baselines: magnification {chosen!r} is not among the data's {mags}")
    return chosen

class ViLaMILModule(SlideClassifier):
    """ViLa-MIL (:class:`mgpath.baselines.vila.ViLaMIL`) on the two magnifications of ``magnifications``
    (low, high), with the text tower ``text_model`` (the paper's: open_clip ``RN50``, QuickGELU, OpenAI weights
    as ``text_checkpoint``; any tower of :func:`mgpath.text.build_text_tower` whose checkpoint has a
    ``text_projection``). The official model needs ``feature_dim`` equal to the text embedding size (RN50:
    1024); ``feature_adaptor: true`` instead learns a ``Linear(feature_dim, D)`` on the tiles (not official).

    Defaults from Jiangbo-Shi/ViLa-MIL (68a11cf): ``n_ctx`` 16, ``n_prototypes`` 16 (README), ``hidden`` 192,
    Adam lr 1e-4 (README), wd 1e-5 (``--reg``). ``recipe: official`` adds its early stopping on the validation
    loss (patience 20, not before epoch 80; checkpoint at the lowest validation loss, ties to the later epoch).
    """

    def __init__(self, descriptions: str, feature_dim: int, classes: list[str] | None = None, *,
                 magnifications: list[str] | None = None, text_model: str = "RN50",
                 text_checkpoint: str | None = None, text_model_cfg: dict | None = None, quick_gelu: bool = True,
                 n_ctx: int = 16, n_prototypes: int = 16, hidden: int = 192, train_text: bool = True,
                 feature_adaptor: bool = False, lr: float = 1e-4, weight_decay: float = 1e-5,
                 recipe: str = "fewshot"):
        if recipe not in RECIPES:
            raise ValueError(f"mgpath/baselines: ViLaMILModule: recipe must be one of {RECIPES}, got {recipe!r}")
        super().__init__(classes, lr, weight_decay)
        self.save_hyperparameters()
        self.recipe = recipe
        self.magnifications = list(magnifications or ["5x", "10x"])
        if len(self.magnifications) != 2:
            raise ValueError(f"mgpath/baselines: ViLa-MIL reads two magnifications (low, high), got "
                             f"{self.magnifications}")
        table = load_descriptions(descriptions, self.classes, self.magnifications)
        many = [(m, c) for m in self.magnifications for c in self.classes if len(table[m][c]) != 1]
        if many:
            raise ValueError(f"mgpath/baselines: ViLa-MIL takes one description per class and magnification; "
                             f"{descriptions} has {len(table[many[0][0]][many[0][1]])} for {many[0]}")
        tower = build_text_tower(text_model, text_checkpoint, text_model_cfg, quick_gelu)
        proj = text_projection(text_model, text_checkpoint, text_model_cfg, tower.width)
        if proj.shape[1] != feature_dim and not feature_adaptor:
            raise ValueError(f"mgpath/baselines: ViLa-MIL compares tile features with text features directly: "
                             f"feature_dim {feature_dim} must equal the text embedding size {proj.shape[1]} of "
                             f"{text_model}; use tile features of that size (RN50: 1024) or set feature_adaptor: "
                             "true (a learnt linear map, not in the official model)")
        texts = [table[m][c][0] for m in self.magnifications for c in self.classes]
        self.model = ViLaMIL(tower, proj, texts, n_ctx, n_prototypes, hidden, train_text, feature_dim)

    def forward(self, slides: list[dict]) -> torch.Tensor:
        low, high = self.magnifications
        return torch.stack([self.model(s[low].features, s[high].features) for s in slides])

    def configure_callbacks(self):
        if self.recipe != "official":
            return []
        return [EarlyStoppingAfter(monitor="val/loss", mode="min", patience=20, start_epoch=80),
                BestCheckpoint(monitor="val/loss", mode="min", ties="latest", save_last=True, save_top_k=1,
                               filename="best-{epoch}-{val/loss:.4f}", auto_insert_metric_name=False)]


class TOPModule(SlideClassifier):
    """TOP (:class:`mgpath.baselines.top.TOP`) on one magnification (default the highest), with the text
    tower ``text_model`` (the paper's: open_clip ``RN50``, QuickGELU, OpenAI weights as ``text_checkpoint``,
    which also gives CLIP's temperature). ``prompts``: the JSON file of bag and instance prompts (see
    :func:`mgpath.baselines.top.read_top_prompts`). ``feature_dim`` must equal the text embedding size, as in
    the official model; ``feature_adaptor: true`` instead learns a ``Linear(feature_dim, D)`` (not official).

    Defaults from miccaiif/TOP (8356b0d, ``exp_TCGA.sh`` 16-shot runs): SGD lr 0.02 for both prompt levels
    (``--lr_TB``, ``--lr_IB``), no weight decay, ``weight_lossA`` 25, prompt dropout 0 (the scripts also run
    0.2); the slide probability is the prototypes' mean. The official runs train 8000 epochs and have no
    validation-based selection (``recipe`` is accepted for a uniform configuration; both recipes are the same).
    """

    def __init__(self, prompts: str, feature_dim: int, classes: list[str] | None = None, *,
                 magnifications: list[str] | None = None, magnification: str | None = None,
                 text_model: str = "RN50", text_checkpoint: str | None = None, text_model_cfg: dict | None = None,
                 quick_gelu: bool = True, p_drop_out: float = 0.0, p_bag_drop_out: float = 0.0,
                 weight_lossA: float = 25.0, feature_adaptor: bool = False, lr: float = 0.02,
                 weight_decay: float = 0.0, recipe: str = "fewshot"):
        if recipe not in RECIPES:
            raise ValueError(f"mgpath/baselines: TOPModule: recipe must be one of {RECIPES}, got {recipe!r}")
        super().__init__(classes, lr, weight_decay)
        self.save_hyperparameters()
        self.magnification = read_magnification(magnifications, magnification)
        bag, instance = read_top_prompts(prompts, self.classes)
        tower = build_text_tower(text_model, text_checkpoint, text_model_cfg, quick_gelu)
        proj = text_projection(text_model, text_checkpoint, text_model_cfg, tower.width)
        if proj.shape[1] != feature_dim and not feature_adaptor:
            raise ValueError(f"mgpath/baselines: TOP compares tile features with text features directly: "
                             f"feature_dim {feature_dim} must equal the text embedding size {proj.shape[1]} of "
                             f"{text_model} (RN50: 1024), or set feature_adaptor: true (not official)")
        self.weight_lossA = float(weight_lossA)
        self.model = TOP(tower, proj, bag, self.classes, instance, clip_logit_scale(text_checkpoint),
                         p_bag_drop_out, p_drop_out, feature_dim)

    def _slide(self, slide: dict) -> torch.Tensor:
        return slide[self.magnification].features

    def forward(self, slides: list[dict]) -> torch.Tensor:
        """Log of the prototypes' mean class probabilities (B, C) (its softmax is that mean)."""
        return torch.stack([self.model(self._slide(s))[0].softmax(1).mean(0).log() for s in slides])

    def loss(self, batch):
        out = [self.model(self._slide(s)) for s in batch["slides"]]
        loss = torch.stack([TOP.objective(lg, sc, int(y), self.weight_lossA)
                            for (lg, sc), y in zip(out, batch["labels"])]).mean()
        return loss, torch.stack([lg.softmax(1).mean(0).log() for lg, _ in out])

    def configure_optimizers(self):
        """SGD on the bag contexts and on the instance contexts (+ adaptor): the official two SGD optimisers."""
        return torch.optim.SGD([{"params": list(self.model.bag.parameters())},
                                {"params": [*self.model.instance.parameters(), *self.model.adaptor.parameters()]}],
                               lr=self.lr, weight_decay=self.weight_decay)


class TowerZeroShotModule(SlideClassifier):
    """Zero-shot slide classification with a vision-language model's own towers
    (:class:`mgpath.baselines.tower_zeroshot.TowerZeroShot`): nothing is trained (``mgpath benchmark`` tests it).

    ``text_model``: ``conch_v1``, ``quiltnet`` or ``plip`` (any tower of :func:`mgpath.text.build_text_tower`
    with a text projection), ``text_checkpoint``: the publisher's file / folder (also gives ``logit_scale``),
    ``text_tokenizer``: CONCH's tokenizer file when it is not beside the checkpoint. ``prompts``: a zero-shot
    prompt file (``data/prompts/zeroshot_*.json``). The tiles at ``magnification`` (default the highest) must be
    the same model's projected image features (``mgpath extract --encoder conch_v1 | quiltnet | plip``: 512-d).
    ``topj``: tiles pooled per class (CONCH's ``run_mizero`` reports j in 1, 5, 10, 50, 100 and picks the best
    on the evaluated slides; here j is fixed beforehand).
    """

    def __init__(self, prompts: str, feature_dim: int, classes: list[str] | None = None, *,
                 text_model: str = "conch_v1", text_checkpoint: str | None = None,
                 text_model_cfg: dict | None = None, text_tokenizer: str | None = None, quick_gelu: bool = False,
                 magnifications: list[str] | None = None, magnification: str | None = None, topj: int = 50,
                 lr: float = 0.0, weight_decay: float = 0.0):
        super().__init__(classes, lr, weight_decay)
        self.save_hyperparameters()
        self.magnification = read_magnification(magnifications, magnification)
        classnames, templates = read_zeroshot_prompts(prompts, self.classes)
        tower = build_text_tower(text_model, text_checkpoint, text_model_cfg, quick_gelu, tokenizer=text_tokenizer)
        self.model = TowerZeroShot(tower, classnames, templates, tower_logit_scale(text_checkpoint), topj)
        if self.model.embed_dim != feature_dim:
            raise ValueError(f"mgpath/baselines: zero-shot {text_model} compares tiles with its {self.model.embed_dim}"
                             f"-d text embeddings but feature_dim is {feature_dim}; extract the tiles with the same "
                             f"model's image tower (mgpath extract --encoder {text_model})")
        self.requires_grad_(False)

    def forward(self, slides: list[dict]) -> torch.Tensor:
        return torch.stack([self.model(s[self.magnification].features) for s in slides])
