"""`leenet run`: its options, the RunConfig they describe, and the command that runs it.

Like :mod:`leenet.cli`, parsing and building the config load no torch; :func:`run_command`
imports the pipeline when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

from leenet.config import (
    ALPHA_UNITS,
    BACKBONE_TRAINING,
    CASCADE_KINDS,
    COST_UNITS,
    DEVICES,
    ENSEMBLE_KINDS,
    HEAD_KINDS,
    JOINT_WEIGHTINGS,
    LOSS_KINDS,
    OBJECTIVES,
    PRECISIONS,
    PREDICTOR_SPLITS,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    parse_alphas,
)
from leenet.defaults import dataset_defaults
from leenet.errors import LeenetError

EPILOG = """examples:
  leenet run                                   # digits + small CNN, about 30 s on 2 idle CPU cores
  leenet run --dataset fashion-mnist --epochs 15 --out runs/fmnist
  leenet run --dataset cifar10 --arch resnet50_cifar --data-dir ~/data --download
  leenet run --max-drop 0.005                  # cheapest policy losing <= 0.5 accuracy points
  leenet run --target-cost 0.5                 # best policy at <= 50% of the backbone's FLOPs
  leenet exits --arch resnet50                 # where a backbone can be cut
  leenet run --dataset fashion-mnist --resume runs/fmnist   # continue a killed run (same arguments)
  torchrun --nproc_per_node 8 -m leenet run --dataset imagenette --batch-size 64   # 8 GPUs, batch per GPU
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_run(sub) -> None:
    """Add `leenet run` to the subparsers ``sub``; its handler is :func:`run_command`."""
    p = sub.add_parser(
        "run", help="train exits and gates, evaluate against baselines, write a run directory",
        description="Turn a classifier into an early-exit network with a learned exit policy, compare it\n"
        "with confidence thresholds, single exits and the oracle, and write model.pt,\n"
        "results.json, config.json and report.html into a run directory. Options left out take\n"
        "the dataset's defaults (e.g. digits: digits_cnn, 40 backbone epochs, flatten heads).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
    )
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="digits", help="digits (default, built in), fashion-mnist, cifar10, "
                   "cifar100, imagenette, folder (an ImageFolder tree with train/ and val/), hf:NAME[:CONFIG] (a "
                   "Hugging Face dataset from the local cache; pip install 'leenet[hf]') or hf-local:DIR[:CONFIG]")
    d.add_argument("--data-dir", help="where the dataset lives (fashion-mnist default: "
                   "/usr/share/datasets/fashion-mnist from the Debian package dataset-fashion-mnist)")
    d.add_argument("--download", action="store_true", help="download the dataset if missing (needs internet)")
    d.add_argument("--calib-size", type=float, default=0.2, help="share (<1) or number (>=1) of training "
                   "images held out to train gates and pick thresholds (default 0.2)")
    d.add_argument("--image-size", type=int, help="resize images to this (default: the dataset's size for "
                   "small backbones, 224 for ImageNet backbones)")
    d.add_argument("--batch-size", type=int, default=128, help="batch size for training and evaluation "
                   "(default 128); under torchrun, per process")
    m = p.add_argument_group("model")
    m.add_argument("--arch", help="backbone: a registry name (see `leenet backbones`), tv:NAME (any torchvision "
                   "classifier), timm:NAME (any timm model; pip install 'leenet[timm]') or module.path:factory "
                   "(your own, called with num_classes); default depends on the dataset")
    m.add_argument("--weights", help="torchvision weights name (DEFAULT, IMAGENET1K_V1), for timm:NAME 'pretrained' "
                   "or a timm tag; these need internet; or a file: a state dict or a LEENet model.pt. Without it "
                   "the backbone is trained here")
    m.add_argument("--num-classes", type=int, help="replace the backbone's classifier for this many classes")
    m.add_argument("--transfer", action="store_true", help="with --weights: train only the classifier")
    m.add_argument("--exits", help="comma-separated module names to exit after, e.g. layer1,layer2,layer3 "
                   "(see `leenet exits --arch NAME`)")
    m.add_argument("--head", choices=HEAD_KINDS,
                   help="exit head: pool (pool+linear), sdn (conv reduction), deep (stride-2 conv blocks down to a 4x4 map: "
                   "stronger early exits for a few more FLOPs), flatten (original LEENet); "
                   "default flatten for digits, deep for fashion-mnist, pool otherwise")
    m.add_argument("--cascade", choices=CASCADE_KINDS,
                   help="cascaded heads: each head also reads the previous head's logits through a small linear "
                        "link (counted in its FLOPs), trained with the heads; detach = the later heads' losses do not "
                        "train the earlier heads (measured the better on Fashion-MNIST), grad = they do "
                        "(default: off)")
    m.add_argument("--ensemble", choices=ENSEMBLE_KINDS,
                   help="ensembled exits: each exit answers with a weighted sum of the log-probabilities of every "
                        "head up to it, fit on the calibration split; geometric = non-negative weights (a weighted "
                        "product of probabilities), linear = any weights (default: off)")
    m.add_argument("--ensemble-final", action=argparse.BooleanOptionalAction,
                   help="with --ensemble, also ensemble the final exit (every head + the backbone); the heads "
                        "then run for every sample (default: when it beats the backbone on calibration, out of fold)")
    m.add_argument("--gate-hidden", type=_positive_int,
                   help="gate MLP width (0 = logistic; default 16, 32 on fashion-mnist)")
    m.add_argument("--gate-pooled", action=argparse.BooleanOptionalAction,
                   help="gates also see the pooled feature map (default: on, except on digits and fashion-mnist)")
    m.add_argument("--gate-history", action=argparse.BooleanOptionalAction,
                   help="gates also see earlier exits' confidence and agreement (default: on)")
    m.add_argument("--gate-classes", action=argparse.BooleanOptionalAction,
                   help="gates also see their exit's class probabilities and predicted class: how far a "
                        "confidence can be trusted depends on the class (default: on for fashion-mnist)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=_positive_int, help="backbone epochs (default: 40 on digits, 24 on fashion-mnist, "
                   "30 on cifar, 20 on imagenette and folder; with --weights 0, which keeps them as they are)")
    t.add_argument("--lr", type=float, help="backbone peak learning rate, SGD one-cycle (default per dataset: "
                   "0.1 on fashion-mnist, else 0.05)")
    t.add_argument("--precision", choices=PRECISIONS,
                   help="backbone training arithmetic: bf16 = bfloat16 autocast + channels-last (about 1.9x "
                        "faster on CPUs with AVX512-BF16 and on recent GPUs); auto = bf16 where the device "
                        "computes it natively, else fp32 (default: fp32 on digits, auto elsewhere)")
    t.add_argument("--head-epochs", type=_positive_int, help="exit-head epochs (default: 30 on digits, 6 on "
                   "fashion-mnist, 5 elsewhere)")
    t.add_argument("--distill", type=float, metavar="WEIGHT",
                   help="self-distillation: weight in [0, 1] of the backbone's own softened logits in each head's "
                        "loss, the rest on the labels (default: 0 = labels only)")
    t.add_argument("--distill-temperature", type=float, default=TrainConfig.distill_temperature, metavar="T",
                   help="softening temperature of --distill (default: %(default)s)")
    t.add_argument("--backbone-training", choices=BACKBONE_TRAINING, default="frozen",
                   help="after the heads are fitted: frozen (default) never changes the backbone; joint fine-tunes it "
                        "with its heads (exit losses summed, early weights ramped up; the backbone at a small share "
                        "of the heads' learning rate, --backbone-lr-scale; a quarter of its epochs, --finetune-epochs), "
                        "keeping on calibration the epoch with the best early exits of those whose final exit lost "
                        "<= 0.1 pt (the frozen network if none beats it): better early exits if you can change your "
                        "model; finetune tunes the backbone alone the same way, then fits the heads frozen: the "
                        "control that tells joint's gain from more training")
    t.add_argument("--finetune-epochs", type=float, default=TrainConfig.finetune_epochs, metavar="N",
                   help="length of --backbone-training finetune/joint: a fraction below 1 of the backbone's epochs "
                        "(of the dataset's default with --weights) or a whole number of epochs (default: %(default)s)")
    t.add_argument("--backbone-lr-scale", type=float, default=TrainConfig.backbone_lr_scale, metavar="S",
                   help="the fine-tune's backbone learning rate as a share of the heads' (default: %(default)s)")
    t.add_argument("--joint-weighting", choices=JOINT_WEIGHTINGS, default=TrainConfig.joint_weighting,
                   help="how joint balances its exits: ramp = SDN's early-exit loss weights ramped up linearly; "
                        "equilibrium = every exit weighs 1 and each stage gets the mean of its exits' gradients "
                        "(IMTA's gradient equilibrium) (default: %(default)s)")
    t.add_argument("--objective", choices=OBJECTIVES,
                   help="gate objective: soft = expected loss; hard = balanced BCE on each sample's best exit; "
                   "predict = gates predict their exit's correctness once, then per-alpha thresholds minimize "
                   "the expected loss on out-of-fold calibration scores (default: hard on digits, predict otherwise)")
    t.add_argument("--loss", choices=LOSS_KINDS,
                   help="per-exit loss: cross-entropy, 0-1 error, or soft error 1 - p(true class) "
                   "(default: ce on digits, error otherwise)")
    t.add_argument("--gate-steps", type=_positive_int, help="gate optimizer steps (default 300; 1000 on fashion-mnist)")
    t.add_argument("--gate-batch-size", type=_positive_int,
                   help="minibatch of predict-gate fitting (default: full batch; 2048 with --fit-gates-on train)")
    t.add_argument("--fit-gates-on", choices=PREDICTOR_SPLITS,
                   help="predict objective: fit the correctness predictors on the calibration split (scores "
                        "out-of-fold) or on the training split, whose outputs then pass through the network "
                        "once more; thresholds are always chosen on calibration (default: train on "
                        "fashion-mnist, calib elsewhere)")
    t.add_argument("--alpha-units", choices=ALPHA_UNITS,
                   help="range (default): alpha weighs loss and cost each as a share of its range on the "
                        "calibration split (first exit to backbone), so a uniform sweep spreads over the whole "
                        "trade-off; raw: (1-alpha)*loss + alpha*cost as written")
    p_ = p.add_argument_group("policy")
    p_.add_argument("--alphas", default="0:1:0.05", help="alphas to sweep: a list 0,0.1,0.5 or start:stop:step "
                    "(default 0:1:0.05, 21 alphas)")
    p_.add_argument("--alpha", type=float, help="alpha whose gates model.pt keeps (default: the cheapest "
                    "within 0.5 pt of the backbone on calibration)")
    p_.add_argument("--target-cost", type=float, help="budget: mean cost <= C of the backbone's FLOPs (e.g. 0.5)")
    p_.add_argument("--max-drop", type=float, help="budget: lose at most D accuracy (fraction: 0.005 = 0.5 pt)")
    p_.add_argument("--budget-margin", type=float,
                    help="standard errors of slack a budget keeps on calibration, so that it also holds on new "
                         "data (default 1.5: about 85%% of budgets at the edge hold; 0 = none, 2.5 = surer but "
                         "dearer); also used for the report's operating points")
    p_.add_argument("--cost", choices=COST_UNITS, default="flops",
                    help="what an exit costs: flops (portable; default) or latency (every stage, head and gate "
                         "timed on --device at --latency-batch, median of repeats: what inference pays there)")
    p_.add_argument("--latency-batch", type=int, default=1, metavar="N",
                    help="images per call when --cost latency is measured (default 1: latency)")
    o = p.add_argument_group("run")
    o.add_argument("--seed", type=int, default=0, help="seeds the calibration split, initialization and training "
                   "(default 0)")
    o.add_argument("--device", default="auto", choices=DEVICES,
                   help="where to compute (default auto: cuda when available)")
    o.add_argument("--out", help="run directory (default runs/<dataset>-<arch>-<time>); it keeps every finished "
                   "stage until the run ends")
    o.add_argument("--overwrite", action="store_true", help="allow replacing the results in --out")
    o.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last finished stage "
                   "or epoch; give the run's other arguments again (a run with other settings is refused)")
    o.add_argument("--no-timing", action="store_true", help="skip the wall-clock measurement")
    o.add_argument("--quiet", action="store_true", help="no progress bars (nor, in a log, a line per epoch)")
    p.set_defaults(handler=run_command)



