"""Command line: argument parsing only; every command calls a library function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from hwnas.errors import HwnasError
from hwnas.limits import MAX_BATCH, MAX_CHANNELS, MAX_CLASSES, MAX_DEPTH, MAX_RUNS, MAX_SIDE, MAX_THREADS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"hwnas: error: {message} (see `{self.prog} --help`)\n")


BUSY_DEVICE_SHARE = 0.25  # quiet runs here flag 1-6% of keys, loaded ones 79-97% (benchmarks/noisy_profile.py)


def _count(most: int) -> Callable[[str], int]:
    """A whole number from 1 to `most` (a size past it is a typo, refused before any work)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if not 1 <= value <= most:
            raise argparse.ArgumentTypeError(f"must lie in 1..{most}, not {value}")
        return value

    return parse


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of milliseconds, not {text!r}")
    return value


def _search(args: argparse.Namespace) -> dict[str, Any]:
    from hwnas.config import build_config, read_yaml, resolve_path
    from hwnas.methods import SearchConfig
    from hwnas.runs import RunDir
    from hwnas.search import search

    if args.resume and args.out and not args.config and not args.set and not args.table and args.budget_ms is None:
        source, data = f"{args.out}/config.yaml", RunDir.saved_config(args.out)
    else:
        path = args.config or f"configs/search/{args.method}_digits.yaml"
        source, data = str(resolve_path(path)), read_yaml(path)
        data.setdefault("method", {"name": args.method})  # a recipe may leave the method to the command
    overrides = list(args.set)
    if args.table:
        overrides.append(f"method.table={args.table}")
    if args.budget_ms is not None:
        overrides.append(f"method.budget_ms={args.budget_ms}")
    config = build_config(SearchConfig, data, source, overrides)
    if config.method.name != args.method:
        raise HwnasError(f"{source} is a `{config.method.name}` config, not `{args.method}`")
    return search(config, args.out or _default_out(f"search-{args.method}"), resume=args.resume, quiet=args.quiet)


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from hwnas.config import TrainConfig, build_config, read_yaml, resolve_path
    from hwnas.kinds import arch_from_dict, kind_of, load_arch
    from hwnas.runs import RunDir
    from hwnas.train import train

    if args.resume and args.out and not args.config and not args.set:
        saved = RunDir.saved_config(args.out)
        arch = arch_from_dict(saved.pop("arch"))
        if args.arch and load_arch(args.arch) != arch:
            raise HwnasError(f"--resume: {args.out} trains another architecture than {args.arch}")
        config = build_config(TrainConfig, saved, f"{args.out}/config.yaml")
    else:
        if not args.arch:
            raise HwnasError("train: give --arch NAME|arch.json (a zoo name such as DARTS_V2, or a search's arch.json)")
        arch = load_arch(args.arch)
        path = args.config or kind_of(arch).train_recipe
        config = build_config(TrainConfig, read_yaml(path), str(resolve_path(path)), args.set)
    return train(config, arch, args.out or _default_out("train"), resume=args.resume, quiet=args.quiet)


def _show_train(result: dict[str, Any]) -> None:
    print(f"{result['network']} on {result['dataset']}: {result['params']:,} parameters, "
          f"{result['macs'] / 1e6:.1f} M multiply-adds, {result['epochs']} epochs")
    print(f"test accuracy {result['test_acc']:.2%} (last epoch), {result['best']['test_acc']:.2%} "
          f"(best epoch {result['best']['epoch']} by {result['eval_split']} accuracy)")
    print(f"weights: {result['weights']['last']}\nrun directory: {result['run_dir']}")


def _export(args: argparse.Namespace) -> dict[str, Any]:
    from hwnas.export import export

    for flag, value in (("--max-accuracy-drop", args.max_accuracy_drop), ("--qat-epochs", args.qat_epochs)):
        if value is not None and not args.quantize:
            raise HwnasError(f"{flag} applies to an int8 export: add --quantize int8")
    drop = 1.0 if args.max_accuracy_drop is None else args.max_accuracy_drop

    return export(args.arch, args.out, weights=args.weights, dataset=args.dataset, table=args.table,
                  quantize=args.quantize, dynamic_batch=args.dynamic_batch, batch=args.batch,
                  threads=args.threads, runs=args.runs, data_root=args.data_root,
                  formats=[*(args.format or ()), *(["ort"] if args.ort else [])],
                  max_accuracy_drop=drop / 100, qat_epochs=2 if args.qat_epochs is None else args.qat_epochs)


