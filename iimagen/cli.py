"""The `iimagen` command: demo, train, sample, eval.

Each sub-command lives beside the code it drives (`iimagen.train.cli_train`, `iimagen.pipeline.cli_sample`, ...);
this file only dispatches, so `iimagen --help` stays fast. Every error reaches the user as one line on stderr and exit
code 2 (`fail`); `--debug`, anywhere on the line, shows the traceback instead. Ctrl-C stops with one line, exit 130.
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
DEBUG = False  # set by `main` when --debug is given: errors keep their tracebacks


def usage() -> str:
    lines = ["usage: iimagen COMMAND [ARGS] [--debug]", "", "commands:"]
    lines += [f"  {name:<8} {doc}" for name, (_, _, doc) in COMMANDS.items()]
    lines += ["", "`iimagen COMMAND --help` for a command's options; --debug shows tracebacks."]
    return "\n".join(lines)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (a library's multi-line message folded)."""
    return " ".join(str(err).split()) or type(err).__name__


def fail(prog: str, err: BaseException) -> int:
    """Report `err` as one line `prog: message` on stderr and return exit code 2; under --debug, raise it."""
    if DEBUG:
        raise err
    print(f"{prog}: {one_line(err)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    global DEBUG
    argv = list(sys.argv[1:] if argv is None else argv)
    DEBUG = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"iimagen: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    prog = f"iimagen {name}"
    if not DEBUG:  # orbax's event-loop threads, after a failed restore that was already reported, print "Exception
        sys.unraisablehook = lambda unraisable: None  # ignored" tracebacks at exit: noise, not a second error
    try:
        handler = getattr(import_module(module), func)
    except (ImportError, AttributeError) as e:
        print(f"{prog}: not available in this version ({e})", file=sys.stderr)
        return 2
    try:
        return int(handler(rest) or 0)
    except KeyboardInterrupt as e:
        if DEBUG:
            raise
        print(f"{prog}: interrupted (Ctrl-C). {one_line(e) if str(e) else 'Nothing was left half-written.'}",
              file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # the kit's errors are ValueErrors; OSError: a disk full, a file vanished
        return fail(prog, e)
    except Exception as e:  # noqa: BLE001 - a bug: still one line, the traceback under --debug
        if DEBUG:
            raise
        print(f"{prog}: unexpected {type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback and "
              "report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
