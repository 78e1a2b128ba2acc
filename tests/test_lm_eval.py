"""lm-evaluation-harness plug-in: the `decodesearch` model, on a tiny local task, fully offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest

import lm_eval  # noqa: E402  (a dependency of the eval extra, installed by make)
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from decodesearch.engine import Engine, Stop  # noqa: E402
from decodesearch.integrations import lm_eval as ds_lm_eval  # noqa: E402
from decodesearch.integrations.lm_eval import DecodeSearchLM, cut_at_stop, main  # noqa: E402
from decodesearch.strategies import make_strategy  # noqa: E402

TASK = "ds_arith"
QUESTIONS = [("What is 2 + 3?", "5"), ("What is 7 * 6?", "42"), ("What is 9 - 4?", "5")]
MAX_GEN = 6


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A local generate_until task (JSONL data + YAML), loaded with TaskManager(include_path=...)."""
    root = tmp_path_factory.mktemp("tasks")
    data = root / "arith.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    (root / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {json.dumps(str(data))}\n"
        f"  cache_dir: {json.dumps(str(root / 'hf_cache'))}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_target: "{{answer}}"\n'
        "generation_kwargs:\n"
        '  until: ["\\n"]\n'
        f"  max_gen_toks: {MAX_GEN}\n"
        "  do_sample: false\n"
        "metric_list:\n"
        "  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )
    return str(root)


@pytest.fixture(scope="module")
def greedy_lm(tiny_dir):
    return DecodeSearchLM(pretrained=tiny_dir, strategy="greedy", device="cpu", dtype="float32", batch_size=1)


def _tm(task_dir):
    return TaskManager(include_path=task_dir, include_defaults=False)


def _request(context, **gen_kwargs):
    return Instance(request_type="generate_until", doc={}, arguments=(context, gen_kwargs), idx=0)


def _engine_greedy(lm, context, max_tokens, stop=()):
    """What the engine alone generates greedily for `context` (its own fresh Engine)."""
    ids = lm.tokenizer(context)["input_ids"]
    strat = make_strategy("greedy", max_tokens=max_tokens, stop=Stop(strings=tuple(stop)))
    return strat.run_ids(Engine(lm.model, lm.tokenizer), [ids], [context])[0], len(ids)


def test_registered_under_decodesearch():
    assert get_model("decodesearch") is DecodeSearchLM


def test_simple_evaluate_goes_through_the_strategy(greedy_lm, task_dir):
    lm = greedy_lm
    done, forwarded = lm.requests_done, lm.engine.stats.tokens_forwarded
    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=_tm(task_dir), log_samples=True,
                                  bootstrap_iters=0)
    metric = out["results"][TASK]["exact_match,none"]
    assert 0.0 <= metric <= 1.0
    samples = out["samples"][TASK]
    assert len(samples) == len(QUESTIONS)
    assert lm.requests_done - done == len(QUESTIONS)
    expected_forwarded = 0
    for s in samples:
        context = f"Question: {s['doc']['question']}\nAnswer:"
        ref, n_prompt = _engine_greedy(lm, context, MAX_GEN, stop=("\n", lm.tokenizer.eos_token))
        assert s["resps"][0][0] == ref.text.split("\n")[0]
        expected_forwarded += n_prompt + len(ref.token_ids)
    # every prompt and generated token forwarded exactly once, through this LM's own engine
    assert lm.engine.stats.tokens_forwarded - forwarded == expected_forwarded
    assert lm.engine.stats.peak_rows > 2  # the request batch ran concurrently (2 rows per greedy search)
    assert out["config"]["decodesearch_strategy"] == "greedy"


def test_until_stops_the_engine_and_truncates(greedy_lm):
    lm = greedy_lm
    context = "Question: What is 2 + 3?\nAnswer:"
    full, _ = _engine_greedy(lm, context, 12)
    words = full.text.split()
    stop = next(w for w in words[1:] if full.text.find(w) > 0)
    [text] = lm.generate_until([_request(context, until=[stop], max_gen_toks=12, do_sample=False)])
    assert text == full.text[: full.text.find(stop)]
    sample = lm.last_result.samples[0]
    assert sample.stop_reason == "stop_string"  # the engine stopped on it, not only the post-cut
    assert stop in lm.last_result.text and lm.last_result.tokens_generated < 12


TRIGGER = "\n\nWait, let me check.\n"


@pytest.mark.parametrize("text, stops, forced, expected", [
    ("a\n\nb", ["\n\n"], (), "a"),
    ("a" + TRIGGER + "b\n\nc", ["\n\n"], (TRIGGER,), "a" + TRIGGER + "b"),
    ("a\n" + TRIGGER + "b", ["\n\n"], (TRIGGER,), "a\n" + TRIGGER + "b"),  # spans the boundary
    ("a" + TRIGGER + "b Q: c\n\n", ["\n\n", "Q:"], (TRIGGER,), "a" + TRIGGER + "b "),
    ("abc", [], (TRIGGER,), "abc"),
    ("abc", ["", "z"], (), "abc"),
])
def test_cut_at_stop_ignores_forced_texts(text, stops, forced, expected):
    assert cut_at_stop(text, stops, forced) == expected