def _host_note(latency: dict[str, Any]) -> str:
    return "" if latency.get("table_same_host", True) else "; the table comes from another host"


def _other_host(result: dict[str, Any]) -> str:
    return "profiled on another host (" + "; ".join(result["differs"]) + ")"


def _show_export(r: dict[str, Any]) -> None:
    parity = r["parity"]
    real = (f", real images {parity['real']['max_abs_diff']:.2e} (tolerance {parity['real']['tolerance']:.1e})"
            if isinstance(parity["real"], dict) else f"; real images {parity['real']}")
    print(f"wrote {r['onnx']} ({r['params']:,} parameters, {r['macs'] / 1e6:.1f} M multiply-adds, "
          f"{'trained' if r['trained'] else 'untrained'})")
    print(f"  onnx.checker passed; max |ORT - PyTorch|: random {parity['random']['max_abs_diff']:.2e}{real}")
    lat = r["latency"]
    line = f"  latency (ORT, {lat['threads']} thread, batch {lat['batch']}): {lat['measured_ms']:.3f} ms measured"
    if "predicted_ms" in lat:
        line += f", {lat['predicted_ms']:.3f} ms predicted by the table ({lat['error_pct']:+.1f}%){_host_note(lat)}"
    print(line)
    for other in r.get("runtimes", {}).values():
        checks = ", ".join(f"{name} {c['max_abs_diff']:.2e}" for name, c in other["parity"].items())
        lat = other["latency"]
        line = (f"  {other['path']} ({other['runtime']} {other['runtime_version']}): max |diff| from PyTorch {checks}; "
                f"{lat['measured_ms']:.3f} ms measured ({lat['threads']} thread)")
        if "predicted_ms" in lat:
            line += f", {lat['predicted_ms']:.3f} ms predicted ({lat['error_pct']:+.1f}%){_host_note(lat)}"
        print(line)
        if "int8" in other:
            q = other["int8"]
            print(f"    int8: {q['path']} ({q['remedy']}): accuracy {q['fp32_acc']:.2%} -> {q['int8_acc']:.2%} on "
                  f"{q['test_images']} test images, {q['measured_ms']:.3f} ms ({q['speedup']:.2f}x)"
                  + ("" if q["within_drop"] else f"; more than {100 * q['max_accuracy_drop']:g} points lost"))
    if "int8" in r:
        q = r["int8"]
        print(f"  int8: {q['path']}: accuracy {q['fp32_acc']:.2%} -> {q['int8_acc']:.2%} on {q['test_images']} test "
              f"images, {q['measured_ms']:.3f} ms ({q['speedup']:.2f}x)")
        for t in q["tried"]:
            print(f"    {t['remedy']:<16} held-out drop {100 * t['selection_drop']:+.2f} points"
                  + (f", {len(t['float_layers'])} layer(s) in float" if t["float_layers"] else "")
                  + (f", {t['epochs']} epoch(s) on {t['training_images']} images" if "epochs" in t else ""))
        print(f"    kept: {q['remedy']}" + ("" if q["met_on_selection"] else
                                             f" (none within {100 * q['max_accuracy_drop']:g} points)"))


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from hwnas.config import RunConfig, build_config
    from hwnas.pipeline import load_run_config, run
    from hwnas.runs import RunDir

    if args.resume and args.out and not args.config and not args.set and not args.runtime:
        config = build_config(RunConfig, RunDir.saved_config(args.out), f"{args.out}/config.yaml")
    else:
        config = load_run_config(args.config, args.set + ([f"runtime={args.runtime}"] if args.runtime else []))
    return run(config, args.out or _default_out("run"), resume=args.resume, quiet=args.quiet)


