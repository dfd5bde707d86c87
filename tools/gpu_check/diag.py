"""Step-by-step load of a CUDA package through _core, printing before each step (crash triage)."""
import faulthandler
import sys

faulthandler.enable()
order = sys.argv[1] if len(sys.argv) > 1 else "core-first"
pkg = sys.argv[2] if len(sys.argv) > 2 else "build/gpu_check/work/pkg-tiny-llama-f32"


def step(msg):
    print("STEP", msg, flush=True)


if order == "torch-first":
    step("import torch")
    import torch  # noqa: F401
step("import _core")
from tvmlm import _core  # noqa: E402

step(f"device_exists {_core.device_exists('cuda', 0)}")
step("Model")
m = _core.Model(pkg, "cuda:0", 0)
step("create_kv_cache")
m.create_kv_cache(4, 1024, 256)
step("add_sequence")
m.add_sequence(0)
step("prefill")
out = m.prefill([0], [[5, 6, 7, 8]])
step(f"prefill ok {out.shape} {out[0, :4]}")
out = m.decode([0], [9])
step(f"decode ok {out.shape}")
if order == "core-first":
    step("import torch after")
    import torch  # noqa: F401,E402

    step("torch ok")
