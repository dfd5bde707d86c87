"""`_core.Model` against transformers on tiny random-weight models (fp32, CPU)."""

import json
import shutil

import numpy as np
import pytest

from tvmlm import _core
from tvmlm.testing.greedy import core_greedy

TOL = 1e-3
# Every tiny variant of conftest.TINY_MODELS: Llama (untied, tied; llama3 rope), Qwen2 (bias, a sliding
# window on one layer), Qwen3 (q/k norm), Mistral (explicit head_dim, sliding window), Gemma 3,
# Phi-3; all with the odd vocabulary size 611. Windows are shorter than the sequences.
ARCHS = ["llama", "llama-tied", "qwen2", "qwen3", "mistral", "gemma3", "phi3"]


@pytest.fixture(scope="session", params=ARCHS)
def pair(request, tiny_package, tiny_model_dir):
    """(compiled package dir, HF dir) of a tiny random model, compiled once per session."""
    return tiny_package(request.param).path, tiny_model_dir(request.param)


@pytest.fixture(scope="session")
def llama_pkg(tiny_package):
    return tiny_package("llama").path


def hf_model(hf_dir):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


def hf_greedy(model, prompt, steps):
    """Last-token logits after the prompt and after each of `steps` greedy tokens. The whole
    sequence is recomputed every step: no KV cache on the reference side."""
    import torch

    logits, tokens, seq = [], [], list(prompt)
    with torch.no_grad():
        for _ in range(steps + 1):
            row = model(torch.tensor([seq])).logits[0, -1].double().numpy()
            logits.append(row)
            tokens.append(int(np.argmax(row)))
            seq.append(tokens[-1])
    return np.stack(logits), tokens


def greedy_reference(pkg, max_total: int, chunk: int):
    """greedy(prompt, n): the first n greedy tokens of `prompt` computed alone on `_core.Model`
    (one prefill, then decode; memoized). The reference the engine tests compare against."""
    m = _core.Model(str(pkg), "cpu:0", 2)
    m.create_kv_cache(1, max_total, chunk)
    cache = {}

    def greedy(prompt, n):
        key = tuple(prompt)
        if key not in cache or len(cache[key]) < n:
            m.add_sequence(0)
            cache[key] = core_greedy(m, 0, list(prompt), n - 1)[1]
            m.remove_sequence(0)
        return cache[key][:n]

    return greedy


def new_model(pkg, **kv):
    m = _core.Model(str(pkg), "cpu:0", 2)
    m.create_kv_cache(kv.get("batch", 8), kv.get("total", 2048), kv.get("chunk", 512))
    return m


def test_metadata_is_the_package_file(pair):
    pkg, _ = pair
    m = _core.Model(str(pkg))
    assert json.loads(m.metadata) == json.loads((pkg / "metadata.json").read_text())


def test_prefill_and_24_decode_steps_match_transformers(pair):
    pkg, hf_dir = pair
    prompt = [1, 17, 300, 42, 42, 7, 599, 123, 5]
    ref_logits, ref_tokens = hf_greedy(hf_model(hf_dir), prompt, 24)
    m = new_model(pkg)
    m.add_sequence(0)
    logits, tokens = core_greedy(m, 0, prompt, 24)
    assert logits.dtype == np.float32 and logits.shape == ref_logits.shape
    assert np.max(np.abs(logits - ref_logits)) <= TOL
    assert tokens == ref_tokens