def _override(default, **given):
    """``default`` with the options the user gave; None when none was given (dataset default)."""
    given = {k: v for k, v in given.items() if v is not None}
    return dataclasses.replace(default, **given) if given else None


def run_config_from_args(args: argparse.Namespace):
    """The :class:`~leenet.config.RunConfig` an argument namespace describes."""
    defaults = dataset_defaults(args.dataset)
    gate = _override(defaults.gate, hidden=args.gate_hidden, history=args.gate_history, pooled=args.gate_pooled,
                     classes=args.gate_classes)
    predictors_on = args.fit_gates_on
    if predictors_on is None and args.objective not in (None, "predict"):
        predictors_on = "calib"  # a dataset default of predictors fit on train applies to "predict" gates only
    gate_train = _override(defaults.gate_train, objective=args.objective, loss=args.loss, steps=args.gate_steps,
                           alpha_units=args.alpha_units, predictors_on=predictors_on,
                           batch_size=args.gate_batch_size)
    exits = tuple(e.strip() for e in args.exits.split(",") if e.strip()) if args.exits is not None else None
    return RunConfig(
        data=DataConfig(dataset=args.dataset, data_dir=args.data_dir, download=args.download,
                        calib_size=args.calib_size, image_size=args.image_size, batch_size=args.batch_size),
        model=ModelConfig(arch=args.arch, exits=exits, head=args.head, gate=gate, weights=args.weights,
                          num_classes=args.num_classes, transfer=args.transfer, cascade=args.cascade,
                          ensemble=args.ensemble, ensemble_final=args.ensemble_final),
        train=TrainConfig(epochs=args.epochs, lr=args.lr, precision=args.precision, head_epochs=args.head_epochs,
                          gates=gate_train, distill=args.distill, distill_temperature=args.distill_temperature,
                          backbone_training=args.backbone_training,
                          finetune_epochs=args.finetune_epochs, backbone_lr_scale=args.backbone_lr_scale,
                          joint_weighting=args.joint_weighting),
        alphas=parse_alphas(args.alphas), alpha=args.alpha, target_cost=args.target_cost,
        max_drop=args.max_drop, seed=args.seed, device=args.device, out=args.out,
        overwrite=args.overwrite, timing=not args.no_timing, progress=not args.quiet,
        cost=args.cost, latency_batch=args.latency_batch,
        **({} if args.budget_margin is None else {"budget_margin": args.budget_margin}),
    )


