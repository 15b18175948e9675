"""The TensorRT backend: strongly typed engines with sparse weights, built with Polygraphy's loaders.

One module per job: :mod:`.build_log` reads the ``(Sparsity)`` lines of the build log, :mod:`.profiles`
fixes the optimization-profile shapes, :mod:`.errors` turns TensorRT's parser and deserializer messages
into errors that name the node or the cause, :mod:`.plugins` registers the sparsecc plugins for builds and
engine loads, :mod:`.recorder` captures TensorRT's log, :mod:`.timers` measures device time,
:mod:`.session` runs a built engine and :mod:`.backend` builds and loads engines.

Nothing here imports tensorrt, polygraphy or torch at import time, so ``import sparsecc.backends.tensorrt``
works on machines without TensorRT.
"""

from sparsecc.backends.tensorrt.backend import ENGINE_SUFFIXES, TensorRTBackend, precision_name
from sparsecc.backends.tensorrt.build_log import SparsityBuildReport, parse_sparsity_log
from sparsecc.backends.tensorrt.errors import TensorRTBuildError, engine_load_failure, parser_failure
from sparsecc.backends.tensorrt.plugins import load_sparsecc_plugins, register_for_engine
from sparsecc.backends.tensorrt.profiles import resolve_profile_shapes
from sparsecc.backends.tensorrt.session import TensorRTSession

__all__ = ["TensorRTBackend", "TensorRTSession", "TensorRTBuildError", "SparsityBuildReport", "parse_sparsity_log",
           "resolve_profile_shapes", "parser_failure", "engine_load_failure", "load_sparsecc_plugins",
           "register_for_engine", "ENGINE_SUFFIXES", "precision_name"]
