"""The one exception family for problems the user can fix.

A :class:`SparseccError` is a *user* error: bad input, a bad option, a model
sparsecc cannot handle. The CLI prints it as one clear message and exits with
status 2. Anything else that escapes is an internal error (a bug in sparsecc)
and exits with status 70 after printing the traceback.

Messages say what was found, where (file, node, op, tensor), what was
expected, and what to do about it.
"""

from __future__ import annotations


class SparseccError(Exception):
    """Base class of every error the user can act on.

    Args:
        what: What went wrong, one sentence.
        where: The file, node, op or tensor concerned. Defaults to none.
        fix: What the user can do about it. Defaults to none.
    """

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.format())

    def format(self) -> str:
        parts = [self.what if not self.where else f"{self.where}: {self.what}"]
        if self.fix:
            parts.append(f"  fix: {self.fix}")
        return "\n".join(parts)


class ModelLoadError(SparseccError):
    """The model file cannot be read, parsed, checked or is unsupported."""


class UnsupportedModelError(SparseccError):
    """The model is valid ONNX but sparsecc cannot work on it as asked."""


class ShapeError(SparseccError):
    """Shapes are missing or dynamic where concrete ones are needed."""


class OptionError(SparseccError):
    """A command-line option, recipe entry or API argument is invalid."""


class PlanError(SparseccError):
    """A sparsity plan does not fit the model it is applied to."""


class OutputError(SparseccError):
    """An output location cannot be written."""


class VerificationError(SparseccError):
    """A rewritten graph does not compute what the graph before it computed."""

    exit_code = 3


class InputError(SparseccError):
    """The input model cannot run on the inputs sparsecc would verify and time it with."""


class BackendUnavailableError(SparseccError):
    """A backend (TensorRT, a GPU) is not installed or not usable here."""


def install_hint(extra: str, module: str) -> str:
    """Standard advice for a missing optional dependency."""
    hint = f"pip install 'sparsecc[{extra}]'"
    if extra == "torch":
        hint = ("pip install torch==2.13.0 (a CPU build: "
                "pip install torch --index-url https://download.pytorch.org/whl/cpu), "
                "then pip install 'sparsecc[torch]'")
    return f"{module} is needed for this; install it with: {hint}"
