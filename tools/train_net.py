#!/usr/bin/env python3
"""Train and evaluate Mask R-CNN++ (or the FPN baseline) with detectron2's DefaultTrainer.

    python tools/train_net.py --config-file configs/maskrcnnpp_R50.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume            # continue from the last checkpoint
    python tools/train_net.py --config-file CFG --num-gpus 8        # NCCL on GPUs, gloo processes on CPU
"""
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from maskrcnnpp import cli
from maskrcnnpp.config import build_cfg
from maskrcnnpp.data.datasets import check_datasets
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.training import Trainer, enable_cpu_ddp


def setup(args):
    cfg = build_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="maskrcnnpp")
    return cfg


def train_or_evaluate(args):
    """What each launched process runs."""
    enable_cpu_ddp()
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def check_inputs(args):
    """Everything a run needs, checked before any process starts or any file is written."""
    if not args.config_file:
        raise UserInputError("--config-file is required, e.g. --config-file configs/maskrcnnpp_R50.yaml")
    cfg = build_cfg(args.config_file, args.opts)
    check_datasets(cfg, cfg.DATASETS.TEST if args.eval_only else cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)
    if args.eval_only and not (args.resume or os.path.isfile(cfg.MODEL.WEIGHTS)):
        raise UserInputError(
            f"--eval-only needs trained weights, but MODEL.WEIGHTS={cfg.MODEL.WEIGHTS!r} is not a file. "
            "Pass MODEL.WEIGHTS path/to/model_final.pth (or --resume to use OUTPUT_DIR's last checkpoint)."
        )


def main(argv):
    args = default_argument_parser().parse_args(argv)
    check_inputs(args)
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
