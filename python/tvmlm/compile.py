"""JIT compilation of a model into a cached package (docs/contracts.md, section 1).

Cache layout under `cache_dir()` (TVMLM_CACHE_DIR, else the platform cache dir):

    libs/<lib_key>/lib.so          compiled library: depends on config + target + options + versions
    models/<model_key>/            package: lib.so (symlink), params.safetensors, metadata.json,
                                   tokenizer files, manifest.json (written last)

`model_key` adds the weights' fingerprint to `lib_key`, so two fine-tunes of one architecture share
the compiled library. Entries are built in a temporary directory and renamed into place under a
file lock: concurrent builders never see half-written entries, and a crash leaves only a temp dir.
Computing the keys needs neither `import tvm` nor reading tensors: the warm path stays fast.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from filelock import FileLock

from . import integrity
from ._version import __version__
from .config import model_kv_dtype
from .errors import ConfigError, ModelError, ModelNotFoundError, TvmlmError

logger = logging.getLogger("tvmlm")

# A package's files (a directory holding them all is a compiled package); a cache entry also has
# a manifest.json, written last.
PACKAGE_FILES = ("lib.so", "params.safetensors", "metadata.json")
LIB_FILES = ("lib.so", "metadata.json")


def cache_dir() -> Path:
    env = os.environ.get("TVMLM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("tvmlm"))


@dataclass(frozen=True)
class CompileOptions:
    """What changes the compiled library besides the model config and the target."""

    # Activations' (and dense weights') dtype; None: the device's, chosen once the model's config is
    # read (device_dtype).
    dtype: str | None = "float32"
    prefill_chunk_size: int | None = None  # None: the model's default
    max_batch_size: int = 128
    # Weight formats kept packed ({"linear", "embed", "lm_head"} -> f32/q4_1/q8_0, plus per-tensor
    # entries "model.layers.<i>.<linear>.weight" -> format where a GGUF file mixes block types), as a
    # sorted tuple of pairs so the options stay hashable (and part of the cache key); empty = all f32.
    weight_formats: tuple[tuple[str, str], ...] = ()
    # CPU with AVX-512 VNNI or AVX2: packed-weight matmuls quantize activations to int8 per 32-element
    # block, as llama.cpp does (~3x faster); False keeps the exact float32-dequantize kernels.
    int8_activations: bool = True
    # Group-quantize float weights ("q4_1" / "q8_0") or dequantize packed ones ("none"); None:
    # keep what the source stores. Resolved into weight_formats by prepare_package.
    quantization: str | None = None
    # KV cache dtype (float32/float16/bfloat16); None: the activations' dtype, or bfloat16 for
    # packed weights with int8 activations on a CPU with AVX-512 BF16 (models/build.py).
    kv_dtype: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "prefill_chunk_size": self.prefill_chunk_size,
            "max_batch_size": self.max_batch_size,
            "weight_formats": dict(self.weight_formats),
            "int8_activations": self.int8_activations,
            "quantization": self.quantization,
            "kv_dtype": self.kv_dtype,
        }


def _tvm_version() -> str:
    try:
        return importlib_metadata.version("apache-tvm")
    except importlib_metadata.PackageNotFoundError:  # a source build of TVM
        return "unknown"


def host_fingerprint() -> str:
    """Identifies the host CPU's instruction set without importing tvm (for the cache key)."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].strip()
                if model and flags:
                    break
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    return hashlib.sha256(f"{model}|{flags}".encode()).hexdigest()[:16]


