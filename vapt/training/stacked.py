"""K configurations of one method trained in one pass, each with the result of its own separate run.

The K configurations (grid points or seeds of one stage) share the frozen backbone. Every step, each one takes
its own batch (its own data order), the K batches go through the frozen blocks as one ``(K * B)`` batch with
each configuration's own prompts inserted, and each configuration's head, loss, optimiser (its own SGD /
AdamW state, learning rate, weight decay and schedule) and metrics stay separate. Random draws of a
configuration (prompt dropout, VAPT's Dropout2d and MLP dropout) come from its own generator state, started
where its separate run's global generator stands when training begins, so with dropout on each
configuration draws the masks of its separate run.

For a method whose whole trunk is frozen (linear probe) the pooled features come from a `TrunkCache` and only
the heads train.

Each configuration is built by the same LightningCLI as its separate run (same seed, same initial tensors,
same optimiser and schedule code of `PromptTuningModule`); the loop below replays what Lightning does with
them (automatic optimisation, per-epoch or per-step schedule, last-epoch validation / test with the same
metric objects and the same batch-size-weighted loss mean).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vapt.data.base import EpochSeededRandomSampler
from vapt.fileio.atomic import atomic_path
from vapt.training.decoded import decoded_split
from vapt.training.lightning_cli import build_cli
from vapt.training.sweep_errors import SweepError
from vapt.training.trunk_cache import TrunkCache, frozen_prefix, tensors_fingerprint


class RngStream:
    """A configuration's own random stream: the global CPU (and CUDA) generator state, swapped in around the
    draws of that configuration only."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def active(self):
        saved_cpu = torch.get_rng_state()
        saved_cuda = torch.cuda.get_rng_state(self.device) if self.cuda is not None else None
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:
            self.cpu = torch.get_rng_state()
            torch.set_rng_state(saved_cpu)
            if self.cuda is not None:
                self.cuda = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(saved_cuda, self.device)


@dataclass
class Member:
    """One configuration of a stacked pass: its module, data, optimiser, schedule and random stream."""

    run_dir: Path
    overrides: dict[str, Any]
    module: Any
    datamodule: Any
    max_epochs: int
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    interval: str = "epoch"
    rng: RngStream | None = None
    backbone_id: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def _cli_value(v: Any) -> str:
    return "null" if v is None else str(v)


def build_member(cli_args: Sequence[str], run_dir: Path, overrides: dict[str, Any]) -> Member:
    """Instantiate one configuration exactly as its separate run does (same CLI, seed and initial tensors)."""
    args = list(cli_args) + [f"--trainer.default_root_dir={run_dir}", "--trainer.logger=false",
                             "--trainer.enable_checkpointing=false"]
    args += [f"--{k}={_cli_value(v)}" for k, v in overrides.items()]
    cli = build_cli(args, run=False, log_name="")
    trainer, module, dm = cli.trainer, cli.model, cli.datamodule
    _check_supported(trainer, module)
    dm.prepare_data()
    dm.setup("fit")
    device = trainer.strategy.root_device
    member = Member(Path(run_dir), dict(overrides), module, dm, int(trainer.max_epochs), device=device)
    member.rng = RngStream(device)  # the separate run's global stream as training starts
    member.backbone_id = tensors_fingerprint(module.model.backbone.state_dict())
    return member


def _check_supported(trainer, module) -> None:
    hp = module.hparams
    problems = []
    if trainer.world_size != 1:
        problems.append(f"{trainer.world_size} devices (one device per pass; spread passes with --cluster)")
    if trainer.accumulate_grad_batches != 1:
        problems.append("trainer.accumulate_grad_batches != 1")
    if str(trainer.precision) not in ("32-true", "32"):
        problems.append(f"trainer.precision {trainer.precision}")
    if trainer.gradient_clip_val:
        problems.append("trainer.gradient_clip_val")
    if hp.method == "full":
        problems.append("method 'full' (the backbone itself trains)")
    if hp.compile:
        problems.append("model.compile")
    if not trainer.max_epochs or trainer.max_epochs < 1 or trainer.max_steps not in (-1, None):
        problems.append("a step budget instead of trainer.max_epochs")
    if trainer.limit_train_batches not in (1.0, None) or trainer.limit_val_batches not in (1.0, None):
        problems.append("trainer.limit_*_batches")
    if problems:
        raise SweepError("--stack cannot reproduce separate runs with " + "; ".join(problems)
                         + ". Run this sweep without --stack.")


def configure_member(member: Member, steps_per_epoch: int) -> None:
    """The optimiser and schedule of `PromptTuningModule.configure_optimizers`, built by that same method."""
    module, dm = member.module, member.datamodule
    module.trainer = SimpleNamespace(  # what configure_optimizers reads from a Trainer
        datamodule=dm, world_size=1, accumulate_grad_batches=1, max_epochs=member.max_epochs,
        estimated_stepping_batches=member.max_epochs * steps_per_epoch)
    conf = module.configure_optimizers()
    module._trainer = None
    if isinstance(conf, dict):
        member.optimizer = conf["optimizer"]
        member.scheduler = conf["lr_scheduler"]["scheduler"]
        member.interval = conf["lr_scheduler"]["interval"]
    else:
        member.optimizer, member.scheduler = conf, None


