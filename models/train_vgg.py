"""Train VGG-16-BN on CIFAR-10 with onnxprune's own training loop, and export it to ONNX.

The network (``models.reference.VGG16BN``, seeded initialisation) is exported to ONNX first and
then trained through ``onnxprune.retrain`` -- the same executor, loop, checkpoints and
write-back the ``onnxprune finetune`` command uses -- so the result is an ONNX file directly.
Recipe: SGD momentum 0.9, lr 0.1 cosine-annealed to 0, weight decay 5e-4, batch 128, random crop
and flip, 160 epochs. It needs a GPU to finish in reasonable time (an epoch is minutes on 2 CPU
cores); a checkpoint is written after every epoch, and ``--resume`` continues an interrupted run.

    python models/train_vgg.py --device cuda                      # -> models/vgg16_cifar10.onnx
    python models/train_vgg.py --device cuda --resume             # after an interruption
    torchrun --nproc_per_node 4 models/train_vgg.py --device cuda # data-parallel on 4 GPUs
    python models/train_vgg.py --epochs 1 --limit 512             # smoke test on the CPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.architectures import export  # noqa: E402
from models.reference import PREPROCESSING, VGG16BN  # noqa: E402
from onnxprune.core import model as model_io  # noqa: E402
from onnxprune.core.datasets import declare_normalisation  # noqa: E402
from onnxprune.retrain.evaluate import evaluate, load_labelled  # noqa: E402
from onnxprune.retrain.train import TrainConfig, finetune, is_main_process  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10.npz"
DEFAULT_OUT = ROOT / "models" / "vgg16_cifar10.onnx"
DEFAULT_CHECKPOINT = ROOT / "models" / "checkpoints" / "vgg16"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint folder")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--epochs", type=int, default=160)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="use only the first N images of each split (smoke tests)")
    return parser.parse_args()


def initial_model(seed: int):
    """The untrained network as ONNX (BatchNormalization kept, dynamic batch), deterministic in ``seed``."""
    torch.manual_seed(seed)
    model = export(VGG16BN().eval(), (1, 3, 32, 32), opset=13, dynamic_batch=True)
    declare_normalisation(model, PREPROCESSING["cifar10"]["mean"], PREPROCESSING["cifar10"]["std"])
    return model


def main() -> None:
    args = parse_args()
    model = initial_model(args.seed)
    spec = PREPROCESSING["cifar10"]
    train = load_labelled(args.data, model, "train", spec["mean"], spec["std"], args.limit)
    test = load_labelled(args.data, model, "test", spec["mean"], spec["std"], args.limit)
    config = TrainConfig(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch, optimizer="sgd", momentum=0.9,
        weight_decay=args.weight_decay, augment=("crop", "flip"), seed=args.seed, device=args.device,
        checkpoint=str(args.checkpoint), resume=args.resume, progress=True,
    )
    result = finetune(model, train, config, val=test)
    if not is_main_process():
        return
    for h in result.history:
        print(f"epoch {h.epoch}: loss {h.loss:.4f}  train {h.accuracy:.2%}  test {h.val_top1:.2%}")
    model_io.save(result.model, args.out)
    print(f"wrote {args.out}; onnxruntime on the test set: {evaluate(result.model, test)}")


if __name__ == "__main__":
    main()