def target_key(device_kind: str, device_detail: str = "", target: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part of the cache key that stands for the compile target: an explicit target (a CUDA
    architecture, a CPU other than this host's) is its own key."""
    if target is not None:
        return {"target": target}
    if device_kind == "cpu":
        return {"kind": "llvm", "host": host_fingerprint(), "cores": os.cpu_count()}
    return {"kind": device_kind, "detail": device_detail}


def device_dtype(device_kind: str, hf_config: dict[str, Any], quantization: str | None = None) -> str:
    """The dtype a device computes in: float32 on cpu; on cuda float16, or bfloat16 for a model
    whose `torch_dtype` is bfloat16 (float16's range overflows on some bf16-trained models), and
    float32 when weights are group-quantized (the packed kernels take float32 activations)."""
    if device_kind != "cuda" or quantization not in (None, "none"):
        return "float32"
    stored = hf_config.get("torch_dtype") or hf_config.get("dtype") or ""  # "dtype" in newer transformers
    return "bfloat16" if str(stored).replace("torch.", "") == "bfloat16" else "float16"


def device_compile_args(device: Any, compute_capability_fn: Any = None) -> tuple[str, dict[str, Any] | None]:
    """(device kind, explicit target or None) for prepare_package on a resolved `Device`: a CUDA
    device's target names the architecture of the index asked for, so it is in the cache key."""
    from .devices import tvm_target

    if device.kind != "cuda":
        return device.kind, None
    return "cuda", tvm_target(device, compute_capability_fn=compute_capability_fn)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def weights_fingerprint(files: list[str]) -> str:
    """Cheap identity of the weight files: names, sizes and a hash of their first and last MiB."""
    h = hashlib.sha256()
    for path in sorted(files):
        p = Path(path)
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read(1 << 20))
    return h.hexdigest()[:24]


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the sources that shape a package (model definitions, kernels, weight conversion):
    a tvmlm whose kernels changed without a version bump (a development checkout, a patched
    install) never reuses a library or weights built by the old code. Reads ~40 small files."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for sub in ("models", "weights"):
        for path in sorted((root / sub).glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def lib_key(hf_config: dict[str, Any], target: dict[str, Any], options: CompileOptions) -> str:
    """Keyed on the numbers that shape the graph (`LlamaConfig`), not the config file: an HF
    directory and a GGUF of one model share a library. Raises ValueError for a config that no
    model definition implements, so it is refused before anything is compiled."""
    from dataclasses import asdict

    from .models.llama_config import LlamaConfig

    return _digest(
        {
            "config": asdict(LlamaConfig.from_hf(hf_config)),
            "target": target,
            "options": options.as_dict(),
            "tvmlm": __version__,
            "code": code_fingerprint(),
            "tvm": _tvm_version(),
        }
    )


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _entry_is_valid(directory: Path, key: str, files: tuple[str, ...]) -> bool:
    """The entry has `files` and they are as built (integrity.py: hashes recorded at build)."""
    manifest = _read_manifest(directory)
    if manifest is None or manifest.get("key") != key:
        return False
    if not all((directory / name).is_file() for name in files):
        return False
    if "files" not in manifest:  # an entry from before hashes were recorded: sizes, then record them
        sizes = manifest.get("sizes", {})
        if any((directory / n).stat().st_size != sizes.get(n) for n in files if n != "manifest.json"):
            return False
        _write_manifest(directory, key, files, {k: v for k, v in manifest.items() if k not in ("key", "sizes")})
        return True
    problem = integrity.verify(directory, manifest)
    if problem is not None:
        logger.warning("cache entry %s: %s; rebuilding it", directory, problem)
    return problem is None


def _write_manifest(directory: Path, key: str, files: tuple[str, ...], extra: dict[str, Any]) -> None:
    """manifest.json, written last: the key, and the size and hash of every file (integrity.py)."""
    present = (p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    names = sorted({*files, *present} - {"manifest.json"})
    manifest = integrity.manifest_entry(directory, names, {"key": key, "created": time.time(), **extra})
    tmp = directory / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, directory / "manifest.json")


def _publish(tmp: Path, final: Path) -> None:
    """Atomically move a finished entry into place, replacing a stale one."""
    if final.exists() or final.is_symlink():
        stale = final.with_name(final.name + f".stale-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.rename(tmp, final)


@dataclass
class Package:
    """A compiled model package on disk, ready for `_core`."""

    path: Path
    metadata: dict[str, Any]
    compiled: bool  # True when this call had to compile the library


def prepare_package(
    model_path: str | os.PathLike,
    device_kind: str = "cpu",
    device_detail: str = "",
    options: CompileOptions | None = None,
    *,
    target: dict[str, Any] | None = None,
    progress: bool = True,
) -> Package:
    """Return the cached package for a model, compiling and converting what is missing."""
    from . import weights

    options = options or CompileOptions()
    tkey = target_key(device_kind, device_detail, target)
    root = cache_dir()
    # Warm path: a source index maps (weight files, target, options) to the package, so a cache hit
    # parses neither the GGUF metadata (seconds for a 49k-token vocabulary) nor config files.
    index = root / "sources" / f"{_digest({'files': weights_fingerprint(_source_files(model_path)), 'target': tkey, 'options': options.as_dict(), 'tvmlm': __version__, 'tvm': _tvm_version()})}.json"
    hit = _index_lookup(index, root)
    if hit is not None:
        return hit

    loaded = weights.load(model_path)
    from .models.llama_config import LlamaConfig, check_target_support

    # everything that cannot run is refused here, before anything is compiled
    check_target_support(LlamaConfig.from_hf(loaded.config), device_kind)
    if options.dtype is None:
        from dataclasses import replace

        options = replace(options, dtype=device_dtype(device_kind, loaded.config, options.quantization))
    if not options.weight_formats and options.quantization is None and options.dtype == "float32":
        from dataclasses import replace

        from .models.convert import half_formats

        # 16-bit checkpoints keep their weights as stored (models/half.py)
        if (plan := half_formats(loaded.stored_dtypes)) is not None:
            options = replace(options, weight_formats=tuple(sorted(plan.items())))
    if (note := widening_note(loaded, options)) is not None:
        logger.warning(note)
    if not options.weight_formats and (options.quantization is not None or loaded.packed_formats):
        # Asked-for group quantization, else block-quantized GGUF weights stay packed, tensor by
        # tensor (weights/gguf_blocks.py): 4-6x fewer bytes per token.
        from dataclasses import replace

        from .models.convert import plan_weight_formats, quantization_formats
        from .models.llama_config import LlamaConfig

        cfg = LlamaConfig.from_hf(loaded.config)
        if options.quantization is not None:
            plan = quantization_formats(cfg, options.quantization, options.dtype)
        else:
            plan = plan_weight_formats(cfg, loaded.packed_formats, options.dtype)
        options = replace(options, weight_formats=tuple(sorted(plan.items())))
    lkey = lib_key(loaded.config, tkey, options)
    mkey = _digest({"lib": lkey, "weights": weights_fingerprint(loaded.source_files)})
    lib_dir = root / "libs" / lkey
    pkg_dir = root / "models" / mkey
    if _entry_is_valid(pkg_dir, mkey, PACKAGE_FILES) and _entry_is_valid(lib_dir, lkey, LIB_FILES):
        _index_store(index, lkey, mkey)
        return Package(pkg_dir, json.loads((pkg_dir / "metadata.json").read_text()), compiled=False)

    (root / "locks").mkdir(parents=True, exist_ok=True)
    compiled = False
    with FileLock(str(root / "locks" / f"{lkey}.lock")):
        if not _entry_is_valid(lib_dir, lkey, LIB_FILES):
            _build_library(loaded.config, lib_dir, lkey, device_kind, target, options, progress)
            compiled = True
    with FileLock(str(root / "locks" / f"{mkey}.lock")):
        if compiled or not _entry_is_valid(pkg_dir, mkey, PACKAGE_FILES):
            _build_package(loaded, lib_dir, pkg_dir, mkey, progress)
    _index_store(index, lkey, mkey)
    return Package(pkg_dir, json.loads((pkg_dir / "metadata.json").read_text()), compiled=compiled)


def widening_note(loaded, options: CompileOptions) -> str | None:
    """What to tell the user when 16-bit weights of an HF checkpoint are widened to float32 (twice
    their size in memory): a checkpoint that mixes bfloat16 and float16 weights, which the 16-bit
    kernels (one dtype per model, models/half.py) do not keep as stored."""
    from .models.convert import half_formats

    half = sorted(loaded.stored_dtypes & {"BF16", "F16"})
    if not half or half_formats(loaded.stored_dtypes) is not None or options.quantization is not None:
        return None
    return (f"{loaded.path} stores {'/'.join(half)} weights; they are widened to float32 (twice their size in "
            "memory). EngineConfig(quantization='q8_0') or 'q4_1' packs them to 8 or 4.5 bits per weight instead")


def _source_files(model_path: str | os.PathLike) -> list[str]:
    """The files a model is read from, found without parsing any of them."""
    path = Path(model_path).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        return sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".jinja", ".model", ".txt"))
    return []


def _index_lookup(index: Path, root: Path) -> Package | None:
    try:
        entry = json.loads(index.read_text())
        lkey, mkey = entry["lib"], entry["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    pkg_dir = root / "models" / mkey
    if _entry_is_valid(pkg_dir, mkey, PACKAGE_FILES) and _entry_is_valid(root / "libs" / lkey, lkey, LIB_FILES):
        return Package(pkg_dir, json.loads((pkg_dir / "metadata.json").read_text()), compiled=False)
    return None


def _index_store(index: Path, lkey: str, mkey: str) -> None:
    index.parent.mkdir(parents=True, exist_ok=True)
    tmp = index.with_name(f".{index.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"lib": lkey, "model": mkey}))
    os.replace(tmp, index)  # atomic: readers see the old entry or the new one


def _build_library(
    hf_config: dict[str, Any],
    lib_dir: Path,
    key: str,
    device_kind: str,
    target: dict[str, Any] | None,
    options: CompileOptions,
    progress: bool,
) -> None:
    from .models.build import build_module
    from .models.progress import progress_bar

    lib_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=lib_dir.parent))
    try:
        with progress_bar(total=3, desc="compile", unit="stage", disable=not progress) as bar:
            t0 = time.perf_counter()
            bar.set_postfix_str("export")
            built = build_module(hf_config, device_kind, target, options)
            bar.update()
            bar.set_postfix_str("tvm.compile")
            executable = built.compile()
            bar.update()
            bar.set_postfix_str("link")
            executable.export_library(str(tmp / "lib.so"))
            bar.update()
        (tmp / "metadata.json").write_text(json.dumps(built.metadata, indent=1))
        _write_manifest(tmp, key, LIB_FILES, {"seconds": time.perf_counter() - t0})
        logger.info("compiled %s for %s in %.1f s", hf_config.get("architectures"), built.metadata["target"], time.perf_counter() - t0)
        _publish(tmp, lib_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build_package(loaded, lib_dir: Path, pkg_dir: Path, key: str, progress: bool, lib_file: Path | None = None) -> None:
    from .models.convert import convert_params

    metadata = json.loads((lib_dir / "metadata.json").read_text())
    pkg_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=pkg_dir.parent))
    try:
        os.symlink(lib_file or (lib_dir / "lib.so"), tmp / "lib.so")
        convert_params(loaded, metadata, tmp / "params.safetensors", progress=progress)
        loaded.tokenizer_dir(tmp)
        for extra in ("bos_token_id", "eos_token_id"):
            if extra in loaded.config:
                metadata[extra] = loaded.config[extra]
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=1))
        _write_manifest(tmp, key, PACKAGE_FILES, {"source": [str(s) for s in loaded.source_files]})
        _publish(tmp, pkg_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_target(metadata: dict[str, Any], device_kind: str, what: str) -> None:
    """Raise ModelError unless a library's metadata says it was compiled for `device_kind`."""
    want = "llvm" if device_kind == "cpu" else device_kind
    if metadata.get("target") != want:
        raise ModelError(
            f"{what} was built for target {metadata.get('target')!r}, but device kind {device_kind!r} "
            f"needs {want!r}; recompile for this device (leave model_lib=None)"
        )


def package_with_library(model_path: str | os.PathLike, model_lib: str | os.PathLike, device_kind: str, *, progress: bool = True) -> Package:
    """A package for `model_path` that uses a library compiled earlier (`Engine(model_lib=...)`).

    The library must have been built by tvmlm for the same model shape and device kind: its
    metadata.json (written beside every lib.so tvmlm builds) is checked against the model's config.
    """
    from . import weights

    lib = Path(model_lib).expanduser().resolve()
    meta_path = lib.parent / "metadata.json"
    if not lib.is_file():
        raise ModelError(f"model_lib={str(model_lib)!r} does not exist (expected a compiled lib.so)")
    if not meta_path.is_file():
        raise ModelError(f"model_lib={str(model_lib)!r} has no metadata.json beside it: it was not built by tvmlm")
    metadata = json.loads(meta_path.read_text())
    check_target(metadata, device_kind, f"model_lib={str(model_lib)!r}")
    loaded = weights.load(model_path)
    cfg = loaded.config
    expected = {
        "vocab_size": cfg.get("vocab_size"),
        "hidden_size": cfg.get("hidden_size"),
        "num_hidden_layers": cfg.get("num_hidden_layers"),
        "num_attention_heads": cfg.get("num_attention_heads"),
        "num_key_value_heads": cfg.get("num_key_value_heads") or cfg.get("num_attention_heads"),
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
        "intermediate_size": cfg.get("intermediate_size"),
    }
    mismatched = {k: (metadata.get(k), v) for k, v in expected.items() if metadata.get(k) != v}
    if mismatched:
        detail = ", ".join(f"{k}: library {a} vs model {b}" for k, (a, b) in mismatched.items())
        raise ModelError(f"model_lib={str(model_lib)!r} was built for another model ({detail})")
    key = _digest({"lib": str(lib), "lib_size": lib.stat().st_size, "weights": weights_fingerprint(loaded.source_files)})
    root = cache_dir()
    pkg_dir = root / "models" / f"ext-{key}"
    (root / "locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "locks" / f"ext-{key}.lock")):
        if not _entry_is_valid(pkg_dir, f"ext-{key}", PACKAGE_FILES):
            _build_package(loaded, lib.parent, pkg_dir, f"ext-{key}", progress, lib_file=lib)
    return Package(pkg_dir, json.loads((pkg_dir / "metadata.json").read_text()), compiled=False)


def resolve_package(
    model: str | os.PathLike, device: Any, model_lib: str | None = None, quantization: str | None = None,
    kv_dtype: str | None = None,
) -> tuple[Path, dict, bool]:
    """Return (package dir, metadata, compiled?) for `model` (a compiled package, or weights that are
    compiled with `model_lib` or into the cache), raising ModelError/ConfigError with the fix.
    `device` is a resolved `Device` (or a kind); weights are compiled in the device's dtype
    (device_dtype) for its architecture (device_compile_args)."""
    from .devices import parse_device

    device = parse_device(device)
    device_kind = device.kind
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model={str(model)!r} does not exist; expected a Hugging Face model directory "
            "(config.json + *.safetensors + tokenizer), a .gguf file, or a compiled tvmlm package"
        )
    compiled_already = path.is_dir() and all((path / f).exists() for f in PACKAGE_FILES)
    if quantization is not None and (compiled_already or model_lib is not None):
        raise ConfigError(
            f"quantization={quantization!r} applies when tvmlm compiles the model, but "
            + ("model_lib was given" if model_lib is not None else f"model={str(model)!r} is already a compiled package")
            + "; leave quantization=None"
        )
    if compiled_already:
        if model_lib is not None:
            raise ConfigError(
                f"model_lib={model_lib!r} was given, but model={str(model)!r} is already a compiled package "
                "with its own lib.so; pass one or the other"
            )
        meta = integrity.check_package(path)  # metadata, params header, hashes when it has a manifest
        check_kv_dtype(kv_dtype, meta, f"the compiled package {str(path)!r}")
        check_target(meta, device_kind, f"model library {str(path / 'lib.so')!r}")
        return path, meta, False

    try:
        if model_lib is not None:
            pkg = package_with_library(path, model_lib, device_kind)
            check_kv_dtype(kv_dtype, pkg.metadata, f"model_lib={model_lib!r}")
        else:
            options = CompileOptions(dtype=None, quantization=quantization, kv_dtype=kv_dtype)
            kind, target = device_compile_args(device)
            pkg = prepare_package(path, kind, options=options, target=target)
    except TvmlmError:
        raise
    except (OSError, ValueError, NotImplementedError) as exc:
        raise ModelError(str(exc)) from exc
    return pkg.path, pkg.metadata, pkg.compiled


def check_kv_dtype(kv_dtype: str | None, meta: dict, library: str) -> None:
    """The KV cache dtype is compiled into the library: a different one cannot be chosen later."""
    if kv_dtype is None:
        return
    compiled = model_kv_dtype(meta)
    if kv_dtype != compiled:
        raise ConfigError(
            f"kv_dtype={kv_dtype!r}, but {library} was compiled with a {compiled} KV cache; "
            f"leave kv_dtype=None or {compiled!r}, or compile from the model's weights"
        )
