"""The `segkit` command. Each command group lives in its own module with a `register(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import segkit
from segkit.cli.console import DEVICE_COMMANDS, note_device, quiet_tensorflow
from segkit.errors import SegkitError

# Modules under segkit.cli that add subcommands; each owns its own group.
COMMAND_MODULES = ("data", "run", "formats", "kaggle_cmds")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="segkit", description="Kaggle segmentation submission kit")
    parser.add_argument("-q", "--quiet", action="store_true", help="less progress output")
    parser.add_argument("--version", action="version", version=f"segkit {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"segkit.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"segkit.cli.{name}":
                continue  # group not written yet
            raise
        module.register(sub)
    return parser


def package_version() -> str:
    """The installed distribution's version; segkit.__version__ when running from a source tree or a bundle."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("segkit")
    except PackageNotFoundError:
        return segkit.__version__


def _drop_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush finds no closed pipe to complain about."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor behind stdout (embedded): nothing to do
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one subcommand; a SegkitError (or, as a last resort, any OSError) is printed as one
    line without a traceback and exits 1."""
    quiet_tensorflow()
    parser = build_parser()
    args = parse_args(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.command in DEVICE_COMMANDS:
            note_device(DEVICE_COMMANDS[args.command])
        result = args.func(args)
    except SegkitError as exc:
        print(f"segkit: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `segkit validate ... | head`: the reader has all it wanted
        _drop_stdout()
        return 141  # as a shell reports a command ended by SIGPIPE
    except OSError as exc:  # last resort: a file error nobody turned into a SegkitError is still one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"segkit: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("segkit: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(result or 0)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line, letting `key.sub=value` overrides stand anywhere after CONFIG (also after
    options such as `--restart-fold 1` or `--folds 0-2`, which argparse alone would reject)."""
    args, extra = parser.parse_known_args(argv)
    takes_overrides = hasattr(args, "overrides") or isinstance(getattr(args, "config", None), list)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not takes_overrides]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra and hasattr(args, "overrides"):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:  # `--config CFG key=value ...` (the kernel and submit commands)
        args.config = [*args.config, *extra]
    return args


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The CONFIG argument and `key.sub=value` overrides shared by run commands."""
    p.add_argument("config", help="config file, or the name of a built-in config (e.g. demo, cloud38)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