# ---------------------------------------------------------------------------------------------- forward
def stacked_logits(members: Sequence[Member], images: torch.Tensor | None = None,
                   features: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Logits of K configurations, each on its own batch.

    Parameters
    ----------
    members : K configurations sharing one frozen backbone
    images : (K, B, 3, H, W), optional
        Configuration k's batch is ``images[k]``; run through the backbone as one (K * B) batch.
    features : (K, B, F), optional
        Cached pooled features (whole-trunk methods) instead of images.

    Returns
    -------
    list of K tensors (B, num_classes)
    """
    models = [m.module.model for m in members]
    if features is None:
        features = _stacked_features(models, [m.rng for m in members], images)
    return [model.head(features[k]) for k, model in enumerate(models)]


def _stacked_features(models, streams, images: torch.Tensor) -> torch.Tensor:
    """(K, B, 3, H, W) -> pooled features (K, B, F); the block computations of `PromptedViT.forward_features`
    with the K prompt sets side by side."""
    k, b = images.shape[:2]
    enc = models[0].backbone
    h = enc.embed(images.flatten(0, 1))
    if models[0].prompts is None:
        for block in enc.blocks:
            h = enc.run_block(block, h)
        return enc.pool(enc.final_norm(h), num_skip=enc.num_prefix_tokens).view(k, b, -1)
    prompts = [m.prompts for m in models]
    n = prompts[0].num_tokens
    first = n + enc.num_prefix_tokens  # first patch token after prompt insertion
    h = h.view(k, b, *h.shape[1:])

    def each(fn: Callable[[int], torch.Tensor]) -> torch.Tensor:
        out = []
        for j, stream in enumerate(streams):
            with stream.active():
                out.append(fn(j).to(h.dtype))
        return torch.stack(out)

    h = torch.cat([h[:, :, :1], each(lambda j: prompts[j].input_prompts(b)), h[:, :, 1:]], dim=2)
    matrices = [p.adaptive_token_matrices() for p in prompts]
    for i, block in enumerate(enc.blocks):
        if prompts[0].replaces_prompts(i):
            new = each(lambda j, i=i, h=h: prompts[j].prompts_for_block(i, h[j, :, first:], matrices[j]))
            h = torch.cat([h[:, :, :1], new, h[:, :, 1 + n:]], dim=2)
        h = enc.run_block(block, h.flatten(0, 1)).view(h.shape)
    # official MAE pooling averages everything after CLS, prompts and registers included
    return enc.pool(enc.final_norm(h.flatten(0, 1)), num_skip=1).view(k, b, -1)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class SplitData:
    """One split held once for the pass: decoded images (or cached features) and labels, on the device."""

    inputs: torch.Tensor
    labels: torch.Tensor
    cached: bool


def split_data(member: Member, which: str, trunk_cache: TrunkCache | None) -> SplitData:
    """The ``train`` / ``val`` / ``test`` split of a member: cached features for whole-trunk methods when a cache
    is given, decoded images otherwise."""
    module, dm = member.module, member.datamodule
    dataset = dm.datasets[which]
    device = next(module.parameters()).device
    labels = torch.tensor([y for _, y in dataset.samples], dtype=torch.long, device=device)
    model = module.model
    if trunk_cache is not None and frozen_prefix(model.prompt_config, len(model.backbone.blocks)).whole_trunk:
        feats = trunk_cache.features(model, dataset, module.hparams.backbone, batch_size=dm.batch_size,
                                     device=device, num_workers=dm.num_workers)
        return SplitData(feats.to(device), labels, True)
    images, _ = decoded_split(dataset)
    return SplitData(images.to(device), labels, False)


# ---------------------------------------------------------------------------------------------- loops
def _forward(members, data: SplitData, index: list[torch.Tensor]) -> list[torch.Tensor]:
    batch = torch.stack([data.inputs[i] for i in index])
    return stacked_logits(members, features=batch) if data.cached else stacked_logits(members, images=batch)


def train_pass(members: Sequence[Member], train: SplitData) -> None:
    """Train every member for its ``max_epochs`` on its own order of ``train`` (what Lightning's fit does)."""
    n, bs = len(train.labels), members[0].datamodule.batch_size
    steps = -(-n // bs)
    for m in members:
        configure_member(m, steps)
        m.module.train()
    samplers = [EpochSeededRandomSampler(n, m.datamodule.seed) for m in members]
    for epoch in range(members[0].max_epochs):
        orders = []
        for s in samplers:
            s.set_epoch(epoch)
            orders.append(torch.tensor(list(iter(s)), dtype=torch.long, device=train.labels.device))
        for step in range(steps):
            index = [o[step * bs:(step + 1) * bs] for o in orders]
            for m in members:
                m.optimizer.zero_grad(set_to_none=True)
            logits = _forward(members, train, index)
            loss = sum(F.cross_entropy(lg, train.labels[i], label_smoothing=m.module.hparams.label_smoothing)
                       for lg, i, m in zip(logits, index, members))
            loss.backward()
            for m in members:
                m.optimizer.step()
                if m.scheduler is not None and m.interval == "step":
                    m.scheduler.step()
        for m in members:
            if m.scheduler is not None and m.interval == "epoch":
                m.scheduler.step()


def eval_batches(member: Member, which: str, trunk_cache: TrunkCache | None):
    """Batches ``(inputs, labels, cached)`` of the ``val`` / ``test`` split in dataset order: cached features,
    the decoded validation images, or the test images streamed by the DataModule's own loader (a test split
    can be far larger than memory)."""
    bs = member.datamodule.batch_size
    if which == "val" or trunk_cache is not None and frozen_prefix(
            member.module.model.prompt_config, len(member.module.model.backbone.blocks)).whole_trunk:
        data = split_data(member, which, trunk_cache)
        for start in range(0, len(data.labels), bs):
            yield data.inputs[start:start + bs], data.labels[start:start + bs], data.cached
        return
    device = next(member.module.parameters()).device
    for images, labels in member.datamodule.test_dataloader():
        yield images.to(device), labels.to(device), False


@torch.no_grad()
def evaluate_pass(members: Sequence[Member], batches, stage: str) -> list[dict[str, float]]:
    """``{stage}/loss`` and ``{stage}/acc`` of every member over ``batches`` (see `eval_batches`), aggregated as
    Lightning logs them (batch-size-weighted float32 loss mean, the module's own accuracy metric)."""
    for m in members:
        m.module.eval()
    metrics = [getattr(m.module, f"{stage}_acc") for m in members]
    for metric in metrics:
        metric.reset()
    totals = [torch.tensor(0.0) for _ in members]
    count = torch.tensor(0)
    for inputs, labels, cached in batches:
        batch = inputs.expand(len(members), *inputs.shape)
        logits = stacked_logits(members, features=batch) if cached else stacked_logits(members, images=batch)
        for j, (lg, m) in enumerate(zip(logits, members)):
            loss = F.cross_entropy(lg, labels, label_smoothing=m.module.hparams.label_smoothing)
            metrics[j](lg, labels)
            totals[j] = totals[j] + loss.cpu() * len(labels)
        count = count + len(labels)
    return [{f"{stage}/loss": float(t / count), f"{stage}/acc": float(metric.compute())}
            for t, metric in zip(totals, metrics)]


def group_members(members: Sequence[Member]) -> list[list[Member]]:
    """Members that can share one pass: same backbone tensors, method set-up, split and batch size."""
    groups: dict[tuple, list[Member]] = {}
    for m in members:
        hp = m.module.hparams
        dm = m.datamodule
        key = (m.backbone_id, repr(m.module.prompt_config.to_dict()), dm.batch_size, repr(dm.splits),
               tuple(p for p, _ in dm.datasets["train"].samples), m.max_epochs, m.module.model.num_classes,
               hp.optimizer)
        groups.setdefault(key, []).append(m)
    return list(groups.values())


def save_trainable(member: Member) -> Path:
    """Write the member's trained tensors (prompts + head) to ``<run_dir>/trainable.safetensors`` (atomic)."""
    path = member.run_dir / "trainable.safetensors"
    tensors = {k: v.cpu().contiguous() for k, v in member.module.model.trainable_state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, tmp)
    return path


def run_stacked(members: Sequence[Member], evaluate: str, trunk_cache: TrunkCache | None = None
                ) -> list[dict[str, Any]]:
    """Train members sharing one pass and evaluate each (``validate`` -> val split, ``test`` -> test split).

    Returns one result dict per member, in the layout `vapt tune` writes to ``result.json``.
    """
    t0 = time.time()
    first = members[0]
    for m in members:  # one frozen backbone for the pass (group_members checked that the tensors agree)
        m.module.model.backbone = first.module.model.backbone
        m.module.to(first.device)
    train = split_data(first, "train", trunk_cache)
    train_pass(members, train)
    which = "val" if evaluate == "validate" else "test"
    first.datamodule.setup("validate" if which == "val" else "test")
    results = evaluate_pass(members, eval_batches(first, which, trunk_cache), which)
    seconds = round((time.time() - t0) / len(members), 2)
    for m in members:
        save_trainable(m)
    return [{"metrics": metrics, "overrides": m.overrides, "epochs": m.max_epochs,
             "effective_lr": m.module.effective_lr, "resumed_from": None, "seconds": seconds,
             "engine": f"stacked x{len(members)}" + (" + cached trunk" if train.cached else "")}
            for m, metrics in zip(members, results)]
