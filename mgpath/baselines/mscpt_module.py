"""The LightningModule of MSCPT (:class:`mgpath.baselines.mscpt.MSCPT`): its inputs per slide, its loss and its
optimiser, under the shared splits, metrics and fold runner."""
from __future__ import annotations

import functools

import torch
from lightning.pytorch.callbacks import GradientAccumulationScheduler

from mgpath.baselines.mscpt import MSCPT
from mgpath.baselines.mscpt_data import (
    cache_tile_images,
    load_tile_images,
    read_mscpt_descriptions,
    read_selection_prompts,
    select_tiles,
    selection_classifier,
)
from mgpath.baselines.recipes import EarlyStoppingAfter
from mgpath.lit import SlideClassifier
from mgpath.selection import BestCheckpoint

__all__ = ["MSCPTModule", "load_hf_clip", "mscpt_selection_score"]

#: the key under which a slide's selected low-magnification tile images travel in a batch
IMAGES = "mscpt_images"
RECIPES = ("fewshot", "official")
#: selection_score -> the metric averaged with macro-F1 (model/model_interface.py: f1_acc for RCC)
_SCORES = {"f1_auc": "auc", "f1_acc": "acc"}
#: state-dict prefix of the frozen CLIP (left out of checkpoints)
_CLIP = "model.clip."


