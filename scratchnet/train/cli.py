"""``scratchnet train``: SGD training of the paper's network from scratch on an image data set.

    scratchnet train --data ../shared/data/tiny-imagenet-200 --arch paper --input-size 64 --width 0.5 \\
        --epochs 20 --out runs/tiny-w05

TRAIN and VAL are each a Tiny-ImageNet root, one of its train/ or val/ folders, or an ImageFolder
root (<root>/<class>/<image>).  Without --val, a Tiny-ImageNet root is validated on its val split.
The last line of stdout is a JSON summary; progress goes to stderr.

--resume continues the run in --out with the settings it was started (or last resumed) with, --data
included; an option given with --resume overrides its saved value (each change is printed), and
other classes than the run's are refused.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ..cli import emit_json
from ..io.datasets import Dataset, decode_cache, image_folder, open_dataset, tiny_imagenet


def register(sub, ev_sub):
    from ..cli import add_device_arg, nonnegative_int, nonnegative_number, positive_int, positive_number
    p = sub.add_parser("train", help="train a network from scratch with SGD (checkpoints, --resume)",
                       description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="TRAIN", help="training images (see above; required unless --resume)")
    p.add_argument("--val", metavar="VAL", help="validation images: a Tiny-ImageNet root or split, a folder of "
                                                "class folders, or imagenet-val-dev (its photos of the run's "
                                                "classes, by wnid) (default: a Tiny-ImageNet root's val split)")
    # the defaults of the options below are in OPTION_DEFAULTS: None here means "not given", so that
    # --resume can take the run's saved value instead
    p.add_argument("--arch", choices=["paper"], help="network: the paper's (default)")
    p.add_argument("--input-size", type=positive_int, help="square input size in pixels (default 64)")
    p.add_argument("--width", type=positive_number, help="scale of every hidden width (default 1.0)")
    p.add_argument("--classes", type=positive_int, help="use only the first K classes")
    p.add_argument("--per-class", type=positive_int, help="use only the first N training images of each class")
    p.add_argument("--val-from-train", type=positive_int, metavar="START",
                   help="Tiny-ImageNet: validate on training images START.. of each class and train on images "
                        "0..START-1 (e.g. --classes 10 --val-from-train 250: train 0-249, val 250-299)")
    p.add_argument("--batch-size", type=positive_int, help="images per SGD step (default 128)")
    p.add_argument("--lr", type=positive_number,
                   help="initial learning rate of the step and log schedules (default 0.01)")
    p.add_argument("--lr-end", type=positive_number, help="--schedule log: the last epoch's rate (default lr/100)")
    p.add_argument("--schedule", choices=["step", "log", "piecewise"],
                   help="step (default): x0.1 for the last quarter, at least the last epoch (or at --milestones); "
                        "log: geometric lr -> lr-end; piecewise: the rates of --lr-points")
    p.add_argument("--milestones", type=int, nargs="*",
                   help="--schedule step: lr x0.1 from each of these epochs on, counted from 0 (35: epochs 36.. "
                        "as printed); the flag with no epochs: a constant rate")
    p.add_argument("--lr-points", nargs="+", metavar="EPOCH:LR",
                   help="--schedule piecewise: rate LR from printed epoch EPOCH on, e.g. 1:0.01 8:0.001 10:0.01")
    p.add_argument("--epochs", type=positive_int, help="epochs of the whole run, resumed ones included (default 20)")
    p.add_argument("--momentum", type=nonnegative_number, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=nonnegative_number, help="on weights only, not biases (default 5e-4)")
    p.add_argument("--init", choices=["he", "gaussian"],
                   help="he: N(0, 2/fan_in), last layer N(0, 0.01^2) (default); gaussian: N(0, init-std^2)")
    p.add_argument("--init-std", type=positive_number, default=None,
                   help="--init gaussian: the weights' std (default 0.01)")
    p.add_argument("--dropout", type=nonnegative_number, help="dropout before fc6 and fc7 (default 0.5)")
    p.add_argument("--seed", type=nonnegative_int, help="seed of the initial weights, the shuffles, the augmentation and "
                                            "dropout (default 0)")
    p.add_argument("--crop", action=__import__("argparse").BooleanOptionalAction,
                   help="random crops after reflect-padding by 4 (default; --no-crop: none)")
    p.add_argument("--flip", action=__import__("argparse").BooleanOptionalAction,
                   help="random horizontal flips (default; --no-flip: none)")
    p.add_argument("--jitter", type=nonnegative_int, metavar="P",
                   help="zero a random rectangle of up to PxP pixels in each image (default 0 = off)")
    p.add_argument("--scale", type=positive_number, help="input = (image - mean image) * scale (default 1/64)")
    p.add_argument("--cache", default=os.environ.get("SCRATCHNET_CACHE", "cache"),
                   help="folder for decoded-image caches (default $SCRATCHNET_CACHE or ./cache)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable image files (named on stderr)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--out", required=True, metavar="RUN", help="output folder: model.npz, checkpoint.npz, "
                                                                 "metrics.jsonl, curves.png")
    add_device_arg(p)
    p.set_defaults(func=run_train)


def load_training_data(train_path, val_path=None, classes=None, per_class=None, val_from_train=None):
    """(train Dataset, val Dataset or None) in one label space."""
    train_path = Path(train_path)
    if val_from_train is not None:
        root = train_path if _is_tiny_root(train_path) else train_path.parent
        if not (_is_tiny_root(root) and train_path.name != "val"):
            raise ValueError(f"--val-from-train needs a Tiny-ImageNet root or its train/ folder, got {train_path}")
        if val_path is not None:
            raise ValueError("--val-from-train and --val both say where validation images come from; give one")
        if val_from_train < 1 or (per_class is not None and per_class > val_from_train):
            raise ValueError(f"--val-from-train {val_from_train}: expected >= 1 and >= --per-class ({per_class})")
        ds = tiny_imagenet(root, "train", classes=classes, per_class=per_class or val_from_train)
        return ds, tiny_imagenet(root, "train", classes=ds.class_wnids, start=val_from_train)
    ds = open_dataset_with(train_path, classes, per_class)
    val = None
    if val_path is not None:
        vp = Path(val_path)
        if _is_tiny_root(vp):
            val = tiny_imagenet(vp, "val", classes=ds.class_wnids)
        elif vp.name in ("train", "val") and _is_tiny_root(vp.parent):
            val = tiny_imagenet(vp.parent, vp.name, classes=ds.class_wnids)
        elif (vp / "boxes.csv").is_file() and (vp / "images").is_dir():
            val = same_classes(open_dataset(vp), ds)        # imagenet-val-dev: its photos of the run's classes
        else:
            val = image_folder(vp, class_names=ds.class_names, class_wnids=ds.class_wnids, allow_missing=True,
                               skip_unknown=classes is not None)        # --classes K keeps the first K
    elif _is_tiny_root(train_path):
        val = tiny_imagenet(train_path, "val", classes=ds.class_wnids)
    return ds, val


def same_classes(other, ds):
    """The images of data set ``other`` whose class is one of ``ds``'s, matched by wnid and labelled in
    ``ds``'s label space (ImageNet photos of Tiny-ImageNet's classes, say); no boxes."""
    index = {w: i for i, w in enumerate(ds.class_wnids) if w}
    mapped = np.array([index.get(other.class_wnids[k], -1) for k in other.labels], dtype=np.int64)
    keep = np.flatnonzero(mapped >= 0)
    return Dataset([other.paths[i] for i in keep], mapped[keep], list(ds.class_wnids), list(ds.class_names),
                   root=other.root)


def open_dataset_with(path, classes=None, per_class=None):
    if _is_tiny_root(path) or (path.name in ("train", "val") and _is_tiny_root(path.parent)):
        return open_dataset(path, classes=classes, per_class=per_class)
    ds = open_dataset(path)
    keep = np.arange(len(ds))
    if classes is not None:
        if not 1 <= classes <= ds.num_classes:
            raise ValueError(f"--classes {classes}: {path} has {ds.num_classes} classes")
        keep = keep[ds.labels[keep] < classes]
    if per_class is not None:
        keep = np.concatenate([keep[ds.labels[keep] == c][:per_class] for c in np.unique(ds.labels[keep])])
    ds = ds.subset(np.sort(keep))
    if classes is not None:
        ds.class_names, ds.class_wnids = ds.class_names[:classes], ds.class_wnids[:classes]
    return ds


def _is_tiny_root(p):
    return (Path(p) / "wnids.txt").is_file() and (Path(p) / "train").is_dir()


def decode(ds, size, cache, skip_bad):
    """uint8 images (N, size, size, 3) and their labels, through the decoded-image cache."""
    images, kept = decode_cache(ds, size, cache, on_error="skip" if skip_bad else "raise")
    return images, ds.labels[kept]


#: the train options whose parser default is None ("not given"), and their defaults for a new run
OPTION_DEFAULTS = dict(arch="paper", input_size=64, width=1.0, batch_size=128, schedule="step", epochs=20,
                       momentum=0.9, weight_decay=5e-4, init="he", dropout=0.5, seed=0, crop=True,
                       flip=True, jitter=0, scale=1 / 64)


def saved_options(out) -> dict:
    """The options a run in ``out`` was started (or last resumed) with, from its checkpoint's config,
    under the command line's names; {} when there is no checkpoint."""
    from .checkpoint import read_state
    path = Path(out) / "checkpoint.npz"
    if not path.is_file():
        return {}
    c = read_state(path).get("config") or {}
    extra = c.get("extra") or {}
    opts = {k: c[k] for k in ("epochs", "batch_size", "lr", "schedule", "milestones", "lr_end", "lr_points",
                              "momentum", "weight_decay", "seed", "jitter", "scale") if k in c}
    if "crop_pad" in c:
        opts["crop"] = c["crop_pad"] != 0
    if "flip" in c:
        opts["flip"] = bool(c["flip"])
    opts.update({k: extra[k] for k in ("data", "val", "arch", "input_size", "width", "classes", "per_class",
                                       "val_from_train", "init", "init_std", "dropout") if k in extra})
    return opts


