#!/usr/bin/env python3
"""Train and evaluate Mask R-CNN++ (or the FPN baseline) with detectron2's DefaultTrainer.

    python tools/train_net.py --config-file configs/maskrcnnpp_R50.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume            # continue from the last checkpoint
    python tools/train_net.py --config-file CFG --num-gpus 8        # NCCL on GPUs, gloo processes on CPU
    python tools/train_net.py --config-file configs/lazy/maskrcnnpp_R50.py train.max_iter=3000

A ``.py`` config is a LazyConfig (overrides key=value), trained as detectron2's
tools/lazyconfig_train_net.py trains it; a ``.yaml`` one goes through the Trainer (KEY VALUE).
"""
import sys

import maskrcnnpp  # noqa: F401  (first: it quiets the dependencies' import-time warnings)
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from maskrcnnpp import cli
from maskrcnnpp.checkpoint import NucleiCheckpointer
from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.errors import TrainingDiverged, UserInputError
from maskrcnnpp.lazy import build_lazy_model, evaluate_lazy, is_lazy_config, load_lazy_config, train_lazy
from maskrcnnpp.preflight import check_train_net_args
from maskrcnnpp.training import Trainer, clear_training_run, enable_cpu_ddp


def setup(args):
    cfg = build_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="maskrcnnpp")
    return cfg


def train_or_evaluate(args):
    """What each launched process runs. Several processes (one per GPU) stop on a diverged run
    or bad input with the main process's line and exit code 2, without a traceback."""
    run = _train_or_evaluate_lazy if is_lazy_config(args.config_file) else _train_or_evaluate
    try:
        return run(args)
    except (UserInputError, TrainingDiverged) as e:
        if comm.get_world_size() == 1:
            raise  # one process: cli.run prints it
        if comm.is_main_process():
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _train_or_evaluate(args):
    enable_cpu_ddp()
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        NucleiCheckpointer.from_config(cfg, model, cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _train_or_evaluate_lazy(args):
    enable_cpu_ddp()
    cfg = load_lazy_config(args.config_file, args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        model = create_ddp_model(build_lazy_model(cfg))
        NucleiCheckpointer(model).load(cfg.train.init_checkpoint)
        return evaluate_lazy(cfg, model)
    return train_lazy(cfg, resume=args.resume)


def parse_args(argv):
    parser = default_argument_parser()
    parser.add_argument("--overwrite", action="store_true",
                        help="train from the start into an OUTPUT_DIR that holds an earlier "
                        "training run, removing that run's checkpoints, logs and evaluation")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    output_dir = check_train_net_args(args)
    if args.overwrite:
        clear_training_run(output_dir)
    launch(
        train_or_evaluate,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