def test_batch_of_four_equals_each_alone(pair):
    pkg, _ = pair
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 611, size=n).tolist() for n in (3, 9, 17, 30)]
    steps = 12
    m = new_model(pkg)

    alone = []
    for i, p in enumerate(prompts):
        m.add_sequence(100 + i)
        alone.append(core_greedy(m, 100 + i, p, steps))

    ids = [0, 1, 2, 3]
    for i in ids:
        m.add_sequence(i)
    rows = [m.prefill(ids, prompts)]
    assert rows[0].shape == (4, 611)
    tokens = [[int(t)] for t in np.argmax(rows[0], axis=1)]
    for _ in range(steps):
        rows.append(m.decode(ids, [t[-1] for t in tokens]))
        for i, t in enumerate(np.argmax(rows[-1], axis=1)):
            tokens[i].append(int(t))
    for i in ids:
        batched = np.stack([r[i] for r in rows])
        assert np.max(np.abs(batched - alone[i][0])) <= 1e-4
        assert tokens[i] == alone[i][1]


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_prefill_in_chunks_equals_one_prefill(tiny_package, name):
    """Later chunks attend to earlier ones through the cache's pages (with a sliding window:
    across the window's start)."""
    prompt = np.random.default_rng(1).integers(0, 611, size=40).tolist()
    m = new_model(tiny_package(name).path)
    m.add_sequence(0)
    m.add_sequence(1)
    whole = m.prefill([0], [prompt])
    m.prefill([1], [prompt[:13]])
    m.prefill([1], [prompt[13:29]])
    last = m.prefill([1], [prompt[29:]])
    assert np.max(np.abs(whole - last)) <= 1e-4
    # Continuing both sequences gives the same next logits.
    tok = int(np.argmax(whole[0]))
    np.testing.assert_allclose(m.decode([0], [tok]), m.decode([1], [tok]), atol=1e-4)


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_fork_sequence_continues_from_parent(tiny_package, name):
    prompt = [5, 6, 7, 8, 9, 10] * 3  # longer than gemma3's window: the fork's keys span two depths
    m = new_model(tiny_package(name).path)
    m.add_sequence(0)
    m.prefill([0], [prompt])
    m.fork_sequence(0, 1)
    m.add_sequence(2)
    m.prefill([2], [prompt])
    fork = m.decode([1], [11])
    fresh = m.decode([2], [11])
    np.testing.assert_allclose(fork, fresh, atol=1e-4)
    m.remove_sequence(1)
    with pytest.raises(RuntimeError):
        m.decode([1], [11])


def test_errors_are_clear(llama_pkg, tmp_path):
    with pytest.raises(RuntimeError, match="nonexistent-dir/metadata.json"):
        _core.Model(str(tmp_path / "nonexistent-dir"))
    with pytest.raises(ValueError, match="unknown device kind"):
        _core.Model(str(llama_pkg), "tpu:0")

    m = _core.Model(str(llama_pkg))
    with pytest.raises(RuntimeError, match="KV cache not created"):
        m.prefill([0], [[1, 2]])
    m.create_kv_cache(2, 256, 32)
    with pytest.raises(RuntimeError, match="cannot be found"):
        m.prefill([0], [[1, 2]])
    m.add_sequence(0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.prefill([0], [[1, 611]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.decode([0], [-1])
    with pytest.raises(ValueError, match="prefill chunk size"):
        m.prefill([0], [list(range(33))])
    with pytest.raises(ValueError, match="max batch size"):
        m.create_kv_cache(10**6, 256, 32)
    # The model is still usable after all of that.
    assert m.prefill([0], [[1, 2, 3]]).shape == (1, 611)


def test_library_without_vm_functions_is_named(llama_pkg, tmp_path):
    for name in ("metadata.json", "params.safetensors"):
        shutil.copy(llama_pkg / name, tmp_path / name)
    # A shared library that is not a relax VM executable (and registers nothing when loaded).
    shutil.copy(_core.__file__, tmp_path / "lib.so")
    with pytest.raises(RuntimeError, match="lacks function 'vm_load_executable'"):
        _core.Model(str(tmp_path))


def test_params_must_match_metadata(llama_pkg, tmp_path):
    for name in ("lib.so", "params.safetensors"):
        shutil.copy(llama_pkg / name, tmp_path / name)
    meta = json.loads((llama_pkg / "metadata.json").read_text())
    meta["params"][0]["shape"] = [1, 2]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match=meta["params"][0]["name"]):
        _core.Model(str(tmp_path))
    meta["params"][0]["name"] = "no.such.param"
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="'no.such.param' is missing"):
        _core.Model(str(tmp_path))


def test_devices():
    assert _core.device_exists("cpu", 0) is True
    assert _core.device_memory("cpu", 0) == 0
    assert _core.device_exists("bogus", 0) is False
    for kind in ("cuda", "metal", "vulkan"):
        exists = _core.device_exists(kind, 0)  # must not crash without driver or runtime library
        assert isinstance(exists, bool)
        assert (_core.device_memory(kind, 0) > 0) == exists or kind != "cuda"
    assert _core.device_exists("cuda", 4096) is False


def test_import_does_not_load_tvm_python_package():
    import subprocess
    import sys

    code = "import sys, tvmlm._core; print('tvm' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
