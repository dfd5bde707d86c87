"""Model definitions. This package's top level imports no tvm: `build` (compile time) does.

    llama_config.py   LlamaConfig: the numbers that shape the graph, from an HF config
    llama.py          the relax.frontend.nn decoder (imports tvm)
    convert.py        HF tensors -> params.safetensors in the compiled model's layout
    build.py          export + tvm.compile (imports tvm)
    pipeline.py, cpu_schedule.py   the compile pipeline and CPU kernel schedules
"""

from .llama_config import SUPPORTED_ARCHITECTURES, LlamaConfig

__all__ = ["SUPPORTED_ARCHITECTURES", "LlamaConfig"]
