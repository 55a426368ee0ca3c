"""LazyConfig (Python) configs: load them with one clear error per mistake, check them before
anything is written, and train or evaluate them as detectron2's tools/lazyconfig_train_net.py does,
with this project's safe checkpoints and one-line divergence.

A config is a ``.py`` file defining ``model``, ``dataloader`` (``train``, ``test``, ``evaluator``),
``optimizer``, ``lr_multiplier`` and ``train`` (detectron2's configs/common/train.py), such as
configs/lazy/maskrcnnpp_R50.py; overrides are ``key=value`` strings (``train.max_iter=100``).
"""
import os

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from .checkpoint import NucleiCheckpointer
from .errors import TrainingDiverged, UserInputError
from .training import step_trainer

# What detectron2's lazyconfig_train_net.py reads from a config.
REQUIRED_KEYS = ("model", "dataloader", "optimizer", "lr_multiplier", "train")


def is_lazy_config(path):
    return str(path).endswith(".py")


def load_lazy_config(path, overrides=()):
    """The config at ``path`` with ``overrides`` applied; UserInputError for a missing file, a
    file that fails to run, a config without the keys training needs, or a bad override."""
    if not os.path.isfile(path):
        raise UserInputError(f"Config file {path} does not exist; pass e.g. configs/lazy/maskrcnnpp_R50.py.")
    try:
        cfg = LazyConfig.load(path)
    except Exception as e:  # the file is user code: any error it raises is its author's to fix
        raise UserInputError(f"Config file {path} fails to load: {type(e).__name__}: {e}") from None
    missing = [key for key in REQUIRED_KEYS if key not in cfg]
    if missing:
        raise UserInputError(
            f"Config file {path} defines no {', '.join(missing)}; a LazyConfig for training "
            f"defines {', '.join(REQUIRED_KEYS)} (see configs/lazy/maskrcnn_R50_FPN.py)."
        )
    for override in overrides:
        if "=" not in override:
            raise UserInputError(
                f"Override {override!r} of a Python config is written key=value, e.g. "
                "train.max_iter=100 (KEY VALUE pairs are for YAML configs)."
            )
    try:
        return LazyConfig.apply_overrides(cfg, list(overrides))
    except Exception as e:
        raise UserInputError(f"Cannot apply the overrides {list(overrides)}: {e}") from None


def instantiate_or_explain(node, what):
    """``instantiate(node)``; what fails is the config's, so it becomes one UserInputError line."""
    try:
        return instantiate(node)
    except UserInputError:
        raise
    except Exception as e:
        raise UserInputError(f"The config's {what} cannot be built: {type(e).__name__}: {e}") from None


def build_lazy_model(cfg, device=None):
    return instantiate_or_explain(cfg.model, "model").to(device or cfg.train.device)


def evaluate_lazy(cfg, model):
    """Metrics of ``model`` on ``dataloader.test`` with ``dataloader.evaluator``."""
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test),
                                   instantiate(cfg.dataloader.evaluator))
    print_csv_format(results)
    return results


def _stop_on_divergence(trainer, cfg):
    """Make a non-finite loss end ``trainer`` with TrainingDiverged (one line, no traceback)."""
    run_step = trainer.run_step

    def run_step_or_stop():
        try:
            run_step()
        except FloatingPointError:
            raise TrainingDiverged.at(
                trainer.iter, f"Lower optimizer.lr (now {cfg.optimizer.lr:g}) or lengthen "
                "lr_multiplier.warmup_length"
            ) from None

    trainer.run_step = run_step_or_stop


def train_lazy(cfg, resume=False):
    """Train as detectron2's lazyconfig_train_net.py does, with NucleiCheckpointer."""
    model = build_lazy_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate_or_explain(cfg.optimizer, "optimizer")
    train_loader = instantiate_or_explain(cfg.dataloader.train, "dataloader.train")
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = step_trainer(model, train_loader, optimizer, amp=cfg.train.amp.enabled,
                           device=cfg.train.device)
    _stop_on_divergence(trainer, cfg)
    checkpointer = NucleiCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: evaluate_lazy(cfg, model)),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return model
