"""The sparsecc plugins in TensorRT builds and engine loads, and the plugin layers of a parsed network."""

from __future__ import annotations

from sparsecc.errors import UnsupportedModelError

__all__ = ["load_sparsecc_plugins", "register_for_engine", "plugin_layers"]


def load_sparsecc_plugins(plugin_nodes: list[tuple[str, str, str]], where: str, tf32: bool = False) -> dict:
    """Register the sparsecc QDP plugins, and compile the AOT kernels the model needs so problems surface here.

    Args:
        plugin_nodes: (node, op_type, dtype) from :func:`sparsecc.plugins.ops.find_plugin_nodes`.
        where: The model, for messages.
        tf32: FP32 kernels may use TF32 tensor cores (the build allows TF32). Defaults to False.

    Raises:
        UnsupportedModelError: A node's op is not a sparsecc plugin.
        PluginToolchainError: triton (needed for the plugins' kernels) is missing or too old.
        PluginRegistrationError: TensorRT is too old for the plugins, or its plugin layer refused them.
        HiddenParameterError: The installed Triton's kernels need arguments TensorRT does not pass.
    """
    from sparsecc.plugins import ops

    unknown = [(n, op) for n, op, _ in plugin_nodes if op not in ops.PLUGIN_OPS]
    if unknown:
        raise UnsupportedModelError(f"node '{unknown[0][0]}' has op '{unknown[0][1]}' in the sparsecc domain, "
                                    "which is no sparsecc plugin", where=where,
                                    fix=f"sparsecc plugins are {list(ops.PLUGIN_OPS)}")
    from sparsecc.plugins.ptx import plugin_kernel_ptx, require_triton

    require_triton()
    from sparsecc.plugins.qdp import register_plugins

    settings = register_plugins(tf32=tf32)
    for op, dtype in sorted({(op, dtype) for _, op, dtype in plugin_nodes}):
        plugin_kernel_ptx(op, dtype if dtype != "?" else "float32", settings["arch"], settings["max_ptx_version"],
                          settings["hidden"], tf32=tf32)
    return settings


def register_for_engine(tf32: bool = False) -> tuple[dict | None, str | None]:
    """Register the sparsecc plugins before an engine is deserialized: (settings, None) or (None, why not).

    Never raises. Only engines with sparsecc JIT plugin layers need the Python definitions (AOT plugin
    layers carry their kernels, and most engines have no sparsecc layer at all), so a registration that
    cannot happen here must not stop an engine from loading; the reason is kept for the error message
    of an engine that then fails to deserialize.
    """
    try:
        from sparsecc.plugins.qdp import register_plugins

        return register_plugins(tf32=tf32), None
    except Exception as err:  # noqa: BLE001 - any failure: missing module, old TensorRT, refused plugin, no GPU
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")


def plugin_layers(network) -> list[str]:
    """Names of the plugin layers of a parsed TensorRT network."""
    import tensorrt as trt

    kinds = {getattr(trt.LayerType, name) for name in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN")
             if hasattr(trt.LayerType, name)}
    return [network.get_layer(i).name for i in range(network.num_layers) if network.get_layer(i).type in kinds]
