"""Shared fixtures: tiny random-weight Llama and Qwen2 models built in-process (no weights from anywhere)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

VOCAB = 128


class ByteTokenizer:
    """A minimal tokenizer over VOCAB ids: id i <-> chr(32 + i); id 0 is EOS. Enough for unit tests."""

    eos_token_id = 0
    pad_token_id = 0
    chat_template = None

    def encode(self, text, add_special_tokens=False):
        return [max(1, min(VOCAB - 1, ord(c) - 32)) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(32 + i) for i in ids if not (skip_special_tokens and i == 0))

    def __call__(self, text, add_special_tokens=False, **_):
        return {"input_ids": self.encode(text)}

    def convert_tokens_to_ids(self, tok):
        return self.encode(tok)[0]

    def __len__(self):
        return VOCAB


def tiny_model(arch: str, dtype=torch.float32, seed: int = 0):
    common = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=0, bos_token_id=1, pad_token_id=0,
    )
    cfg = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    # Random init is near-uniform; sharpen the output so greedy/sampling choices are well separated.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model.eval()


@pytest.fixture(params=["llama", "qwen2"])
def tiny(request):
    """(model, tokenizer) for a tiny random Llama or Qwen2, float32."""
    return tiny_model(request.param), ByteTokenizer()


@pytest.fixture
def tiny_llama():
    return tiny_model("llama"), ByteTokenizer()


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct from the registry, float32 on CPU, eval mode.

    Shared by the whole session: do not modify it. Uses the normal cache directory, so the first
    run on a machine converts the GGUF once (~20 s) and later runs load it in well under 2 s.
    """
    from decodesearch.models import load_model

    return load_model("smollm2-135m-instruct", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def tiny_dir(smollm2, tmp_path_factory):
    """A folder holding a tiny random Llama with SmolLM2's vocabulary and SmolLM2's tokenizer,
    for code paths that load a model by path (CLI, lm-eval, subprocesses)."""
    _, tok = smollm2
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # well-separated greedy choices
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