def test_ids_trigger_is_not_cut_by_a_newline_stop(tiny_dir):
    """A task whose `until` holds "\\n\\n" keeps IDS's self-correction: the triggers (which start
    with "\\n\\n") are forced text, so the answer is not cut at the first one."""
    lm = DecodeSearchLM(pretrained=tiny_dir, strategy="ids", n=2, b0=2, seed=0, triggers=[TRIGGER],
                        device="cpu", dtype="float32")
    [text] = lm.generate_until([_request("Question: What is 2 + 3?\nAnswer:", until=["\n\n"], max_gen_toks=8)])
    result = lm.last_result
    assert any(e.event == "trigger" for e in result.trace)
    assert TRIGGER in result.text
    assert text == cut_at_stop(result.text, ["\n\n"], (TRIGGER,))
    assert TRIGGER in text  # lm-eval's own rule would have cut right before it
    assert len(text) > len(result.text.split("\n\n")[0])


def test_max_gen_toks_is_the_strategy_budget(greedy_lm):
    lm = greedy_lm
    [text] = lm.generate_until([_request("Question: What is 7 * 6?\nAnswer:", until=[], max_gen_toks=3)])
    assert lm.last_result.tokens_generated == 3 and lm.last_result.samples[0].stop_reason == "length"
    assert lm.strategy_for(3, []).max_tokens == 3
    assert lm.strategy_for(3, []) is lm.strategy_for(3, [])  # one strategy per distinct gen kwargs
    assert text == lm.last_result.text


def test_loglikelihood_stays_hflm(greedy_lm):
    req = Instance(request_type="loglikelihood", doc={}, arguments=("Question: What is 2 + 3?\nAnswer:", " 5"), idx=0)
    [(logprob, is_greedy)] = greedy_lm.loglikelihood([req])
    assert logprob < 0 and isinstance(is_greedy, bool)


def test_ids_from_model_args_string(tiny_dir, task_dir):
    args = (f"pretrained={tiny_dir},strategy=ids,n=2,b0=2,gamma=2,triggers=\\nWait.|\\nHmm.,"
            "temperature=0.9,top_k=50,seed=0,max_rows=8,dtype=float32")
    lm = get_model("decodesearch").create_from_arg_string(args, {"batch_size": 1, "device": "cpu"})
    assert lm.strategy_kwargs["triggers"] == ["\nWait.", "\nHmm."]
    assert lm.strategy_kwargs["sampler"].temperature == 0.9 and lm.strategy_kwargs["sampler"].top_k == 50
    [text] = lm.generate_until([_request("Question: What is 9 - 4?\nAnswer:", until=[], max_gen_toks=6)])
    result = lm.last_result
    assert result.strategy == "ids" and len(result.samples) == 2 and isinstance(text, str)
    assert any(ev.event == "trigger" for ev in result.trace)
    assert lm.engine.live_branches == []
    # and the plain string route of simple_evaluate
    out = lm_eval.simple_evaluate(model="decodesearch", model_args=args + ",device=cpu", tasks=[TASK],
                                  task_manager=_tm(task_dir), bootstrap_iters=0)
    assert out["config"]["decodesearch_strategy"] == "ids"
    assert out["config"]["decodesearch_options"]["n"] == 2
    settings = out["config"]["decodesearch_settings"]  # the strategy's settings, less the per-request ones
    assert settings == {k: v for k, v in lm.strategy_settings.as_config().items() if k not in ("max_tokens", "stop")}
    assert settings["b0"] == 2 and settings["sampler"]["top_k"] == 50 and settings["triggers"] == ["\nWait.", "\nHmm."]
    assert "exact_match,none" in out["results"][TASK]


