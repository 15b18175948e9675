"""Former name of :mod:`sparsecc.finetuning`, kept so that code written against it still runs.

The README documented ``sparsecc.torch`` as the PyTorch side (``plan_for_module``,
``masks_for_module``, ``MaskKeeper``, ``finetune``, ``export_onnx``), so users' own training loops
import it. New code imports :mod:`sparsecc.finetuning`; ``export_onnx`` is
:func:`~sparsecc.finetuning.export_pruned_onnx` there.
"""

from sparsecc.finetuning import *  # noqa: F401,F403
from sparsecc.finetuning import __all__ as _names
from sparsecc.finetuning import export_pruned_onnx as export_onnx

__all__ = [*_names, "export_onnx"]
