"""bitmos.compiler: binarized linears -> accelerator programs, memory images and manifests.

Public API (docs/compiler.md):

* :func:`compile_linear` (one ``BinaryLinearExport``) -> :class:`CompiledLinear`
* :func:`compile_model` (export file / ModelExport / HF or bitmos config) -> :class:`CompiledModel`
* :func:`write_layer_input`, :func:`read_layer_output`: host I/O on a memory image
* :func:`load_shape`, :data:`MODEL_SHAPES`, :func:`llama_linears`: model shapes (one loader)
"""

from bitmos.compiler.api import (CompiledLinear, CompiledModel, compile_linear, compile_model, compile_spec,
                                 read_layer_output, region_sizes, write_layer_input)
from bitmos.compiler.shapes import MODEL_SHAPES, llama_linears, load_shape
from bitmos.compiler.lower import LayerSpec, lower_linear, synthetic_spec
from bitmos.compiler.schedule import Tiling, make_tiling

__all__ = ["CompiledLinear", "CompiledModel", "compile_linear", "compile_model", "compile_spec", "MODEL_SHAPES",
           "llama_linears", "load_shape",
           "read_layer_output", "write_layer_input", "region_sizes", "LayerSpec", "lower_linear",
           "synthetic_spec", "Tiling", "make_tiling"]