def settle_options(args):
    """Fill the options not given: from the run's checkpoint with --resume, else their defaults. The
    rate options follow the schedule: a saved --lr is taken only for the step and log schedules,
    --milestones / --lr-end / --lr-points only for the schedule they were saved with (and --init-std
    only for a gaussian --init)."""
    if args.resume and not (Path(args.out) / "checkpoint.npz").is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {Path(args.out) / 'checkpoint.npz'} to continue from")
    saved = saved_options(args.out) if args.resume else {}
    given = {k for k in vars(args) if getattr(args, k) is not None}
    if saved and "val_from_train" not in saved and not {"val", "val_from_train"} & given:
        print("train: warning: this checkpoint predates recording --val-from-train; if the run used it, give "
              "it again (else validation comes from --val or the Tiny-ImageNet val split)", file=sys.stderr)
    for k, default in OPTION_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, saved.get(k, default))
    same_schedule = args.schedule == saved.get("schedule")
    for k, takes in (("data", True), ("val", "val_from_train" not in given), ("classes", True),
                     ("per_class", True), ("val_from_train", "val" not in given),
                     ("lr", args.schedule != "piecewise"),
                     ("milestones", same_schedule), ("lr_end", same_schedule), ("lr_points", same_schedule),
                     ("init_std", args.init == "gaussian" and saved.get("init") == "gaussian")):
        if getattr(args, k, None) is None and takes and saved.get(k) is not None:
            setattr(args, k, saved[k])
            if k in ("data", "val") and not Path(saved[k]).exists():
                raise FileNotFoundError(f"--{k} {saved[k]}, taken from the run's checkpoint, does not exist (here); "
                                        f"give --{k}")
    if args.data is None:
        raise ValueError("--data is required (the training images; with --resume it comes from the run's "
                         "checkpoint)")


