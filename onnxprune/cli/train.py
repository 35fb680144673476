"""Commands that train or score with data: finetune, sparse-train, evaluate.

torch (the ``[train]`` extra) is imported inside the training handlers only, so every other
command, ``evaluate`` included, works without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
from types import ModuleType

import numpy as np

from onnxprune.cli.options import common_options, emit, names, normalisation_options
from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.core.errors import InputError
from onnxprune.retrain import evaluate as scoring

SPARSE_THRESHOLD = 0.01  # |γ| below this counts as (nearly) zero in the summaries


def register(commands) -> None:
    _add_evaluate(commands)
    _add_finetune(commands)
    _add_sparse_train(commands)


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="FILE",
                        help=".npz with x_train/y_train (training) and x_test/y_test (evaluation)")
    normalisation_options(parser)
    parser.add_argument("--limit", type=int, help="use only the first N samples of each split")


def _training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input")
    parser.add_argument("output")
    _data_options(parser)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, help="learning rate (default: sgd 0.01, adamw 0.001), cosine-annealed to 0")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--augment", type=names, default=[], metavar="crop,flip",
                        help="random crop (zero pad H/8) and/or horizontal flip; off by default")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is often fastest for small models)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", metavar="DIR", help="write a checkpoint after every epoch")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint DIR")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the before/after accuracy on x_test with onnxruntime")
    parser.add_argument("--external-data", action="store_true", help="store weights in OUTPUT.data")
    parser.add_argument("--keep-sparsity", action=argparse.BooleanOptionalAction, default=None,
                        help="keep zero weights at zero (masked updates); default: in tensors at least 25 %% zero")
    common_options(parser, data_option=False)


def _add_evaluate(commands) -> None:
    parser = commands.add_parser("evaluate", help="top-1/top-5 accuracy on labelled data, with onnxruntime")
    parser.add_argument("model")
    _data_options(parser)
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="x_test/y_test (default) or x_train/y_train")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    common_options(parser, data_option=False)
    parser.set_defaults(handler=_evaluate)


def _add_finetune(commands) -> None:
    parser = commands.add_parser("finetune", help="train the model's weights on labelled data (needs torch)")
    _training_options(parser)
    parser.add_argument("--teacher", metavar="MODEL", help="distil from this ONNX model's logits")
    parser.add_argument("--distill-alpha", type=float, default=0.5, help="weight of the teacher's term (default 0.5)")
    parser.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    parser.set_defaults(handler=_finetune)


def _add_sparse_train(commands) -> None:
    parser = commands.add_parser("sparse-train",
                                 help="train with an L1 or polarization penalty on BN scales (needs torch)")
    _training_options(parser)
    parser.add_argument("--reg", choices=("l1", "polarization"), required=True)
    parser.add_argument("--lambda", dest="lam", type=float, default=1e-4, help="penalty weight (default 1e-4)")
    parser.add_argument("--t", type=float, default=1.2, help="polarization: weight of the L1 term (default 1.2)")
    parser.add_argument("--a", type=float, default=1.0, help="polarization: upper bound of γ (default 1)")
    parser.set_defaults(handler=_sparse_train)


def _shape(args: argparse.Namespace) -> tuple[int, ...] | None:
    shapes = data.parse_input_shapes(args.input_shape)
    return next(iter(shapes.values())) if shapes else None


def _load(args: argparse.Namespace, model, split: str) -> scoring.LabelledData:
    return scoring.load_labelled(args.data, model, split, args.mean, args.std, args.limit, _shape(args))


def _evaluate(args: argparse.Namespace) -> int:
    model = model_io.load(args.model)
    labelled = _load(args, model, args.split)
    result = scoring.evaluate(model, labelled, args.batch_size, args.threads, progress=not args.quiet)
    emit(args, {"command": "evaluate", "model": args.model, "data": labelled.source, **result.to_dict()},
         lambda: str(result))
    return 0


def _retrain(module: str) -> ModuleType:
    """Import a torch-backed module of onnxprune.retrain, or say how to install torch."""
    try:
        return importlib.import_module(f"onnxprune.retrain.{module}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "torch":
            raise InputError("this command needs PyTorch: pip install 'onnxprune[train]'") from exc
        raise


def _config(args: argparse.Namespace, train: ModuleType, **extra):
    return train.TrainConfig(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
        momentum=args.momentum, weight_decay=args.weight_decay, augment=tuple(args.augment),
        seed=args.seed, device=args.device, checkpoint=args.checkpoint, resume=args.resume,
        progress=not args.quiet, keep_sparsity=args.keep_sparsity, **extra,
    )


def _test_split(args: argparse.Namespace, model) -> scoring.LabelledData | None:
    """x_test/y_test when the file has them and evaluation is wanted, else None."""
    if args.no_eval or "test" not in scoring.available_splits(args.data):
        return None
    return _load(args, model, "test")


def _finetune(args: argparse.Namespace) -> int:
    model_io.ensure_distinct(args.input, args.output)
    model = model_io.load(args.input)  # before torch: a bad file is refused in milliseconds, not after its import
    teacher = model_io.load(args.teacher) if args.teacher else None
    train = _retrain("train")
    config = _config(args, train, distill_alpha=args.distill_alpha, temperature=args.temperature)
    return _run_training(args, model, functools.partial(train.finetune, model, config=config, teacher=teacher))


def _sparse_train(args: argparse.Namespace) -> int:
    model_io.ensure_distinct(args.input, args.output)
    model = model_io.load(args.input)  # before torch, as in _finetune
    train = _retrain("train")
    sparsity = train.Sparsity(args.reg, args.lam, args.t, args.a)
    fit = functools.partial(train.sparse_train, model, sparsity=sparsity, config=_config(args, train))
    return _run_training(args, model, fit)


def _run_training(args: argparse.Namespace, model, fit) -> int:
    """Load the data, train, write the model, report before/after accuracy with onnxruntime."""
    train = _retrain("train")
    if args.threads:
        importlib.import_module("torch").set_num_threads(args.threads)
    samples = _load(args, model, "train")
    val = _test_split(args, model)
    result = fit(samples, val=val)
    if not train.is_main_process():
        return 0
    model_io.save(result.model, args.output, external_data=True if args.external_data else None)
    before = scoring.evaluate(model, val) if val is not None else None
    after = scoring.evaluate(result.model, val) if val is not None else None
    gammas = (train.batchnorm_scale_values(model), train.batchnorm_scale_values(result.model))
    payload = {
        "command": args.command, "input": args.input, "output": args.output, "data": samples.source,
        "history": [dataclasses.asdict(h) for h in result.history],
        "before": before.to_dict() if before else None, "after": after.to_dict() if after else None,
        "bn_scales_below": {"threshold": SPARSE_THRESHOLD,
                            "before": _share_small(gammas[0]), "after": _share_small(gammas[1])},
    }
    emit(args, payload, lambda: _training_text(args, result.history, before, after, gammas))
    return 0


def _share_small(gammas: np.ndarray) -> float | None:
    return float(np.mean(np.abs(gammas) < SPARSE_THRESHOLD)) if len(gammas) else None


def _training_text(args, history, before, after, gammas) -> str:
    lines = []
    for h in history:
        val = f"  test top-1 {100 * h.val_top1:.2f} %" if h.val_top1 is not None else ""
        lines.append(f"epoch {h.epoch}/{args.epochs}  loss {h.loss:.4f}  train top-1 {100 * h.accuracy:.2f} %"
                     f"{val}  lr {h.lr:.3g}  {h.seconds:.1f} s")
    if before is not None:
        lines += [f"before: {before}", f"after:  {after}"]
    # None exactly when the model has no BN scale (training keeps the graph, so both or neither)
    small_before, small_after = _share_small(gammas[0]), _share_small(gammas[1])
    if args.command == "sparse-train" and small_before is not None and small_after is not None:
        lines.append(f"BN scales |γ| < {SPARSE_THRESHOLD}: {100 * small_before:.1f} % before, "
                     f"{100 * small_after:.1f} % after ({len(gammas[1])} scales)")
    lines.append(f"wrote {args.output}")
    return "\n".join(lines)
