"""Compile the plugin kernels to PTX for TensorRT's AOT plugins, and check the kernel's parameters.

TensorRT launches an AOT plugin's kernel with exactly: the input pointers, the int32 extra arguments
(``SymIntExprs``), the output pointers - nothing else. Triton >= 3.3 appends a hidden
``global_scratch`` pointer to every kernel and Triton >= 3.5 a ``profile_scratch`` pointer after
it (Triton 3.9 emits both as ``.param .u64`` in the PTX ``.entry`` even when
``global_scratch_size`` and ``profile_scratch_size`` are 0). A launch that passes fewer arguments
than the ``.entry`` declares makes the driver read past TensorRT's argument array.

:func:`check_hidden_parameters` compares the PTX ``.entry`` with the kernel's signature and the
compiled metadata. Trailing hidden pointers that the kernel never reads (no ``ld.param`` of them, both
scratch sizes 0) are removed from the ``.entry`` declaration, so the PTX declares exactly what
TensorRT passes; a kernel that needs its scratch memory (a size above 0, or a read of a hidden
parameter) is refused with :class:`HiddenParameterError`. ``hidden="refuse"`` refuses every
hidden parameter instead.

The PTX ISA version is capped (``ptx_version`` option of Triton's CUDA backend) so that the driver of
the target machine, which JIT-compiles the PTX when the engine loads, accepts it.

Every variant of a kernel (plugin, data type, block sizes, TF32, divisibility hints) gets its own entry
name (:func:`variant_name`), so no two kernels that an engine embeds share a name, and each compiled
variant is recorded (:func:`kernel_variant`) with the Python function and constants it was compiled
from, so a harness can run exactly that variant under Triton's interpreter.

Needs Triton >= 3.3 (``ASTSource(constexprs=...)``); older versions are refused with
:class:`PluginToolchainError`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sparsecc.errors import SparseccError

__all__ = ["DEFAULT_MAX_PTX", "MIN_TRITON", "PtxKernel", "KernelVariant", "HiddenParameterError",
           "PluginToolchainError", "compile_ptx", "check_hidden_parameters", "entry_parameters", "assemble_with_ptxas", "plugin_kernel_ptx",
           "variant_name", "kernel_variant", "rename_entry", "require_triton"]

# PTX ISA 8.4 = CUDA 12.4: a driver of CUDA 12.4 or newer JIT-compiles it, and it covers sm_80 / sm_90a.
DEFAULT_MAX_PTX = 84
# ASTSource(constexprs=...) arrived in Triton 3.3 (3.2 and older take constants= with another key form).
MIN_TRITON = (3, 3)

_ENTRY_RE = re.compile(r"\.entry\s+(?P<name>[A-Za-z_$][\w$]*)\s*\((?P<params>[^)]*)\)", re.S)
_PARAM_RE = re.compile(r"\.param\s+(?P<decl>[^,]*?)\s+(?P<name>[A-Za-z_$][\w$]*)\s*$")


class HiddenParameterError(SparseccError):
    """The compiled kernel needs arguments that TensorRT's AOT plugin launch does not pass."""


class PluginToolchainError(SparseccError):
    """The installed Triton cannot compile the plugin kernels (too old, or missing)."""


@dataclass(frozen=True)
class KernelVariant:
    """What one PTX entry was compiled from: the Triton function, its constants and its divisibility hints."""

    name: str
    fn: object
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    divisible: tuple[str, ...]


_VARIANTS: dict[str, KernelVariant] = {}


def kernel_variant(name: str) -> KernelVariant | None:
    """The variant compiled under the entry name ``name`` in this process, or None."""
    return _VARIANTS.get(name)


