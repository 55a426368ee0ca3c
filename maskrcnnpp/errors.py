"""One exception type for bad user input, so the tools can print it as one clear line."""
import difflib


class UserInputError(ValueError):
    """Bad input from the user; the message says what is wrong and how to fix it."""


class TrainingDiverged(BaseException):
    """The loss became infinite or NaN; the message names the iteration and what to change.

    A BaseException, like KeyboardInterrupt, so that it stops detectron2's training loop without
    the loop logging it as a crash with a traceback; the tools print it as one line.
    """

    @classmethod
    def at(cls, iteration, advice):
        return cls(f"Training diverged at iteration {iteration}: the loss became infinite or NaN. "
                   f"{advice}, then continue from the last checkpoint with --resume.")


def did_you_mean(name, choices):
    """' Did you mean X?' for the closest of ``choices`` to ``name``, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_choice(key, value, choices):
    """Raise UserInputError unless ``value`` is one of ``choices``, listing the valid ones."""
    if value not in choices:
        raise UserInputError(
            f"{key}={value!r} is not valid; choose one of {sorted(choices)}."
            + did_you_mean(value, choices)
        )
    return value
