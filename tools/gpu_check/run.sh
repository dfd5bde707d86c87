#!/usr/bin/env bash
# The GPU check, on the device machine, from the repo root: bash tools/gpu_check/run.sh [check.py args]
# Builds tvmlm._core against gpu_bundle/ (no apache-tvm Python package needed), then runs check.py.
# BUNDLE, BUILD and PYTHON override the defaults (the CPU dry run uses them).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUNDLE=$(realpath "${BUNDLE:-$REPO/gpu_bundle}")
BUILD=${BUILD:-$REPO/build/gpu_check}
PYTHON=${PYTHON:-$(command -v python3)}
OUT=${OUT:-$REPO/gpu_check_out}
mkdir -p "$OUT" "$BUILD"
LOG=$OUT/gpu_check.log
T0=$(date +%s)
echo "== build _core ($PYTHON, bundle $BUNDLE)" | tee "$LOG"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$LOG"

# libtvm_runtime_cuda.so needs libcudart.so.13: the system's, else the CUDA toolkit's or a pip wheel's.
find_cudart() {
  ldconfig -p 2>/dev/null | grep -q 'libcudart.so.13 ' && return 0
  local nv d
  nv=$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent)")")
  for d in "$nv/../lib64" "$nv/../lib" "$nv/../targets/x86_64-linux/lib" ${CUDA_HOME:-/usr/local/cuda}/lib64 \
           /usr/local/cuda*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib \
           $("$PYTHON" -c 'import glob, importlib.util as u, os; s = u.find_spec("nvidia")
for loc in (s.submodule_search_locations if s else []):
    print(*{os.path.dirname(f) for f in glob.glob(os.path.join(loc, "**", "libcudart.so.13*"), recursive=True)})' 2>/dev/null); do
    if ls "$d"/libcudart.so.13* >/dev/null 2>&1; then
      export LD_LIBRARY_PATH="$(realpath "$d")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; return 0
    fi
  done
  return 1
}
find_cudart || echo "warning: libcudart.so.13 not found; CUDA stages will fail" | tee -a "$LOG"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >> "$LOG"

GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
{ cmake -S "$REPO" -B "$BUILD/cmake" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$PYTHON" \
    -DTVMLM_TVM_RUNTIME_DIR="$BUNDLE/tvm_runtime" -DTVMLM_TVM_FFI_DIR="$BUNDLE/tvm_ffi" \
    -Dpybind11_DIR="$BUNDLE/pybind11/share/cmake/pybind11" \
  && cmake --build "$BUILD/cmake" --target _core -j "$(nproc)"; } >> "$LOG" 2>&1
if [ $? -ne 0 ]; then echo "BUILD FAILED (last lines of $LOG):"; tail -40 "$LOG"; exit 1; fi

# A tvmlm package dir with the sources and the freshly built extension.
rm -rf "$BUILD/py" && mkdir -p "$BUILD/py"
cp -r "$REPO/python/tvmlm" "$BUILD/py/tvmlm"
find "$BUILD/py/tvmlm" -name '_core*.so' -delete
cp "$BUILD"/cmake/_core*.so "$BUILD/py/tvmlm/"
export PYTHONPATH="$BUILD/py${PYTHONPATH:+:$PYTHONPATH}"
echo "== built in $(( $(date +%s) - T0 )) s: $(ls "$BUILD"/py/tvmlm/_core*.so)" | tee -a "$LOG"

OUT="$OUT" PYTHONUNBUFFERED=1 "$PYTHON" "$REPO/tools/gpu_check/check.py" --out "$OUT" "$@"
RC=$?
echo "== run.sh total $(( $(date +%s) - T0 )) s (check.py exit $RC)" | tee -a "$LOG"
exit $RC
