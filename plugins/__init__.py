"""TensorRT plugins of sparsecc: Triton kernels, their Quickly Deployable Plugin registration, numpy references.

Importing this package registers the numpy reference of every plugin op (it imports numpy only);
the Triton kernels (:mod:`sparsecc.plugins.triton_kernels`), their PTX compilation
(:mod:`sparsecc.plugins.ptx`) and the TensorRT registration (:mod:`sparsecc.plugins.qdp`) are
imported on demand, so ``import sparsecc.plugins`` works without triton or tensorrt.
"""

from sparsecc.plugins import reference_ops as _reference_ops  # noqa: F401  (registers the references)
from sparsecc.plugins.ops import (DEPTHWISE_SUBGEMM, GROUPWISE_CONV, GROUPWISE_LINEAR, NAMESPACE, PLUGIN_OPS,
                                  SIGNATURES, check_plugin_node, plugin_node_attributes)
from sparsecc.plugins.references import get_reference, register_reference, registered_references

__all__ = ["NAMESPACE", "PLUGIN_OPS", "GROUPWISE_CONV", "GROUPWISE_LINEAR", "DEPTHWISE_SUBGEMM", "SIGNATURES",
           "check_plugin_node", "plugin_node_attributes", "get_reference", "register_reference",
           "registered_references"]
