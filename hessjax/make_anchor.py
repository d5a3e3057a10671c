"""``python -m hessjax.make_anchor``: train the MLP or LeNet at λ = 0 from a seed and write a torch anchor.

The anchor is the plain state dict of :class:`hessjax.bridges.TorchMLP`, an ``nn.Sequential`` of
``Linear``/``Sigmoid`` (keys ``0.weight``, ``0.bias``, ``2.weight``, …), so
``TorchMLP().load_state_dict(torch.load(path), strict=True)`` loads it; with ``--model lenet`` that of
:class:`hessjax.bridges.TorchLeNet` (keys ``0.*``, ``3.*``, ``7.*``, ``9.*``, ``11.*``). Training is the sweep's:
Adam (lr 0.0015), one seeded initialisation and batch order, early stopping on a plateau of the
training loss, the weights of the best epoch. The command prints what ``anchors/README.md`` records.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hessjax.make_anchor", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="path of the .pth to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="mlp", help="mlp, lenet, or MODULE:ATTR (a model with a torch_module)")
    p.add_argument("--sizes", default="784,128,128,10", help="the MLP's layer widths, from 784 inputs to 10 classes")
    p.add_argument("--activation", default=None, help="the MLP's hidden activation (default sigmoid)")
    p.add_argument("--lr", type=float, default=0.0015)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--min-delta", type=float, default=1e-4)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-samples", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    import jax
    import numpy as np
    from importlib.metadata import version

    from . import engine
    from .bridges.anchor import anchor_from_state_dict, save_state_dict
    from .bridges.torch_ref import torch_module
    from .datasets import fit_to_model, load_dataset
    from .hvp import chunk_data, dataset_accuracy, dataset_cross_entropy
    from .mnist import DataError
    from .models import ModelError, resolve_model
    from .training import TrainConfig, initial_params

    try:
        sizes = tuple(int(s) for s in args.sizes.split(","))
        if sizes[0] != 784 or sizes[-1] != 10 or len(sizes) < 2 or min(sizes) < 1:
            raise ValueError
    except ValueError:
        print(f"error: --sizes {args.sizes!r} must be a comma list of widths from 784 to 10", file=sys.stderr)
        return 2
    try:
        if args.model == "mlp":
            model = resolve_model("mlp", sizes=sizes, activation=args.activation)
        else:
            model = resolve_model(args.model, input_shape=(1, 28, 28))
    except (ModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        data = load_dataset("mnist", data_dir=args.data_dir, train_samples=args.train_samples)
        data = fit_to_model(data, model.input_shape, model.num_classes, model.name)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if not out.parent.is_dir():
        print(f"error: the directory of --out {out} does not exist", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    cfg = TrainConfig(args.lr, args.batch_size, args.max_epochs, args.patience, args.min_delta)
    programs = engine.Programs(engine.lambda_mesh(jax.devices()[:1]), cfg, engine.SpectrumConfig(k=1), model=model)
    start = initial_params(args.seed, model)
    rep = programs.put_replicated
    train = rep(chunk_data(data.x_train, data.y_train))
    x, y = rep(data.x_train), rep(data.y_train)
    lam = programs.put_split(np.zeros(1, np.float32))

    def report(epoch, states):
        if not args.quiet:
            print(f"epoch {epoch:4d}  train loss {float(engine.gather(states.loss)[0]):.6f}", file=sys.stderr, flush=True)

    states = engine.train_batch(programs, rep(start), rep(start), lam, x, y, train, args.seed, args.max_epochs, report)
    best = jax.tree_util.tree_map(lambda a: np.asarray(a)[0], states.best_params)
    test = chunk_data(data.x_test, data.y_test)
    template = anchor_from_state_dict(torch_module(model, best).state_dict(),
                                      model=None if args.model == "mlp" else model)
    save_state_dict(out, best, template)
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    summary = {
        "command": "python -m hessjax.make_anchor " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed,
        "model": model.description,
        "epochs": int(states.epoch[0]),
        "best_epoch": int(states.best_epoch[0]),
        "converged": bool(states.converged[0]),
        "train_loss": float(dataset_cross_entropy(best, chunk_data(data.x_train, data.y_train), apply=model.apply)),
        "test_loss": float(dataset_cross_entropy(best, test, apply=model.apply)),
        "test_accuracy": float(dataset_accuracy(best, test, apply=model.apply)),
        "train_samples": int(data.x_train.shape[0]),
        "seconds": round(time.perf_counter() - t0, 1),
        "sha256": sha,
        "torch": version("torch"),
        "jax": jax.__version__,
    }
    for key, value in summary.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