def test_bad_strategy_name_is_a_clear_error(tiny_dir, task_dir):
    with pytest.raises(ValueError, match=r"unknown strategy 'nope'; choose one of .*ids"):
        DecodeSearchLM(pretrained=tiny_dir, strategy="nope")
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        lm_eval.simple_evaluate(model="decodesearch", model_args=f"pretrained={tiny_dir},strategy=nope",
                                tasks=[TASK], task_manager=_tm(task_dir))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "ids", "gama": 2}, r"unknown model arg 'gama' for strategy 'ids'; its options: .*gamma"),
        ({"strategy": "ids", "n": "four"}, r"n='four' is not accepted; expected int"),
        ({"strategy": "ids", "max_tokens": 8}, r"'max_tokens' is not accepted: it is set by the task's max_gen_toks"),
        ({"strategy": "best_of_n", "scorer": "x"}, r"'scorer' cannot be given in model_args"),
        ({"strategy": "ids", "peft": "x"}, r"'peft' is not supported"),
        ({"strategy": "ids", "gamma": 0.5}, r"gamma=0.5 is out of range"),
        ({"strategy": "greedy", "n": 3}, r"strategy 'greedy' rejects its options"),
        ({"strategy": "sampling", "top_p": 0}, r"top_p=0.0 is out of range"),
    ],
)
def test_bad_options_fail_before_loading(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodeSearchLM(pretrained="/nonexistent/never-loaded", **kwargs)


def test_cli_main_registers_and_delegates(tiny_dir, task_dir, tmp_path, monkeypatch):
    """`python -m decodesearch.integrations.lm_eval ...` = lm-eval's CLI with the model registered.
    (lm-eval's CLI indexes all its ~15k built-in tasks, ~20 s here; the test keeps only ours.)"""
    import lm_eval.tasks

    class LocalOnly(TaskManager):
        def __init__(self, *a, **kw):
            super().__init__(*a, **{**kw, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", LocalOnly)
    monkeypatch.setattr("sys.argv", ["ignored"])
    out_dir = tmp_path / "out"
    main(["--model", "decodesearch", "--model_args", f"pretrained={tiny_dir},strategy=sampling,n=2,seed=1",
          "--tasks", TASK, "--include_path", task_dir, "--device", "cpu", "--output_path", str(out_dir)])
    [result_file] = list(out_dir.rglob("results_*.json"))
    saved = json.loads(result_file.read_text())
    assert saved["config"]["model"] == "decodesearch"
    assert saved["config"]["decodesearch_strategy"] == "sampling"
    assert "exact_match,none" in saved["results"][TASK]
    assert ds_lm_eval.__doc__ and "python -m decodesearch.integrations.lm_eval" in ds_lm_eval.__doc__


def test_plain_lm_eval_command_finds_the_model(tiny_dir, task_dir, tmp_path):
    """lm-eval's own console script as the README shows it (no --device, so lm-eval's default cuda:0,
    and IDS without b0 under the task's small max_gen_toks), in a fresh interpreter: the installed
    `decodesearch-lm-eval.pth` hook registers the name, with no decodesearch import by the caller;
    without CUDA the model falls back to the CPU with a warning."""
    import torch

    lm_eval_cmd = Path(sys.executable).with_name("lm_eval")
    out_dir = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(lm_eval_cmd), "--model", "decodesearch",
         "--model_args", f"pretrained={tiny_dir},strategy=ids,n=2,seed=0",
         "--tasks", TASK, "--include_path", task_dir, "--output_path", str(out_dir)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if not torch.cuda.is_available():
        assert "device 'cuda:0' requested but CUDA is not available; falling back to cpu" in proc.stderr
    [result_file] = list(out_dir.rglob("results_*.json"))
    saved = json.loads(result_file.read_text())
    assert saved["config"]["model"] == "decodesearch"
    assert saved["config"]["decodesearch_strategy"] == "ids"
    assert saved["n-samples"][TASK]["effective"] == len(QUESTIONS)


def _assert_fresh_python_prints_ok(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_plugin_hook_is_lazy_and_idempotent():
    """At interpreter start the hook imports neither torch nor lm-eval; importing lm_eval.models
    registers `decodesearch` as a placeholder that resolves to DecodeSearchLM."""
    code = (
        "import sys\n"
        "assert 'torch' not in sys.modules and 'lm_eval' not in sys.modules, sorted(sys.modules)\n"
        "from decodesearch.integrations import lm_eval_plugin as p\n"
        "p.install(); p.install()\n"
        "assert sum(isinstance(f, p._RegisterAfterImport) for f in sys.meta_path) == 1\n"
        "from lm_eval.api.registry import get_model, model_registry\n"
        "cls = get_model('decodesearch')\n"
        "assert cls.__name__ == 'DecodeSearchLM', cls\n"
        "assert 'hf' in model_registry\n"
        "p.install()\n"
        "print('ok')\n"
    )
    _assert_fresh_python_prints_ok(code)


def test_plugin_failure_warns_and_lm_eval_still_imports():
    """If registering fails (say an lm-eval with another registry API), lm-eval's import goes on."""
    code = (
        "import sys, warnings\n"
        "import lm_eval.api.registry as r\n"
        "assert 'lm_eval.models' not in sys.modules\n"
        "real = r.model_registry.register\n"
        "def register(name, *a, **kw):\n"
        "    if name == 'decodesearch':\n"
        "        raise RuntimeError('registry API changed')\n"
        "    return real(name, *a, **kw)\n"
        "r.model_registry.register = register\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import lm_eval.models\n"
        "assert 'hf' in r.model_registry and 'decodesearch' not in r.model_registry\n"
        "[w] = [w for w in caught if 'could not register' in str(w.message)]\n"
        "assert 'registry API changed' in str(w.message), w\n"
        "print('ok')\n"
    )
    _assert_fresh_python_prints_ok(code)


def test_real_smollm2_by_registry_name(smollm2):
    lm = DecodeSearchLM(pretrained="smollm2-135m-instruct", strategy="self_consistency", n=2, seed=0,
                        device="cpu", dtype="float32")
    context = lm.apply_chat_template([{"role": "user", "content": "What is 2 + 3? Answer with a number."}])
    [text] = lm.generate_until([_request(context, until=["\n\n"], max_gen_toks=4)])
    assert isinstance(text, str) and "\n\n" not in text
    assert len(lm.last_result.samples) == 2
    assert lm.last_result.tokens_forwarded > len(lm.tok_encode(context))