def require_triton() -> str:
    """Triton's version, or PluginToolchainError below :data:`MIN_TRITON` or without Triton."""
    try:
        import triton
    except ImportError as err:
        raise PluginToolchainError(f"the plugin kernels need triton, which is not installed ({err})",
                                   fix="pip install 'sparsecc[tensorrt]' (installs triton)") from err
    match = re.match(r"(\d+)\.(\d+)", triton.__version__)
    if not match or (int(match.group(1)), int(match.group(2))) < MIN_TRITON:
        raise PluginToolchainError(
            f"triton {triton.__version__} is too old for the AOT plugin kernels: they are compiled with "
            f"ASTSource(constexprs=...), which needs triton >= {MIN_TRITON[0]}.{MIN_TRITON[1]}",
            fix=f"pip install 'triton>={MIN_TRITON[0]}.{MIN_TRITON[1]}'")
    return triton.__version__


def variant_name(op_type: str, dtype: str, constexprs: dict, divisible=()) -> str:
    """The PTX entry name of one kernel variant, e.g. ``sparsecc_groupwise_conv_f16_m64p64k32_d16k``."""
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", op_type).lower()
    blocks = "".join(f"{key[6].lower()}{value}" for key, value in constexprs.items() if key.startswith("BLOCK_"))
    name = f"sparsecc_{snake}_{'f16' if dtype == 'float16' else 'f32'}_{blocks}"
    if constexprs.get("ALLOW_TF32"):
        name += "_tf32"
    if divisible:
        name += "_d16" + "".join(n.lower() for n in divisible)
    return name


def rename_entry(ptx: str, new: str) -> str:
    """The PTX with its ``.entry`` (and the entry's parameter names) renamed to ``new``."""
    old, _ = entry_parameters(ptx)
    return re.sub(rf"(?<![\w$]){re.escape(old)}(?=(?:_param_\d+)?(?![\w$]))", new, ptx)


@dataclass
class PtxKernel:
    """A kernel ready for ``@trtp.aot_impl``: name, PTX text and launch facts."""

    name: str
    ptx: str
    num_warps: int
    shared: int
    arch: int
    ptx_version: int
    parameters: list[tuple[str, str]] = field(default_factory=list)  # (name, declaration) as TensorRT will pass
    removed_hidden: list[tuple[str, str]] = field(default_factory=list)  # stripped unused hidden parameters

    @property
    def block_x(self) -> int:
        return self.num_warps * 32


def entry_parameters(ptx: str) -> tuple[str, list[tuple[str, str]]]:
    """(kernel name, [(parameter name, declaration)]) of the PTX's ``.entry``."""
    match = _ENTRY_RE.search(ptx)
    if not match:
        raise HiddenParameterError("the PTX has no .entry kernel", fix="this is a bug in the kernel build")
    params = []
    for raw in match.group("params").split(","):
        raw = raw.strip()
        if not raw:
            continue
        m = _PARAM_RE.match(raw)
        if not m:
            raise HiddenParameterError(f"cannot read PTX parameter declaration '{raw}'",
                                       fix="report this PTX with the Triton version")
        params.append((m.group("name"), m.group("decl")))
    return match.group("name"), params


