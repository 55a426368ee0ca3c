"""What every command-line tool shares: config overrides after the options, and one line with exit
code 2 for bad input instead of a traceback."""
import argparse
import os
import sys

from detectron2.config import get_cfg
from torch.multiprocessing import ProcessExitedException

from .config import add_maskrcnnpp_config
from .config_loader import config_keys
from .errors import TrainingDiverged, UserInputError


def trained_model_parser(description):
    """The parser of a tool that runs a trained model: its doc as help, --config-file, --weights."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="CFG")
    parser.add_argument("--weights", required=True, help="trained checkpoint (model_final.pth)")
    return parser


def check_weights_file(path):
    """UserInputError unless --weights ``path`` is a file."""
    if os.path.isdir(path):
        raise UserInputError(weights_folder_message("--weights", path))
    if not os.path.isfile(path):
        raise UserInputError(f"--weights {path} is not a file; pass model_final.pth.")


def weights_folder_message(option, path):
    """The error for weights (``option``: --weights, MODEL.WEIGHTS) that name the folder
    ``path``: the file in it to pass, where a training run's folder says which."""
    final = os.path.join(path, "model_final.pth")
    last = os.path.join(path, "last_checkpoint")  # detectron2's note of its latest checkpoint
    named = ""
    if not os.path.isfile(final) and os.path.isfile(last):
        with open(last) as f:
            named = os.path.join(path, f.read().strip())
    if os.path.isfile(final):
        hint = f"pass the trained model in it, {final}"
    elif os.path.isfile(named):
        hint = f"pass its last checkpoint, {named} (as its last_checkpoint says)"
    else:
        hint = "name the .pth file in it (a training run's folder holds model_final.pth)"
    return f"{option} {path} is a folder, not a weights file; {hint}."


def split_overrides(argv):
    """Split a command line into (tool options, config overrides ``KEY VALUE ...``).

    The overrides start at the first config key: a full key (``SEED``) or a dotted name in one of
    the config's sections (``SOLVER.MAX_ITER``, misspelt ones included, for build_cfg to explain),
    so options taking several values (``--config-file A.yaml B.yaml``) can precede them without
    swallowing them, while files such as ``SCAN.TIF`` stay options.
    """
    cfg = get_cfg()
    add_maskrcnnpp_config(cfg)
    keys = set(config_keys(cfg))
    sections = {name for name, value in cfg.items() if isinstance(value, dict)}
    is_key = [token in keys or ("." in token and token.split(".")[0] in sections)
              for token in argv]
    start = is_key.index(True) if any(is_key) else len(argv)
    options, overrides = list(argv[:start]), list(argv[start:])
    misplaced = [token for token in overrides[::2] if token.startswith("--")]
    if misplaced:
        raise UserInputError(
            f"Option {misplaced[0]} comes after the config overrides; put KEY VALUE pairs last."
        )
    return options, overrides


def parse_with_overrides(parser, argv):
    """Parse a tool's command line; trailing config overrides ``KEY VALUE ...`` go to ``args.opts``."""
    options, overrides = split_overrides(argv)
    args = parser.parse_args(options)
    args.opts = overrides
    return args


def run(main, argv=None):
    """``sys.exit(run(main))``: call ``main(argv)`` and turn a UserInputError (or a diverged
    training) into one line on stderr and exit code 2, so a mistake never ends in a traceback.

    A training process that stopped itself this way (several processes, one per GPU) printed its
    line already; its exit code is passed on. Ctrl-C ends in "interrupted" and exit code 130.
    """
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except (UserInputError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ProcessExitedException as e:
        return e.exit_code or 1
    except KeyboardInterrupt:  # Ctrl-C: one line too (atomic writes left nothing half-made)
        print("interrupted", file=sys.stderr)
        return 130