def _show_run(result: dict[str, Any]) -> None:
    from hwnas.pipeline import summary

    print(summary(result))


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


def _profile(args: argparse.Namespace) -> dict[str, Any]:
    from hwnas.latency import kit
    from hwnas.spaces.definition import load_space

    if args.profile_command == "ingest":
        table = kit.ingest(args.results, args.out, args.name, allow_busy=args.allow_busy)
        return {"table": table.source, "keys": len(table), "unstable_keys": table.meta.get("unstable_keys", [])}
    if not args.space or not args.out:
        raise HwnasError("profile: give --space SPACE and --out (see `hwnas profile --help`)")
    space = load_space(args.space)
    if args.profile_command == "kit":
        manifest = kit.build_kit(space, args.out, args.batch, args.runtime, dtype=args.precision)
        return {"kit": args.out, "keys": len(manifest["entries"]), "space": space.name, "runtime": manifest["runtime"]}
    for name in ("threads", "runs", "batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise HwnasError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise HwnasError(f"--warmup must not be negative, got {args.warmup}")
    return kit.profile(space, args.out, args.runtime, args.name, args.threads, args.batch, args.warmup, args.runs,
                       args.device, quiet=args.quiet, allow_busy=args.allow_busy, dtype=args.precision)


def _show_profile(result: dict[str, Any]) -> None:
    if "kit" in result:
        from profilers.runner import RUNNER_OF

        print(f"wrote a {result['runtime']} kit of {result['keys']} models for {result['space']} to {result['kit']}; run "
              f"it on the device with `python profilers/{RUNNER_OF[result['runtime']]} {result['kit']} --out results.csv`")
        return
    unstable = result["unstable_keys"]
    print(f"wrote {result['table']} ({result['keys']} keys"
          + (f", {result['seconds']:.0f} s" if "seconds" in result else "") + ")"
          + (f"; {len(unstable)} key(s) stayed unstable after re-measuring: {', '.join(unstable[:3])}"
             f"{' ...' if len(unstable) > 3 else ''} (all listed in the table's .json)" if unstable else ""))
    if len(unstable) > BUSY_DEVICE_SHARE * result["keys"]:
        print(f"warning: {len(unstable) / result['keys']:.0%} of the keys were unstable: the device was busy; "
              "profile again on a quiet machine (docs/latency-tables.md: reliable numbers)")


def _space(args: argparse.Namespace) -> dict[str, Any]:
    from hwnas.spaces.definition import derive_command

    return derive_command(args.base, args.out, args.name, input_size=args.input_size, width=args.width,
                          max_stack_layers=args.max_stack_layers, max_connections=args.max_connections,
                          num_classes=args.num_classes, min_size=args.min_size)


def _configs(args: argparse.Namespace) -> dict[str, Any]:
    from hwnas import shipped_files

    if args.configs_command == "list":
        return shipped_files.list_command()
    return shipped_files.copy_command(args.name, args.out_dir)


def _show_configs(result: dict[str, Any]) -> None:
    print("\n".join(result.get("files", [])) if "files" in result else "copied " + ", ".join(result["copied"]))


def _baseline(args: argparse.Namespace) -> dict[str, Any]:
    from hwnas.baselines import baseline_command

    return baseline_command(args.family, args.space, args.out, args.table, args.target_ms, args.count, args.seed,
                            args.tolerance, args.under)


def _show_baseline(result: dict[str, Any]) -> None:
    for row in result["architectures"]:
        latency = f"  {row['predicted_ms']:.4f} ms" if row["predicted_ms"] is not None else ""
        print(f"{row['file']}{latency}  {row['arch']}")


def _lut(args: argparse.Namespace) -> dict[str, Any]:
    from hwnas.latency import validate

    if args.lut_command == "validate":
        return validate.validate(args.table, args.space, args.samples, args.seed, args.plot, quiet=args.quiet)
    if args.lut_command == "check":
        from hwnas.latency.check import check_command

        return check_command(args.table, args.space, quiet=args.quiet)
    return validate.predict_command(args.table, args.arch, args.space)


def _show_lut(result: dict[str, Any]) -> None:
    if result.get("command") == "lut check":
        print(f"{result['table']}: " + ("profiled on a host like this one" if result["same_host"] else
                                        _other_host(result)))
        print(f"  calibration networks measure {result['ratio']:.3f}x the prediction here "
              f"(spread {result['spread']:.1%}, load average {result['load_average_1min']}): {result['decision']}")
        return
    if "predicted_ms" in result:
        print(f"{result['arch']} on {result['table']}: {result['predicted_ms']:.3f} ms predicted "
              f"({result['estimator']}, call overhead {result['call_overhead_ms']:.3f} ms)")
        for part, ms in result["breakdown_ms"].items():
            print(f"  {part:<28} {ms:8.3f} ms")
        return
    print(f"{result['samples']} random {result['space']} networks, {result['runtime']} {result['threads']} thread(s):")
    if not result["same_host"]:
        print(f"  note: {result['table']} was {_other_host(result)}; these errors measure the two hosts' "
              "difference as well as the table")
    print(f"  within +-5%   {result['within_5pct']:.0%}\n  within +-10%  {result['within_10pct']:.0%}")
    print(f"  MAPE          {result['mape_pct']:.2f}% (mean error {result['mean_error_pct']:+.2f}%)")
    print(f"  Kendall tau   {result['kendall_tau']:.3f}\n  Spearman rho  {result['spearman_rho']:.3f}")
    if "plot" in result:
        print(f"  plot          {result['plot']}")


def _run_options(p: argparse.ArgumentParser, name: str, example: str) -> None:
    """The options every command that makes a run directory shares."""
    p.add_argument("--out", help=f"run directory (default runs/{name}-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. --set {example}")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from hwnas.methods import method_names
    from hwnas.runtimes import DEFAULT_RUNTIME, PRECISIONS, export_formats, file_runtime_names, runtime_names

    parser = _Parser(prog="hwnas", description="Hardware-aware neural architecture search.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="the whole job: table, search under a budget, train, export, verify")
    p.add_argument("config", nargs="?", help="run config YAML (default configs/run/quickstart.yaml)")
    _run_options(p, "run", "budget_ms=6")
    p.add_argument("--runtime", choices=file_runtime_names(),
                   help="the runtime you deploy with (default the config's, ort): its table, its file, its latency")
    p.set_defaults(func=_run, show=_show_run)

    p = sub.add_parser("search", help="search an architecture")
    p.add_argument("method", choices=method_names())
    p.add_argument("--config", help="search recipe YAML (default configs/search/METHOD_digits.yaml)")
    _run_options(p, "search-METHOD", "search.epochs=3")
    p.add_argument("--table", help="latency table CSV (a routing space for DenseNAS, a cell space such as "
                                   "darts_cifar10 for the cell methods): sets method.table")
    p.add_argument("--budget-ms", type=_milliseconds,
                   help="latency budget in ms: the derived network meets it by the table")
    p.set_defaults(func=_search, show=lambda r: print(f"architecture:\n{r['arch_text']}\nrun directory: {r['run_dir']}"))

    p = sub.add_parser("train", help="train the final network of an architecture")
    p.add_argument("--arch", help="zoo name (DARTS_V2, GDAS_F1, DenseNAS-C, ...) or a search's arch.json")
    p.add_argument("--config", help="training recipe YAML (default configs/train/digits.yaml for cells, "
                                    "configs/train/densenas_digits.yaml for routed architectures)")
    _run_options(p, "train", "train.epochs=3")
    p.set_defaults(func=_train, show=_show_train)

    p = sub.add_parser("export", help="export a network to ONNX, verify it against PyTorch, measure its latency")
    p.add_argument("--arch", help="zoo name or arch.json (optional with --weights: the weights name it)")
    p.add_argument("--weights", help="weights file written by `hwnas train` (weights/last.pt or best.pt)")
    p.add_argument("--dataset", choices=["digits", "fashion-mnist", "cifar10", "imagenet"],
                   help="input size and classes of an untrained network (taken from --weights otherwise)")
    p.add_argument("--out", required=True, help="ONNX file to write (.ort and .int8.onnx go beside it)")
    p.add_argument("--table", help="latency table: print its prediction beside the measured latency")
    p.add_argument("--ort", action="store_true", help="also write ONNX Runtime's mobile format (.ort): --format ort")
    p.add_argument("--format", nargs="+", choices=list(export_formats()),
                   help="files to write beside the .onnx (always written): ort (ONNX Runtime mobile), pte "
                        "(ExecuTorch XNNPACK), tflite (LiteRT); each checked against PyTorch and timed in its runtime")
    p.add_argument("--quantize", choices=["int8"], help="also write a statically quantized model (ONNX Runtime QDQ)")
    p.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                   help="int8: the accuracy it may lose, in points; the cheapest remedy within it is kept (default 1)")
    p.add_argument("--qat-epochs", type=int, metavar="N",
                   help="int8: epochs of quantization-aware fine-tuning, the remedy tried when post-training "
                        "quantization loses more (default 2; 0: not tried)")
    p.add_argument("--dynamic-batch", action="store_true", help="a dynamic batch axis (default: fixed --batch)")
    p.add_argument("--batch", type=_count(MAX_BATCH), default=1)
    p.add_argument("--threads", type=_count(MAX_THREADS), default=1, help="ORT threads for timing (a --table's own otherwise)")
    p.add_argument("--runs", type=_count(MAX_RUNS), default=300, help="timed runs (at least; more when a --table used more)")
    p.add_argument("--data-root", help="dataset folder for the real-image checks (default: the dataset's own)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_export, show=_show_export)

    p = sub.add_parser("info", help="size of a final network or a search supernet")
    p.add_argument("--arch", help="zoo name (DARTS_V2, DenseNAS-C, ...) or arch.json (cell or routed)")
    p.add_argument("--supernet", choices=method_names(), help="a method's search network")
    p.add_argument("--dataset", choices=["cifar10", "imagenet"], default="cifar10",
                   help="cell networks only; a routed network takes its space's input size and classes")
    p.add_argument("--init-channels", type=_count(MAX_CHANNELS))
    p.add_argument("--layers", type=_count(MAX_DEPTH))
    p.add_argument("--num-classes", type=_count(MAX_CLASSES))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_info, show=_print_info)

    p = sub.add_parser("profile", help="measure a latency table on this machine, or make/ingest a device kit",
                       description="hwnas profile --space SPACE --runtime ort --name DEVICE --out TABLE.csv "
                                   "profiles here in one step; `profile kit` and `profile ingest` do it in two, "
                                   "with the runtime's runner (profilers/*_runner.py) run on the device in between.")
    p.add_argument("--space", help="space name under configs/spaces/ (densenas_224, densenas_32, darts_cifar10) or YAML")
    p.add_argument("--out", help="latency table CSV to write (its .json goes beside it)")
    p.add_argument("--runtime", "--backend", dest="runtime", choices=runtime_names(), default=DEFAULT_RUNTIME,
                   help="what the table is measured with (executorch and litert need their extras)")
    p.add_argument("--name", help="device name recorded in the table")
    p.add_argument("--threads", type=_count(MAX_THREADS), default=1)
    p.add_argument("--batch", type=_count(MAX_BATCH), default=1)
    p.add_argument("--warmup", type=_count(MAX_RUNS), default=10, help="untimed runs per key")
    p.add_argument("--runs", type=_count(MAX_RUNS),
                   help="timed runs per key, one per interleaved round (default 100; 300 for int8, whose ops take "
                        "microseconds)")
    p.add_argument("--device", default="cpu", help="torch runtime only: cpu or cuda[:N]")
    p.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0],
                   help="int8: every op and calibration network quantized with the runtime's int8 scheme (ort: as "
                        "`hwnas export --quantize int8` does; executorch: XNNPACKQuantizer)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--allow-busy", action="store_true",
                   help="keep a table profiled while the load average was above 0.5 (refused by default)")
    psub = p.add_subparsers(dest="profile_command", parser_class=_Parser)
    k = psub.add_parser("kit", help="write one model per latency key in a runtime's format, to run on a device")
    k.add_argument("--space", required=True)
    k.add_argument("--runtime", choices=file_runtime_names(), default=DEFAULT_RUNTIME)
    k.add_argument("--out", required=True, help="kit folder (must not exist or be empty)")
    k.add_argument("--batch", type=_count(MAX_BATCH), default=1)
    k.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0])
    k.add_argument("--json", action="store_true")
    i = psub.add_parser("ingest", help="turn a runner's results.csv into a latency table")
    i.add_argument("results", help="results CSV written by a runner in profilers/ (ort_runner.py, executorch_runner.py, ...)")
    i.add_argument("--out", required=True, help="latency table CSV to write")
    i.add_argument("--name", help="device name recorded in the table")
    i.add_argument("--allow-busy", action="store_true", help="keep a table the device profiled while busy")
    i.add_argument("--json", action="store_true")
    p.set_defaults(func=_profile, show=_show_profile)

    p = sub.add_parser("space", help="derive a routing space from another (width, input size, depth)")
    ssub = p.add_subparsers(dest="space_command", required=True, parser_class=_Parser)
    d = ssub.add_parser("derive", help="write a space scaled from another, e.g. for your image size")
    d.add_argument("--from", dest="base", required=True, help="base space: name under configs/spaces/ or YAML")
    d.add_argument("--out", required=True, help="space YAML to write")
    d.add_argument("--name", help="the new space's name (default: the file's stem)")
    d.add_argument("--input-size", type=_count(MAX_SIDE), help="input side in pixels; the earliest downsamplings are dropped "
                                                  "so the last feature map keeps at least --min-size pixels")
    d.add_argument("--width", type=float, help="width multiplier (widths rounded to multiples of 8)")
    d.add_argument("--max-stack-layers", type=_count(MAX_DEPTH), help="at most this many stack layers per block")
    d.add_argument("--max-connections", type=_count(MAX_DEPTH), help="block i may feed at most blocks i+1 .. i+N")
    d.add_argument("--num-classes", type=_count(MAX_CLASSES))
    d.add_argument("--min-size", type=_count(MAX_SIDE))
    d.add_argument("--json", action="store_true")
    p.set_defaults(func=_space, show=lambda r: print(
        f"wrote {r['out']}: {r['space']}, derived from {r['base']}, {r['blocks']} blocks, widths {r['widths']}, "
        f"sizes {r['sizes']}, {r['connections']} connections"))

    p = sub.add_parser("configs", help="list the shipped recipes, spaces and tables, or copy one out to edit")
    csub = p.add_subparsers(dest="configs_command", required=True, parser_class=_Parser)
    csub.add_parser("list", help="every shipped recipe, space and latency table")
    c = csub.add_parser("copy", help="copy one shipped file (and a table's .json) into a folder")
    c.add_argument("name", help="a name as `hwnas configs list` prints it, e.g. configs/run/quickstart.yaml")
    c.add_argument("out_dir", help="folder to copy into (created if missing; existing files are kept)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_configs, show=_show_configs)

    p = sub.add_parser("baseline", help="architectures a search should beat: random ones at a latency, or the "
                                        "hand-designed (MobileNetV2-like) one")
    p.add_argument("family", choices=["random", "hand"])
    p.add_argument("--space", required=True, help="space name under configs/spaces/ or YAML")
    p.add_argument("--table", help="latency table of the space (needed for --target-ms)")
    p.add_argument("--target-ms", type=_milliseconds, help="predicted latency the architectures lie at")
    p.add_argument("--tolerance", type=float, default=0.03, help="relative window around --target-ms")
    p.add_argument("--under", action="store_true", help="window [target * (1 - tolerance), target], where a budget "
                                                        "search derives its network (its budget_slack)")
    p.add_argument("--count", type=_count(MAX_RUNS), default=5, help="random architectures to draw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="random: a new folder for one JSON per architecture; hand: a JSON")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_baseline, show=_show_baseline)

    p = sub.add_parser("lut", help="check a latency table against whole networks, or predict one architecture")
    lsub = p.add_subparsers(dest="lut_command", required=True, parser_class=_Parser)
    v = lsub.add_parser("validate", help="predicted vs measured latency of random networks of a space")
    v.add_argument("--table", required=True)
    v.add_argument("--space", required=True)
    v.add_argument("--samples", type=_count(MAX_RUNS), default=50)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--plot", help="write the predicted-vs-measured scatter plot here (PNG)")
    v.add_argument("--json", action="store_true")
    v.add_argument("--quiet", action="store_true")
    c = lsub.add_parser("check", help="time the table's calibration networks here: does it describe this machine now?")
    c.add_argument("--table", required=True)
    c.add_argument("--space", help="the table's space (default: the one it names)")
    c.add_argument("--json", action="store_true")
    c.add_argument("--quiet", action="store_true")
    q = lsub.add_parser("predict", help="predicted latency of one architecture, block by block")
    q.add_argument("--table", required=True)
    q.add_argument("--arch", required=True, help="arch.json (routed or cell) or a zoo name (DenseNAS-C, DARTS_V2)")
    q.add_argument("--space", help="the architecture's space (default: the one it or the table names)")
    q.add_argument("--json", action="store_true")
    p.set_defaults(func=_lut, show=_show_lut)
    return parser


def unexpected_error(exc: Exception) -> tuple[str, int]:
    """The one line (and exit code) for an exception hwnas did not turn into an error of its own: the
    usual faults of a user's files and sizes exit 2; anything else is a bug in hwnas (exit 1)."""
    import yaml

    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}", 2
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8", 2
    if isinstance(exc, yaml.YAMLError):
        return f"not valid YAML: {exc}", 2
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "allocate" in str(exc)):
        return ("not enough memory for this network and batch; lower the batch size, the widths or the "
                "number of classes"), 2
    first = str(exc).splitlines()[0] if str(exc) else ""
    return (f"unexpected {type(exc).__name__}: {first} (a bug in hwnas: please report it with the command you "
            "ran; `hwnas --debug ...` shows the traceback)"), 1