def check_hidden_parameters(ptx: str, expected: int, metadata, triton_version: str = "?",
                            hidden: str = "strip") -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    """Make the PTX declare exactly the ``expected`` parameters TensorRT passes, or refuse.

    Args:
        ptx: The compiled kernel's PTX.
        expected: Number of parameters in the kernel's signature (inputs + int32 scalars + outputs).
        metadata: The compiled kernel's metadata (``global_scratch_size``, ``profile_scratch_size``).
        triton_version: For the error message.
        hidden: "strip" removes hidden trailing parameters the kernel never reads; "refuse" refuses
            any hidden parameter. Defaults to "strip".

    Returns:
        (ptx, parameters kept, hidden parameters removed).

    Raises:
        HiddenParameterError: Hidden parameters the kernel needs (or any, with ``hidden="refuse"``),
            or fewer parameters than the signature.
    """
    name, params = entry_parameters(ptx)
    scratch = {key: int(getattr(metadata, key, 0) or 0) for key in ("global_scratch_size", "profile_scratch_size")}
    if len(params) < expected:
        raise HiddenParameterError(
            f"kernel {name} declares {len(params)} parameters but its signature has {expected}: Triton "
            f"{triton_version} dropped some (a specialised argument?)", where=name,
            fix="compile with a plain signature (no constant or specialised scalars)")
    extra = params[expected:]
    if not extra:
        if any(scratch.values()):
            raise HiddenParameterError(f"kernel {name} needs scratch memory {scratch} that TensorRT does not provide",
                                       where=name, fix="change the kernel so it needs no scratch memory")
        return ptx, params, []
    described = ", ".join(f"{n} ({d})" for n, d in extra)
    if hidden == "refuse":
        raise HiddenParameterError(
            f"Triton {triton_version} appended {len(extra)} hidden parameter(s) to kernel {name}: {described}; "
            "TensorRT's AOT launch passes only inputs, int32 arguments and outputs", where=name,
            fix="compile with hidden='strip' (the default), which removes hidden parameters the kernel never "
                "reads, or use the plugin's JIT implementation (aot=0)")
    body = ptx[_ENTRY_RE.search(ptx).end():]
    read = [n for n, _ in extra if re.search(rf"\b{re.escape(n)}\b", body)]
    if any(scratch.values()) or read:
        raise HiddenParameterError(
            f"Triton {triton_version} kernel {name} uses hidden parameter(s) {read or described} "
            f"(scratch sizes {scratch}) that TensorRT's AOT launch does not pass", where=name,
            fix="change the kernel so it needs no scratch memory (no device-side printing, profiling or "
                "descriptors), or use the plugin's JIT implementation (aot=0)")
    match = _ENTRY_RE.search(ptx)
    kept_decls = ",\n".join(f"\t.param {d} {n}" for n, d in params[:expected])
    stripped = ptx[:match.start("params")] + "\n" + kept_decls + "\n" + ptx[match.end("params"):]
    return stripped, params[:expected], extra


def compile_ptx(fn, signature: dict[str, str], constexprs: dict, arch: int, max_ptx_version: int = DEFAULT_MAX_PTX,
                hidden: str = "strip", num_warps: int = 4, num_stages: int = 3, entry_name: str | None = None,
                divisible=()) -> PtxKernel:
    """Compile a Triton ``JITFunction`` to PTX for ``sm_<arch>`` without a GPU, checked for TensorRT.

    Args:
        fn: The JITFunction.
        signature: Parameter name -> Triton type ("*fp16", "i32"), in kernel order.
        constexprs: Values of the ``tl.constexpr`` parameters.
        arch: Compute capability as an int (80, 86, 89, 90).
        max_ptx_version: Highest PTX ISA version to emit (84 = 8.4). Defaults to DEFAULT_MAX_PTX.
        hidden: What to do with hidden parameters (see :func:`check_hidden_parameters`). Defaults to "strip".
        entry_name: The PTX entry's name. Defaults to the function's name.
        divisible: Integer parameters whose every value is a multiple of 16 (``tt.divisibility`` hints).
            Defaults to none.

    Raises:
        PluginToolchainError: Triton is missing or older than :data:`MIN_TRITON`.
        HiddenParameterError: The PTX needs arguments TensorRT does not pass, or its ISA is above the cap.
    """
    triton_version = require_triton()
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if hidden not in ("strip", "refuse"):
        raise ValueError(f"hidden must be 'strip' or 'refuse', got {hidden!r}")
    names = list(fn.arg_names)
    unknown = [n for n in divisible if signature.get(n) not in ("i32", "i64")]
    if unknown:
        raise ValueError(f"divisibility hints apply to integer parameters only, got {unknown}")
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    source = ASTSource(fn=fn, signature=dict(signature), constexprs=dict(constexprs), attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", int(arch), 32),
                              options={"ptx_version": int(max_ptx_version), "num_warps": num_warps,
                                       "enable_fp_fusion": True, "num_stages": num_stages})
    ptx = compiled.asm["ptx"]
    version = re.search(r"\.version\s+(\d+)\.(\d+)", ptx)
    emitted = int(version.group(1)) * 10 + int(version.group(2)) if version else 0
    if emitted > max_ptx_version:
        raise HiddenParameterError(f"Triton emitted PTX ISA {emitted / 10:.1f}, above the cap "
                                   f"{max_ptx_version / 10:.1f}",
                                   fix="raise max_ptx_version to what the driver supports")
    ptx, params, removed = check_hidden_parameters(ptx, len(signature), compiled.metadata, triton_version, hidden)
    name = compiled.metadata.name
    if entry_name and entry_name != name:
        ptx, name = rename_entry(ptx, entry_name), entry_name
        params = entry_parameters(ptx)[1]
    _VARIANTS[name] = KernelVariant(name, fn, tuple(signature.items()), tuple(constexprs.items()), tuple(divisible))
    return PtxKernel(name, ptx, int(compiled.metadata.num_warps), int(compiled.metadata.shared),
                     int(arch), emitted, params, removed)


