"""The `iimagen` command: demo, train, sample, eval, bench.

Each sub-command lives beside the code it drives (`iimagen.train.cli_train`, `iimagen.pipeline.cli_sample`, ...);
this file only dispatches, so `iimagen --help` stays fast.
"""
from __future__ import annotations

import sys
from importlib import import_module

COMMANDS = {
    "demo": ("iimagen.demo", "main", "generate the curated example instructions with the shipped checkpoint"),
    "train": ("iimagen.train", "cli_train", "train stage 0, 1 or 2 (and the baselines)"),
    "sample": ("iimagen.pipeline", "cli_sample", "generate images for saved instructions"),
    "eval": ("iimagen.evaluate", "cli_eval", "score a checkpoint on the world's in-domain and zero-shot tasks"),
}


def usage() -> str:
    lines = ["usage: iimagen COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<8} {doc}" for name, (_, _, doc) in COMMANDS.items()]
    lines += ["", "`iimagen COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"iimagen: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    try:
        handler = getattr(import_module(module), func)
    except (ImportError, AttributeError) as e:
        print(f"iimagen {name}: not available in this version ({e})", file=sys.stderr)
        return 2
    return int(handler(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