class WarningsHeldBack(logging.StreamHandler):
    """Warnings (hwnas's, and Python's from torch and others) wait until the command's first progress
    line, or its end: a command refused at set-up prints its one error line alone, and a warning about
    the input it refused does not come before it. Under --quiet or --json they come at the end."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.held: list[logging.LogRecord] | None = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is not None and record.levelno >= logging.WARNING:
            self.held.append(record)
            return
        self.show_held()
        super().emit(record)

    def show_held(self) -> None:
        held, self.held = self.held or [], None
        for record in held:
            super().emit(record)

    def drop(self) -> None:
        self.held = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or an argument refused with its one line (2)
        return int(exc.code or 0)
    # hwnas's own messages at INFO; libraries (ONNX Runtime's tools, ...) only when they warn
    warnings_handler = WarningsHeldBack()
    logging.basicConfig(level=logging.WARNING, handlers=[warnings_handler])
    logging.captureWarnings(True)
    # under torchrun only rank 0 speaks; the others report errors and warnings only
    first_rank = os.environ.get("RANK", "0") == "0"
    quiet = getattr(args, "json", False) or getattr(args, "quiet", False) or not first_rank
    logging.getLogger("hwnas").setLevel(logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO)
    try:
        try:
            result = args.func(args)
        except BaseException:  # the error line alone, unless the whole story was asked for
            warnings_handler.show_held() if args.verbose or args.debug else warnings_handler.drop()
            raise
        warnings_handler.show_held()
    except HwnasError as exc:
        print(f"hwnas: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwnas: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, never a traceback unless asked for
        if args.debug:
            raise
        message, code = unexpected_error(exc)
        print(f"hwnas: error: {' '.join(message.splitlines())}", file=sys.stderr)
        return code
    if not first_rank:
        return 0
    if args.json:
        print(json.dumps(result))
    else:
        args.show(result)
    return 0