def assemble_with_ptxas(ptx: str, arch: int) -> str | None:
    """Assemble PTX with ptxas (Triton's bundled copy or one on PATH): None when it assembles, else ptxas's errors.

    Raises FileNotFoundError where no ptxas exists.
    """
    candidates = []
    try:
        import triton

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas")
    except ImportError:
        pass
    on_path = shutil.which("ptxas")
    if on_path:
        candidates.append(Path(on_path))
    ptxas = next((c for c in candidates if c.is_file()), None)
    if ptxas is None:
        raise FileNotFoundError("no ptxas: neither triton's bundled one nor one on PATH")
    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        result = subprocess.run([str(ptxas), f"-arch=sm_{arch}{suffix}", str(src), "-o", str(Path(tmp) / "k.cubin")],
                                capture_output=True, text=True, timeout=120)
    return None if result.returncode == 0 else (result.stderr or result.stdout).strip()


def plugin_kernel_ptx(op_type: str, dtype: str, arch: int, max_ptx_version: int = DEFAULT_MAX_PTX,
                      hidden: str = "strip", cout_g: int = 64, tf32: bool = False, divisible=()) -> PtxKernel:
    """The PTX of one plugin's kernel variant, under its own entry name (:func:`variant_name`).

    Args:
        op_type: The plugin op.
        dtype: "float16" or "float32".
        arch: Compute capability (80, 90, ...).
        max_ptx_version: PTX ISA cap. Defaults to DEFAULT_MAX_PTX.
        hidden: "strip" or "refuse" (see :func:`check_hidden_parameters`). Defaults to "strip".
        cout_g: Output channels per group (picks the conv block height). Defaults to 64.
        tf32: Let FP32 products use TF32 tensor cores (ignored for float16). Defaults to False.
        divisible: Integer parameters known to be multiples of 16. Defaults to none.
    """
    from sparsecc.plugins import ops
    from sparsecc.plugins.triton_kernels import (CONV_KERNEL, LINEAR_KERNEL, conv_blocks, conv_signature,
                                                 linear_blocks, linear_signature)

    allow_tf32 = bool(tf32) and dtype == "float32"
    if op_type in (ops.GROUPWISE_CONV, ops.DEPTHWISE_SUBGEMM):
        cout_g = ops.DW_GROUP if op_type == ops.DEPTHWISE_SUBGEMM else cout_g
        fn, signature = CONV_KERNEL, conv_signature(dtype)
        constexprs = {**conv_blocks(cout_g), "ALLOW_TF32": allow_tf32}
    elif op_type == ops.GROUPWISE_LINEAR:
        fn, signature = LINEAR_KERNEL, linear_signature(dtype)
        constexprs = {**linear_blocks(), "ALLOW_TF32": allow_tf32}
    else:
        raise ValueError(f"unknown plugin op {op_type!r}")
    divisible = tuple(sorted(divisible))
    return compile_ptx(fn, signature, constexprs, arch, max_ptx_version, hidden,
                       entry_name=variant_name(op_type, dtype, constexprs, divisible), divisible=divisible)