def run_command(args: argparse.Namespace, argv: list[str]) -> int:
    """`leenet run`: the arguments are checked (a RunConfig built) before torch is loaded."""
    if args.resume is not None and args.out not in (None, args.resume):
        raise LeenetError("--resume names the run directory to continue: drop --out, or give the same one")
    config = run_config_from_args(args)
    if args.resume is not None:
        config = dataclasses.replace(config, out=args.resume)
    from leenet.pipeline import run
    from leenet.report import summary_table

    results = run(config, log=lambda m: print(m, file=sys.stderr), resume=args.resume is not None,
                  on_stop=lambda out: _say_how_to_resume(argv, out))
    if results is None:  # another process of a torchrun job: rank 0 prints
        return 0
    print(summary_table(results))
    if "budget" in results:
        print("budget: " + results["budget"]["message"])
    return 0


def _say_how_to_resume(argv: list[str], out: Path) -> None:
    """The command that continues an interrupted run: its arguments, with --resume instead of --out."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--out", "--resume"):
            skip = True
        elif not arg.startswith(("--out=", "--resume=")) and arg != "--overwrite":
            kept.append(arg)
    where = " (with torchrun and as many processes)" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    print(f"stopped: the finished stages are kept in {out}; continue with{where}: "
          f"leenet {shlex.join([*kept, '--resume', str(out)])}", file=sys.stderr)