def run_train(args):
    from ..models import paper_net
    from .trainer import TrainConfig, Trainer, check_config, check_run_folder, init_network, run_folder_lock

    settle_options(args)
    if args.jitter > args.input_size:
        raise ValueError(f"--jitter {args.jitter}: a rectangle of up to {args.jitter}x{args.jitter} pixels could "
                         f"blank a whole {args.input_size}x{args.input_size} input; expected at most {args.input_size}")
    device = args.device                # 'cpu' or 'gpu', resolved by scratchnet.cli.main
    train_ds, val_ds = load_training_data(args.data, args.val, args.classes, args.per_class, args.val_from_train)
    print(f"train: {len(train_ds)} training images, {train_ds.num_classes} classes; "
          + (f"{len(val_ds)} validation images of {len(np.unique(val_ds.labels))} classes" if val_ds is not None
             else "no validation images"), file=sys.stderr)
    if val_ds is None:
        print("train: warning: no validation set (pass --val); val top-1 will not be measured", file=sys.stderr)
    elif len(val_ds) == 0:                  # found now, not after the training images are decoded
        where = (f"--val-from-train {args.val_from_train} leaves no training image of any class for it"
                 if args.val_from_train is not None
                 else f"{args.val or args.data} holds none of the {train_ds.num_classes} classes' images")
        raise ValueError(f"the validation set is empty: {where}")
    if train_ds.num_classes == 1:
        print("train: warning: one class only: its softmax is 1 for any input, so the loss is 0 and nothing is "
              "learnt", file=sys.stderr)
    # the network and the settings first: a mistake in them is refused before minutes of decoding
    net = paper_net(args.input_size, num_classes=train_ds.num_classes, width=args.width, seed=args.seed,
                    dropout=args.dropout, class_names=train_ds.class_names)
    net.class_wnids = list(train_ds.class_wnids) if all(train_ds.class_wnids) else None
    if args.init_std is not None and args.init != "gaussian":
        raise ValueError("--init-std belongs to --init gaussian (he initialisation takes its std from fan-in)")
    init_std = 0.01 if args.init_std is None else args.init_std
    if args.lr is not None and args.schedule == "piecewise":     # it would be ignored without a word
        raise ValueError("--lr belongs to the step and log schedules; the piecewise schedule's rates, the first "
                         "included, are its --lr-points (1:LR ...)")
    lr = 0.01 if args.lr is None else args.lr
    if args.init != "he":
        init_network(net, args.init, init_std, args.seed)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=lr, schedule=args.schedule,
                         milestones=args.milestones, lr_end=args.lr_end, lr_points=args.lr_points,
                         momentum=args.momentum,
                         weight_decay=args.weight_decay, seed=args.seed, crop_pad=4 if args.crop else 0,
                         flip=args.flip, jitter=args.jitter, scale=args.scale,
                         # validation batches of 256 at 64 pixels, fewer for larger inputs (6.5 GB at 256
                         # pixels otherwise), never fewer than the training batch
                         val_batch_size=max(args.batch_size, min(256, 256 * 64 * 64 // args.input_size ** 2)),
                         extra=dict(data=str(Path(args.data).resolve()),       # resumable from another folder
                                    val=None if args.val is None else str(Path(args.val).resolve()), arch=args.arch, input_size=args.input_size,
                                    width=args.width, classes=args.classes, per_class=args.per_class,
                                    val_from_train=args.val_from_train, init=args.init, init_std=init_std,
                                    dropout=args.dropout))
    check_config(config)
    with run_folder_lock(args.out):     # from the folder's check to the end: one run in a folder at a time
        check_run_folder(args.out, config, args.resume, net.class_names)
        try:
            train = decode(train_ds, args.input_size, args.cache, args.skip_bad_images)
            val = decode(val_ds, args.input_size, args.cache, args.skip_bad_images) if val_ds is not None else None
        except Exception as e:
            if type(e).__name__ == "ImageReadError":
                raise ValueError(f"{e} (pass --skip-bad-images to train without such files)") from None
            raise
        net.to(device)
        trainer = Trainer(net, train, val, args.out, config, device=device)
        try:
            summary = trainer.fit(resume=args.resume)
        except KeyboardInterrupt:           # stopped with a checkpoint (which loads as a network too)
            done = trainer.checkpoint_path.is_file() and getattr(trainer, "_consistent", False)
            emit_json({"command": "train", "interrupted": True, "checkpoint": str(trainer.checkpoint_path),
                       **(trainer.summary(trainer.checkpoint_path) if done else {})})
            raise
        emit_json({"command": "train", **summary})
    return 0
