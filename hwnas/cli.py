"""Command line: argument parsing only; every command calls a library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from hwnas.errors import HwnasError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"hwnas: error: {message} (see `{self.prog} --help`)\n")


def _search(args: argparse.Namespace) -> dict[str, Any]:
    from hwnas.config import SearchConfig, build_config, read_yaml, resolve_path
    from hwnas.runs import RunDir
    from hwnas.search import search

    if args.resume and args.out and not args.config and not args.set:
        source, data = f"{args.out}/config.yaml", RunDir.saved_config(args.out)
    else:
        path = args.config or f"configs/search/{args.method}_digits.yaml"
        source, data = str(resolve_path(path)), read_yaml(path)
        data.setdefault("method", {"name": args.method})  # a recipe may leave the method to the command
    config = build_config(SearchConfig, data, source, args.set)
    if config.method.name != args.method:
        raise HwnasError(f"{source} is a `{config.method.name}` config, not `{args.method}`")
    return search(config, args.out or _default_out(f"search-{args.method}"), resume=args.resume, quiet=args.quiet)


def _default_out(prefix: str) -> str:
    import time

    return str(Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")


def _info(args: argparse.Namespace) -> dict[str, Any]:
    from hwnas.info import arch_info, supernet_info

    if bool(args.arch) == bool(args.supernet):
        raise HwnasError("info: give exactly one of --arch NAME|FILE or --supernet METHOD")
    if args.supernet:
        return supernet_info(args.supernet, init_channels=args.init_channels, layers=args.layers,
                             num_classes=args.num_classes)
    return arch_info(args.arch, args.dataset, init_channels=args.init_channels, layers=args.layers,
                     num_classes=args.num_classes)


def _print_info(result: dict[str, Any]) -> None:
    print(f"{result['name']} ({result['network']})")
    print(f"  parameters     {result['params']:,}  ({result['params'] / 1e6:.2f} M, auxiliary head excluded)")
    print(f"  multiply-adds  {result['macs']:,}  ({result['macs'] / 1e6:.1f} M, conv + linear, input {result['input']})")
    if "arch_text" in result:
        print(result["arch_text"])


def build_parser() -> argparse.ArgumentParser:
    from hwnas.methods import method_names

    parser = _Parser(prog="hwnas", description="Hardware-aware neural architecture search.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("search", help="search an architecture")
    p.add_argument("method", choices=method_names())
    p.add_argument("--config", help="search recipe YAML (default configs/search/METHOD_digits.yaml)")
    p.add_argument("--out", help="run directory (default runs/search-METHOD-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set search.epochs=3")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_search, show=lambda r: print(f"architecture:\n{r['arch_text']}\nrun directory: {r['run_dir']}"))

    p = sub.add_parser("info", help="size of a final network or a search supernet")
    p.add_argument("--arch", help="zoo name (e.g. DARTS_V2) or arch.json")
    p.add_argument("--supernet", choices=method_names(), help="a method's search network")
    p.add_argument("--dataset", choices=["cifar10", "imagenet"], default="cifar10")
    p.add_argument("--init-channels", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_info, show=_print_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    if getattr(args, "json", False) or getattr(args, "quiet", False):
        logging.getLogger("hwnas").setLevel(logging.WARNING)
    try:
        result = args.func(args)
    except HwnasError as exc:
        print(f"hwnas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwnas: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result))
    else:
        args.show(result)
    return 0
