"""Errors of the TensorRT backend, and what TensorRT's log says about a model or engine it refused.

Pure Python, testable without TensorRT: :func:`parser_failure` names the node the ONNX parser stopped
at; :func:`engine_load_failure` says why an engine would not deserialize (another GPU, another TensorRT,
or sparsecc plugin layers whose Python definitions could not be registered).
"""

from __future__ import annotations

import re

from sparsecc.errors import ModelLoadError, SparseccError

__all__ = ["TensorRTBuildError", "parser_failure", "engine_load_failure", "errors_in"]

ERROR_LEVEL = 1  # trt.ILogger.Severity.ERROR; INTERNAL_ERROR is 0


class TensorRTBuildError(SparseccError):
    """TensorRT could not build, deserialize or run an engine for a model it parsed."""


def errors_in(records: list[tuple[int, str]]) -> list[str]:
    """The error messages among recorded (severity, message) pairs."""
    return [msg for level, msg in records if level <= ERROR_LEVEL]


_NODE_RE = re.compile(r"In node (?P<index>-?\d+) with name: (?P<name>.*?) and operator: (?P<op>\S+)")
_NODE_OLD_RE = re.compile(r"While parsing node number (?P<index>\d+) \[(?P<op>[^\s\]]+)(?: -> \"(?P<out>[^\"]*)\")?\]")


def parser_failure(where: str, messages: list[str], cause: str = "") -> ModelLoadError:
    """A ModelLoadError for an ONNX file TensorRT's parser rejected, naming the node when the log does.

    Args:
        where: The model (path or "<bytes>").
        messages: Error messages TensorRT logged while parsing (the parser's own errors among them).
        cause: The text of the exception Polygraphy raised.
    """
    node = None
    for msg in messages:
        m = _NODE_RE.search(msg)
        if m:
            node = f"node {m.group('index')} '{m.group('name')}' ({m.group('op')})"
            break
        m = _NODE_OLD_RE.search(msg)
        if m and node is None:
            node = f"node {m.group('index')} ({m.group('op')}" + (f" -> {m.group('out')})" if m.group("out") else ")")
    details = [m.strip() for m in messages if m.strip()][-12:]
    what = "TensorRT's ONNX parser rejected the model"
    if cause:
        what += f" ({cause.strip().splitlines()[-1]})"
    if details:
        what += ":\n    " + "\n    ".join(details)
    return ModelLoadError(what, where=f"{where}: {node}" if node else where,
                          fix="check that every op (and its attributes and dtypes) is supported by this TensorRT "
                              "version's ONNX parser; run `polygraphy inspect capability MODEL.onnx` to list the "
                              "unsupported nodes, or fold/replace them before building")



_COMPUTE_RE = re.compile(r"expecting compute (?P<want>[\d.]+) got compute (?P<got>[\d.]+)", re.IGNORECASE)
_INCOMPATIBLE_RE = re.compile(r"incompatible device|Platform specific tag mismatch|"
                              r"Serialization assertion .*(?:magicTag|version)|Version tag does not match",
                              re.IGNORECASE)


def engine_load_failure(where: str, messages: list[str], cause: str = "", plugin_problem: str | None = None
                        ) -> SparseccError:
    """The error for a serialized engine TensorRT would not deserialize, saying why when the log does.

    An engine is specific to the GPU model (compute capability) and the TensorRT version it was built with.
    ``plugin_problem`` is why the sparsecc plugins could not be registered before loading, if they
    could not: an engine with sparsecc JIT plugin layers cannot load without them.
    """
    for msg in messages:
        m = _COMPUTE_RE.search(msg)
        if m:
            return ModelLoadError(f"the engine was built for another GPU (compute {m.group('want')}); this GPU is "
                                  f"compute {m.group('got')}", where=where,
                                  fix="rebuild the engine on this GPU: sparsecc build MODEL.onnx -o ENGINE")
    for msg in messages:
        if _INCOMPATIBLE_RE.search(msg):
            return ModelLoadError(f"the engine was built with another TensorRT version or platform ({msg.strip()})",
                                  where=where,
                                  fix="rebuild the engine with this TensorRT: sparsecc build MODEL.onnx -o ENGINE")
    detail = "; ".join(m.strip() for m in messages[-4:]) or cause or "no message"
    if plugin_problem:
        return ModelLoadError(f"TensorRT could not deserialize the engine ({detail}); the sparsecc plugins could "
                              f"not be registered first ({plugin_problem}), and an engine with sparsecc JIT plugin "
                              "layers needs them", where=where,
                              fix="fix the plugin registration (the reason above), or rebuild the engine with AOT "
                                  "plugin nodes (aot=1, the default of the plugin lowerings)")
    return ModelLoadError(f"TensorRT could not deserialize the engine ({detail})", where=where,
                          fix="check that the file is a TensorRT engine from sparsecc build (or trtexec) on this "
                              "GPU with this TensorRT version")
