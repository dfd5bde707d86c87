"""JIT compilation of a model into a cached package (docs/contracts.md, section 1).

Cache layout under `cache_dir()` (TVMLM_CACHE_DIR, else the platform cache dir):

    libs/<lib_key>/lib.so          compiled library: depends on config + target + options + versions
    models/<model_key>/            package: lib.so (symlink), params.safetensors, metadata.json,
                                   tokenizer files, manifest.json (written last)

`model_key` adds the weights' fingerprint to `lib_key`, so two fine-tunes of one architecture share
the compiled library. Entries are built in a temporary directory and renamed into place under a
file lock: concurrent builders never see half-written entries, and a crash leaves only a temp dir.
Computing the keys (compile_keys.py) needs neither `import tvm` nor reading tensors: the warm path
stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from . import integrity
from .compile_keys import (CompileOptions, device_compile_args, device_dtype, digest, lib_key, source_key,  # noqa: F401
                           target_key, weights_fingerprint)
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
    index = root / "sources" / f"{source_key(_source_files(model_path), tkey, options)}.json"
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
    mkey = digest({"lib": lkey, "weights": weights_fingerprint(loaded.source_files)})
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
    key = digest({"lib": str(lib), "lib_size": lib.stat().st_size, "weights": weights_fingerprint(loaded.source_files)})
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