def load_hf_clip(folder: str):
    """(HF ``CLIPModel``, its tokenizer) from a publisher's folder (``vinid/plip``; CLIP ViT-B/16)."""
    try:
        from transformers import AutoTokenizer, CLIPModel
    except ImportError:
        raise ImportError('mgpath/baselines: MSCPT runs the HF CLIPModel; pip install "vapt-mgpath[hf]"') from None
    from pathlib import Path

    if not (Path(folder) / "config.json").is_file():
        raise FileNotFoundError(f"mgpath/baselines: MSCPT needs the HF CLIPModel folder (config.json, weights, "
                                f"tokenizer files; e.g. vinid/plip) as clip_checkpoint, got {folder}")
    if not any((Path(folder) / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        raise FileNotFoundError(f"mgpath/baselines: {folder} has no tokenizer files (tokenizer.json or vocab.json + "
                                "merges.txt); download the whole model folder")
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of a run's output
    try:
        return CLIPModel.from_pretrained(folder).float().eval(), AutoTokenizer.from_pretrained(folder)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


class MSCPTModule(SlideClassifier):
    """MSCPT on the data's two magnifications (low: the selected tile images, high: tile features before CLIP's
    ``visual_projection``, ``mgpath extract --encoder plip_pooled``: ``feature_dim`` = the vision width, 768).

    ``clip_checkpoint``: the HF CLIPModel folder (PLIP ``vinid/plip``, or CLIP ViT-B/16); ``descriptions``: the
    official description JSON (or this project's layout with both magnifications); ``select_prompts``: the
    tile-selection prompt file; ``tiles_dir``: where the chosen tiles are cached (default
    ``<run folder>/mscpt_tiles``). Defaults from Hanminghao/MSCPT (3f23ac7): ``n_tiles`` 30
    (``select_5X_pic.py --top_k``), ``n_tpro`` = ``n_vpro`` = 2 (``scripts/mscpt/*.sh``), top-5 / top-100
    pooling, Adam lr 1e-4, weight decay 1e-5, ``accumulate`` (``--gc``) 1 (``main.py``); the scripts train 50
    (PLIP) / 100 (CLIP) epochs. ``corrected``: see :mod:`mgpath.baselines.mscpt`.

    ``recipe: official`` also selects the model as ``model/model_interface.py`` does: the epoch with the best
    ``val/mscpt_score`` = (macro-F1 + AUC) / 2 (``selection_score: f1_acc``: (macro-F1 + accuracy) / 2, its RCC
    rule), the first of equal scores, and stops after ``patience`` epochs without a better one (``main.py``: 10
    for PLIP, 20 for CLIP). ``fewshot`` (default): the config's checkpoint callback decides.

    Checkpoints leave out the frozen CLIP weights (rebuilt from ``clip_checkpoint``, whose SHA-256 they record;
    loading with another CLIP file is refused).
    """

    def __init__(self, descriptions: str, clip_checkpoint: str, select_prompts: str, feature_dim: int,
                 classes: list[str] | None = None, *, magnifications: list[str] | None = None,
                 tiles_dir: str | None = None, n_tiles: int = 30, n_tpro: int = 2, n_vpro: int = 2,
                 topk_low: int = 5, topk_high: int = 100, gcn_dropout: float = 0.5, corrected: bool = False,
                 accumulate: int = 1, lr: float = 1e-4, weight_decay: float = 1e-5, recipe: str = "fewshot",
                 selection_score: str = "f1_auc", patience: int = 10):
        super().__init__(classes, lr, weight_decay)
        self.save_hyperparameters()
        if recipe not in RECIPES or selection_score not in _SCORES or int(patience) < 1:
            raise ValueError(f"mgpath/baselines: MSCPTModule: recipe must be one of {RECIPES}, selection_score one "
                             f"of {sorted(_SCORES)} and patience >= 1; got {recipe!r}, {selection_score!r}, "
                             f"{patience}")
        self.recipe = recipe
        self.magnifications = list(magnifications or ["5x", "20x"])
        if len(self.magnifications) != 2:
            raise ValueError(f"mgpath/baselines: MSCPT reads two magnifications (low: tile images, high: "
                             f"features), got {self.magnifications}")
        if int(accumulate) < 1 or int(n_tiles) < 1:
            raise ValueError(f"mgpath/baselines: MSCPT accumulate and n_tiles must be >= 1, got {accumulate}, "
                             f"{n_tiles}")
        low, high = read_mscpt_descriptions(descriptions, self.classes, self.magnifications)
        self.prompt_sets = read_selection_prompts(select_prompts, self.classes)
        clip, self.tokenizer = load_hf_clip(clip_checkpoint)
        width = clip.visual_projection.weight.shape[1]
        if feature_dim != width:
            raise ValueError(f"mgpath/baselines: MSCPT reads tile features before CLIP's visual_projection: "
                             f"feature_dim {feature_dim} is not the vision width {width} of {clip_checkpoint}; "
                             "extract them with --encoder plip_pooled")
        self.model = MSCPT(clip, self.tokenizer, low, high, n_tpro, n_vpro, topk_low, topk_high, gcn_dropout,
                           corrected)
        self.tiles: dict[str, str] = {}

    def setup(self, stage: str) -> None:
        """Choose and cache the low-magnification tiles of every slide of the data module."""
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not getattr(dm, "datasets", None):
            return
        from pathlib import Path

        from mgpath.io import read_features, read_features_header
        from mgpath.pipelines.identity import file_sha256

        clip = self.model.clip
        root = Path(self.hparams.tiles_dir or Path(self.trainer.default_root_dir) / "mscpt_tiles")
        size = int(clip.config.vision_config.image_size)
        classifier = selection_classifier(clip.cpu(), self.tokenizer, self.prompt_sets)
        base = {"prompts_sha256": file_sha256(self.hparams.select_prompts), "n_tiles": int(self.hparams.n_tiles),
                "clip_weights": self.clip_weights_sha256, "classes": self.classes}
        low = self.magnifications[0]
        for ds in dm.datasets.values():
            for sid, files in zip(ds.slide_ids, ds.files):
                sid = sid.split("#")[0]
                if sid in self.tiles:
                    continue
                attrs, _, _ = read_features_header(files[low])
                feats = torch.as_tensor(read_features(files[low])["features"])
                idx = select_tiles(feats, clip, classifier, self.hparams.n_tiles).tolist()
                ident = {**base, "features": attrs.get("identity") or file_sha256(files[low])}
                self.tiles[sid] = str(cache_tile_images(root / sid, files[low], idx, size, ident))
        self.model.to(self.device)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        batch = super().transfer_batch_to_device(batch, device, dataloader_idx)
        for sid, slide in zip(batch["slide_ids"], batch["slides"]):
            key = sid.split("#")[0]
            if key not in self.tiles:
                raise KeyError(f"mgpath/baselines: MSCPT has no low-magnification tile images for slide {key!r}; "
                               "they are chosen at setup for the data module's slides")
            slide[IMAGES] = load_tile_images(self.tiles[key]).to(device)
        return batch

    def _inputs(self, slide: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return slide[IMAGES], slide[self.magnifications[1]].features

    def forward(self, slides: list[dict]) -> torch.Tensor:
        return torch.stack([self.model(*self._inputs(s))[0] for s in slides])

    def loss(self, batch):
        """``CE(logits) + CE(logits_low) + CE(logits_high)`` per slide, mean over the batch (official: batch 1)."""
        out = [self.model.loss(*self._inputs(s), int(y)) for s, y in zip(batch["slides"], batch["labels"])]
        return torch.stack([o[0] for o in out]).mean(), torch.stack([o[1] for o in out])

    def on_validation_epoch_end(self):
        if self.recipe == "official":
            values = {k.removeprefix("val/"): float(v) for k, v in self.metrics["val"].compute().items()}
            self.log("val/mscpt_score", mscpt_selection_score(values, self.hparams.selection_score))
        super().on_validation_epoch_end()

    def configure_callbacks(self):
        """Gradient accumulation over ``accumulate`` slides (official ``--gc``; Lightning divides the loss) and,
        with ``recipe: official``, selection and early stopping on ``val/mscpt_score``."""
        n = int(self.hparams.accumulate)
        callbacks = [GradientAccumulationScheduler({0: n})] if n > 1 else []
        if self.recipe == "official":
            patience = int(self.hparams.patience)
            callbacks += [EarlyStoppingAfter(monitor="val/mscpt_score", mode="max", patience=patience),
                          BestCheckpoint(monitor="val/mscpt_score", mode="max", ties="first", save_last=True,
                                         save_top_k=1, filename="best-{epoch}-{val/mscpt_score:.4f}",
                                         auto_insert_metric_name=False)]
        return callbacks

    # ------------------------------------------------------------------ checkpoints without the frozen CLIP
    @functools.cached_property
    def clip_weights_sha256(self) -> str:
        """SHA-256 of the CLIP weights file (hashed once: checkpoints are saved every epoch)."""
        from mgpath.pipelines.identity import file_sha256
        from vapt.backbones.files import resolve

        return file_sha256(resolve(self.hparams.clip_checkpoint).file)

    def _clip_keys(self) -> set[str]:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k for k in self.state_dict() if k.startswith(_CLIP) and k not in trainable}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        frozen = self._clip_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
        checkpoint["mscpt"] = {"clip_weights": self.clip_weights_sha256}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        meta = checkpoint.get("mscpt")
        if meta is None:
            return  # a whole state dict: Lightning loads it strictly
        now = self.clip_weights_sha256
        if meta.get("clip_weights") != now:
            raise ValueError(f"mgpath/baselines: this MSCPT checkpoint was trained on a CLIP whose weights have "
                             f"SHA-256 {meta.get('clip_weights')}, but {self.hparams.clip_checkpoint} holds {now}; "
                             "give the CLIP folder it was trained with (clip_checkpoint)")
        own = self.state_dict()
        checkpoint["state_dict"] = {**{k: own[k] for k in self._clip_keys()}, **checkpoint["state_dict"]}


def mscpt_selection_score(values: dict[str, float], kind: str = "f1_auc") -> float:
    """MSCPT's model-selection score of one validation epoch from ``values`` (``f1`` macro, ``auc``, ``acc``):
    ``(f1 + auc) / 2`` (``f1_auc``) or ``(f1 + acc) / 2`` (``f1_acc``)."""
    return (values["f1"] + values[_SCORES[kind]]) / 2
