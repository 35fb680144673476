"""Fine-tuning and sparse training of an ONNX model through the torch executor.

The model is run by :class:`~onnxprune.retrain.interpreter.OnnxModule`, trained with cross-entropy
(optionally distilled from a teacher ONNX model), and written back into a copy of the original
ModelProto: the graph never changes, only initializer values do.

Sparse training adds a penalty on the BatchNormalization scales γ (all of them, network-wide):

- ``l1`` (network slimming, Liu et al. 2017): λ·Σ|γ|;
- ``polarization`` (Zhuang et al. 2020): λ·Σ(t·|γ| − |γ − γ̄|), γ̄ the mean of all γ,
  with every γ clamped to [0, a] before training and after each optimizer step. The first term
  pulls scales to 0, the second pushes them away from the mean: they split into two clusters.

Runs are seeded and resumable: the data order, augmentation and dropout of epoch e depend only
on (seed, e), and a checkpoint (module, optimizer, schedule, history) is written after every
epoch, so a resumed run continues as if it had never stopped. Started by ``torchrun``, training
is data-parallel (torch DistributedDataParallel, one data shard per process; BN statistics stay
per process); only rank 0 writes checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.distributed as dist
import torch.nn.functional as F
from onnx import numpy_helper
from torch import Tensor, nn
from tqdm import tqdm

from onnxprune.core.errors import InputError, OptionError
from onnxprune.retrain.evaluate import LabelledData, check_label_range
from onnxprune.retrain.interpreter import OnnxModule, separate_constant_copies
from onnxprune.retrain.masks import WeightMasks
from onnxprune.retrain.renorm import Unfolded, recalibrate, unfold_batchnorm
from onnxprune.retrain.writeback import write_back

log = logging.getLogger(__name__)


class TrainingDiverged(OptionError):
    """The loss became inf/NaN: a failed run (exit 1), never a NaN model written with exit 0."""

    exit_code = 1


OPTIMIZERS = ("sgd", "adamw")
AUGMENTATIONS = ("crop", "flip")
REGULARIZERS = ("l1", "polarization")
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-3}
CHECKPOINT_FILE = "checkpoint.pt"
CALIBRATION_SAMPLES = 1024  # images measuring the statistics of re-inserted BatchNorms


@dataclass(frozen=True)
class Sparsity:
    """The BN-scale penalty of sparse training; ``t`` and ``a`` matter for polarization only."""

    reg: str = "l1"
    lam: float = 1e-4
    t: float = 1.2
    a: float = 1.0

    def __post_init__(self) -> None:
        if self.reg not in REGULARIZERS:
            raise InputError(f"unknown regulariser '{self.reg}'; choose one of {', '.join(REGULARIZERS)}")
        if self.lam < 0 or self.t < 0 or self.a <= 0:
            raise InputError("sparsity needs lambda >= 0, t >= 0 and a > 0")

    def penalty(self, gammas: Sequence[Tensor]) -> Tensor:
        """λ·Σ|γ| (l1) or λ·Σ(t|γ| − |γ − γ̄|) (polarization), over every scale of the network."""
        values = torch.cat([g.reshape(-1) for g in gammas])
        if self.reg == "l1":
            return self.lam * values.abs().sum()
        return self.lam * (self.t * values.abs() - (values - values.mean()).abs()).sum()

    @torch.no_grad()
    def project(self, gammas: Sequence[Tensor]) -> None:
        """Polarization keeps every γ in [0, a]; L1 leaves them free."""
        if self.reg == "polarization":
            for gamma in gammas:
                gamma.clamp_(0.0, self.a)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the model and the data; ``lr=None`` picks the
    optimizer's default (SGD 0.01, AdamW 1e-3). ``distill_alpha`` weighs the teacher's term."""

    epochs: int = 1
    lr: float | None = None
    batch_size: int = 128
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: tuple[str, ...] = ()
    seed: int = 0
    device: str = "cpu"
    checkpoint: str | None = None
    resume: bool = False
    distill_alpha: float = 0.5
    temperature: float = 4.0
    sparsity: Sparsity | None = None
    progress: bool = False
    unfold_batchnorm: bool = True  # train BN-less Convs (folded by prune/optimize) with a BatchNorm, refold after
    recalibrate_bn: bool = False  # re-measure every BN's running statistics after each epoch (re-inserted ones always)
    keep_sparsity: bool | None = None  # zero weights stay zero (None: in tensors at least 25 % zero; retrain.masks)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer '{self.optimizer}'; choose one of {', '.join(OPTIMIZERS)}")
        unknown = sorted(set(self.augment) - set(AUGMENTATIONS))
        if unknown:
            raise InputError(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("epochs and batch size must be at least 1")
        if self.resume and not self.checkpoint:
            raise OptionError("{} needs {} DIR", "resume", "checkpoint")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


@dataclass
class EpochStats:
    epoch: int
    loss: float
    accuracy: float
    lr: float
    seconds: float
    penalty: float | None = None
    val_top1: float | None = None


@dataclass
class TrainResult:
    model: onnx.ModelProto
    history: list[EpochStats] = field(default_factory=list)


# --- environment ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distributed:
    """Process placement as torchrun describes it in the environment (world 1 without it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> bool:
        """Join the process group torchrun set up; True if this call created it."""
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            return True
        return False


def is_main_process() -> bool:
    """False on the non-zero ranks of a torchrun launch: they neither print nor write."""
    return Distributed.from_env().main


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; CUDA without a GPU is a clear InputError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"{{}} {name}: CUDA is not available (torch {torch.__version__} sees no GPU)", "device")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name != "cpu":
        raise InputError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto")
    return torch.device("cpu")


def batchnorm_scales(module: OnnxModule) -> dict[str, nn.Parameter]:
    """The trainable scale γ of every BatchNormalization, by initializer name."""
    parameters = module.onnx_parameters()
    names = [node.inputs[1] for node in module.nodes if node.op_type == "BatchNormalization"]
    return {name: parameters[name] for name in dict.fromkeys(names) if name in parameters}


def batchnorm_scale_values(model: onnx.ModelProto) -> np.ndarray:
    """All BN scales of a ModelProto concatenated (for before/after summaries; no torch)."""
    inits = {t.name: t for t in model.graph.initializer}
    names = dict.fromkeys(n.input[1] for n in model.graph.node if n.op_type == "BatchNormalization")
    arrays = [numpy_helper.to_array(inits[name]).reshape(-1) for name in names if name in inits]
    return np.concatenate(arrays) if arrays else np.zeros(0, np.float32)


def fingerprint(model: onnx.ModelProto) -> str:
    """Initializer names and shapes plus the node list: what a checkpoint must match to resume."""
    digest = hashlib.sha256()
    for tensor in model.graph.initializer:
        digest.update(f"{tensor.name}:{list(tensor.dims)};".encode())
    for node in model.graph.node:
        digest.update(f"{node.op_type}({','.join(node.input)})->{','.join(node.output)};".encode())
    return digest.hexdigest()


# --- batches ----------------------------------------------------------------------------------


def augment(x: Tensor, kinds: tuple[str, ...], generator: torch.Generator) -> Tensor:
    """Random horizontal flip and random crop after zero padding by H/8 (4 px at 32x32)."""
    n, _, height, width = x.shape
    if "flip" in kinds:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if "crop" in kinds:
        pad = max(1, height // 8)
        padded = F.pad(x, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
        rows = offsets[:, :1] + torch.arange(height)
        cols = offsets[:, 1:] + torch.arange(width)
        x = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return x.contiguous()


def epoch_order(count: int, seed: int, epoch: int, placement: Distributed) -> tuple[np.ndarray, torch.Generator]:
    """This process's shuffled sample indices for ``epoch``, and the generator that made them."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(count, generator=generator).numpy()
    usable = count - count % placement.world if placement.world > 1 else count
    return order[:usable][placement.rank::placement.world], generator


# --- the loop ---------------------------------------------------------------------------------


class Trainer:
    """One training run: module, optimizer, cosine schedule, optional teacher and sparsity."""

    def __init__(self, model: onnx.ModelProto, train: LabelledData, config: TrainConfig,
                 val: LabelledData | None = None, teacher: onnx.ModelProto | None = None) -> None:
        self.model, self.train, self.val, self.config = model, train, val, config
        self.placement = Distributed.from_env()
        self.device = resolve_device(config.device, self.placement.local_rank)
        self.owns_group = self.placement.start(self.device)
        torch.manual_seed(config.seed)
        self.unfolded: Unfolded | None = None
        if config.unfold_batchnorm and config.sparsity is None:
            self.unfolded = unfold_batchnorm(model, self._calibration_batches(), self.device)
            if self.unfolded is not None:
                log.info("training with %d BatchNormalization(s) re-inserted after BN-less Convs, folded back after",
                         len(self.unfolded.plan))
        self.module = OnnxModule(self.unfolded.model if self.unfolded is not None else model).to(self.device)
        self.masks = WeightMasks(self.module.onnx_parameters(), config.keep_sparsity)
        self.net: nn.Module = self.module
        if self.placement.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        self.teacher = OnnxModule(teacher).to(self.device).eval() if teacher is not None else None
        self.gammas = list(batchnorm_scales(self.module).values())
        if config.sparsity is not None and not self.gammas:
            raise InputError("sparse training needs BatchNormalization scales; the model has none")
        if config.sparsity is not None:
            _project_at_start(config.sparsity, self.gammas)
        self.optimizer = _optimizer(self.module, config)
        shard = len(train) // self.placement.world if self.placement.world > 1 else len(train)
        steps = math.ceil(shard / config.batch_size)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, steps * config.epochs))
        self.history: list[EpochStats] = []
        self.start_epoch = self._resume() if config.resume else 0

    def run(self) -> TrainResult:
        try:
            for epoch in range(self.start_epoch, self.config.epochs):
                self.history.append(self._epoch(epoch))
                self._save_checkpoint(epoch + 1)
        finally:
            if self.owns_group:
                dist.destroy_process_group()
        arrays = self.module.initializer_arrays()
        trained = write_back(self.model, self.unfolded.refold(arrays) if self.unfolded is not None else arrays)
        return TrainResult(trained, list(self.history))

    def _epoch(self, epoch: int) -> EpochStats:
        started = time.perf_counter()
        self.net.train()
        torch.manual_seed(self.config.seed * 1_000_003 + epoch)  # dropout
        order, generator = epoch_order(len(self.train), self.config.seed, epoch, self.placement)
        totals = np.zeros(3)  # loss * n, correct, n
        penalty = None
        bar = tqdm(range(0, len(order), self.config.batch_size), desc=f"epoch {epoch + 1}/{self.config.epochs}",
                   disable=None if self.config.progress and self.placement.main else True, leave=False)
        for start in bar:
            index = np.sort(order[start:start + self.config.batch_size])
            x = augment(torch.from_numpy(self.train.inputs(index)), self.config.augment, generator)
            loss, correct, penalty = self._step(x, torch.from_numpy(self.train.labels[index]))
            totals += (loss * len(index), correct, len(index))
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.4f}", acc=f"{100 * totals[1] / totals[2]:.2f}%")
        bar.close()
        if self.config.recalibrate_bn or self.unfolded is not None:  # running averages lag the weights: re-measure
            only = None if self.config.recalibrate_bn or self.unfolded is None else self.unfolded.bn_inputs
            recalibrate(self.module, self._calibration_batches(), self.device, only)
        val_top1 = None
        if self.val is not None and self.placement.main:
            val_top1 = accuracy(self.module, self.val, self.config.batch_size, self.device)
        # the learning rate is a plain float (TrainConfig.learning_rate); float() narrows torch's float | Tensor
        lr = float(self.scheduler.get_last_lr()[0])
        return EpochStats(epoch + 1, float(totals[0] / totals[2]), float(totals[1] / totals[2]), lr,
                          time.perf_counter() - started, penalty, val_top1)

    def _calibration_batches(self) -> Iterator[np.ndarray]:
        """The first CALIBRATION_SAMPLES training inputs, unaugmented, in file order (the same on every rank)."""
        count = min(len(self.train), CALIBRATION_SAMPLES)
        for start in range(0, count, self.config.batch_size):
            yield self.train.inputs(slice(start, min(count, start + self.config.batch_size)))

    def _step(self, x: Tensor, y: Tensor) -> tuple[float, int, float | None]:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        logits = self.net(x)
        loss = self._loss(logits, y, x)
        penalty = self.config.sparsity.penalty(self.gammas) if self.config.sparsity is not None else None
        total = loss + penalty if penalty is not None else loss
        if not torch.isfinite(total):
            raise TrainingDiverged(f"the training loss is {float(total.detach())}: training diverged "
                                   f"(lower the {{}} {self.config.lr:g}); nothing written", "lr")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.masks.apply()
        self.scheduler.step()
        if self.config.sparsity is not None:
            self.config.sparsity.project(self.gammas)
        correct = int((logits.argmax(1) == y).sum())
        return float(loss.detach()), correct, None if penalty is None else float(penalty.detach())

    def _loss(self, logits: Tensor, y: Tensor, x: Tensor) -> Tensor:
        """Cross-entropy, blended with the teacher's softened outputs (Hinton KD) when there is one."""
        hard = F.cross_entropy(logits, y)
        if self.teacher is None:
            return hard
        with torch.no_grad():
            target = self.teacher(x)
        t, alpha = self.config.temperature, self.config.distill_alpha
        soft = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(target / t, 1),
                        reduction="batchmean", log_target=True)
        return (1 - alpha) * hard + alpha * t * t * soft

    def _checkpoint_path(self) -> Path | None:
        return Path(self.config.checkpoint) / CHECKPOINT_FILE if self.config.checkpoint else None

    def _save_checkpoint(self, epochs_done: int) -> None:
        path = self._checkpoint_path()
        if path is None or not self.placement.main:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "epochs_done": epochs_done, "fingerprint": fingerprint(self.model),
            "module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "history": [asdict(h) for h in self.history],
        }
        staged = path.with_suffix(".tmp")
        torch.save(state, staged)
        os.replace(staged, path)

    def _resume(self) -> int:
        path = self._checkpoint_path()
        if path is None or not path.is_file():
            log.warning("nothing to resume in %s: starting at epoch 1", self.config.checkpoint)
            return 0
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["fingerprint"] != fingerprint(self.model):
            raise OptionError(f"checkpoint {path} was written for a different model; remove it or use another {{}}",
                              "checkpoint")
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = [EpochStats(**h) for h in state["history"]]
        log.info("resumed from %s after epoch %d", path, state["epochs_done"])
        return int(state["epochs_done"])


def _project_at_start(sparsity: Sparsity, gammas: Sequence[Tensor]) -> None:
    """Polarization starts from γ in [0, a]; say how many scales that moved."""
    values = torch.cat([g.detach().reshape(-1) for g in gammas])
    outside = int(((values < 0) | (values > sparsity.a)).sum())
    if sparsity.reg == "polarization" and outside:
        log.warning("polarization: %d of %d BN scales clamped into [0, %g] before training",
                    outside, len(values), sparsity.a)
    sparsity.project(gammas)


def _optimizer(module: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay)


@torch.no_grad()
def accuracy(module: OnnxModule, labelled: LabelledData, batch_size: int = 256,
             device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of the torch module in eval mode (the per-epoch check; onnxruntime judges)."""
    was_training = module.training
    module.eval()
    correct = 0
    for x, y in labelled.batches(batch_size):
        correct += int((module(torch.from_numpy(x).to(device)).argmax(1).cpu() == torch.from_numpy(y)).sum())
    module.train(was_training)
    return correct / len(labelled)


def _check_classes(model: onnx.ModelProto, train: LabelledData, config: TrainConfig) -> None:
    """Labels must index the model's logits: one forward pass tells the class count."""
    module = OnnxModule(model).eval()
    with torch.no_grad():
        logits = module(torch.from_numpy(train.inputs(slice(0, 1))))
    if logits.dim() != 2:
        raise InputError(f"the model's output has shape {list(logits.shape)}; training needs [batch, classes] logits")
    check_label_range(train.labels, logits.shape[1], train.source)


def finetune(model: onnx.ModelProto, train: LabelledData, config: TrainConfig | None = None,
             val: LabelledData | None = None, teacher: onnx.ModelProto | None = None) -> TrainResult:
    """Train ``model``'s float initializers on ``train`` and return the updated copy and history."""
    config = config or TrainConfig()
    _check_classes(model, train, config)
    return Trainer(separate_constant_copies(model), train, config, val, teacher).run()


def sparse_train(model: onnx.ModelProto, train: LabelledData, sparsity: Sparsity,
                 config: TrainConfig | None = None, val: LabelledData | None = None) -> TrainResult:
    """Fine-tuning with ``sparsity``'s penalty on the BN scales (L1 or polarization)."""
    return finetune(model, train, replace(config or TrainConfig(), sparsity=sparsity), val)


PruneStep = Callable[[onnx.ModelProto, int], "onnx.ModelProto | None"]


def iterative_pruning(model: onnx.ModelProto, prune_step: PruneStep, train: LabelledData,
                      config: TrainConfig | None = None, val: LabelledData | None = None,
                      rounds: int = 10) -> tuple[onnx.ModelProto, list[list[EpochStats]]]:
    """Li, Zhu & Liu's loop: prune a fraction, fine-tune briefly, repeat until ``prune_step`` returns
    None (target met) or ``rounds`` are done. Each round checkpoints into ``<checkpoint>/round<r>``."""
    config = config or TrainConfig()
    histories: list[list[EpochStats]] = []
    for round_index in range(rounds):
        pruned = prune_step(model, round_index)
        if pruned is None:
            break
        checkpoint = str(Path(config.checkpoint) / f"round{round_index}") if config.checkpoint else None
        result = finetune(pruned, train, replace(config, checkpoint=checkpoint), val)
        model, histories = result.model, histories + [result.history]
    return model, histories
