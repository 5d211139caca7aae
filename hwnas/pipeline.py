"""`hwnas run`: the whole job in one command.

Latency table (the shipped one when it was profiled on a host like this and its calibration networks
agree with it here, rescaled when they are off by one factor, else the space profiled here first) ->
DenseNAS search under the budget -> final training -> ONNX and .ort export, verified against PyTorch,
latency measured beside the budget and the table's prediction.
Each stage has its own run folder inside the run directory, so `--resume` continues a killed run at
the stage it was in (finished stages are kept).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hwnas.config import RunConfig, TrainConfig, build_config, config_to_dict, read_yaml, resolve_path
from hwnas.methods import SearchConfig, run_method_names
from hwnas.errors import ConfigError, HwnasError
from hwnas.files import read_json
from hwnas.runs import RunDir, write_json
from hwnas.runtimes import DEFAULT_RUNTIME

log = logging.getLogger("hwnas.run")

BUDGET_OVER, BUDGET_UNDER = 0.05, 0.10  # a budget is met by a measured latency within -10% / +5% of it


def shipped_table_for(space_name: str, runtime, dtype: str = "float32") -> Any | None:
    """A shipped table of the space measured with `runtime` at `dtype`, preferring one from a host like this one."""
    from hwnas.config import shipped_root
    from hwnas.latency.check import same_host
    from hwnas.latency.table import load_table, table_runtime

    found = []
    for path in sorted((shipped_root() / "latency_tables").glob(f"*/{space_name}.csv")):
        table = load_table(path)
        if table.space == space_name and table_runtime(table) is runtime and table.dtype == dtype:
            found.append(table)
    found.sort(key=lambda table: not same_host(table)[0])
    return found[0] if found else None


def choose_table(shipped: str, space, run_dir: Path, quiet: bool, runtime_name: str = DEFAULT_RUNTIME,
                 dtype: str = "float32") -> dict[str, Any]:
    """The table this run uses, and why (hwnas/latency/check.py): the shipped one (or, when it was measured
    with another runtime or at another precision, one shipped for the run's) when it was profiled on a
    host like this one and its calibration networks, timed here, agree with it within 5%; rescaled when
    they are off by one common factor; else the space profiled here in the run's runtime at `dtype`.
    Decided once per run."""
    from hwnas.latency import kit
    from hwnas.latency.check import check_table, same_host
    from hwnas.latency.table import load_table, save_table, table_runtime
    from hwnas.runtimes import get_runtime

    decided = run_dir / "table.json"
    if decided.is_file():
        return read_json(decided, HwnasError, "run's table decision")
    runtime = get_runtime(runtime_name)
    runtime.version()
    table = load_table(shipped)
    settings = {"threads": int(table.meta.get("threads", 1)), "batch": table.batch,
                "warmup": int(table.meta.get("warmup", 10)), "runs": int(table.meta.get("runs", 100))}
    here_table = run_dir / "latency_table.csv"
    choice: dict[str, Any] = {"shipped": table.source, "runtime": runtime.name, "dtype": dtype}
    if table_runtime(table) is not runtime or table.dtype != dtype:
        table = shipped_table_for(space.name, runtime, dtype)
        choice["shipped_for_runtime"] = table.source if table else None
    if table is None:
        at = "" if dtype == "float32" else f" at {dtype}"
        same, differs = False, [f"runtime: no shipped {space.name} table measured with {runtime.name}{at}"]
    else:
        same, differs = same_host(table)
        if table.space != space.name:
            differs.append(f"space: table {table.space}, search {space.name}")
            same = False
    if same:
        check = check_table(table, space, quiet)
        choice["check"] = check
        log.info("the shipped table's calibration networks measure %.3fx its prediction here (spread %.1f%%): %s",
                 check["ratio"], 100 * check["spread"], check["decision"])
        if check["decision"] == "holds":
            choice.update(table=table.source, decision="shipped table holds")
        elif check["decision"] == "rescale":
            save_table(table.rescaled(check["ratio"], {"reason": "calibration networks timed here"}), here_table)
            choice.update(table=str(here_table), decision=f"shipped table rescaled by {check['ratio']:.3f}")
    else:
        choice["differs"] = differs
        log.info("no shipped table fits this host and runtime (%s)", "; ".join(differs))
    if "table" not in choice:
        log.info("profiling %s here with %s first", space.name, runtime.name)
        here_table.unlink(missing_ok=True)  # a rescaled copy, or a profile killed before it was decided
        here_table.with_suffix(".json").unlink(missing_ok=True)
        kit.profile(space, here_table, runtime, name="this-machine", **settings, quiet=quiet, allow_busy=True,
                    dtype=dtype)
        choice.update(table=str(here_table), decision="profiled here" + (
            " (the shipped table is off by different factors for different networks)" if same else
            " (the shipped table comes from another host)" if table is not None else f" ({differs[0]})"))
    write_json(decided, choice)
    return choice


FIT_ROUNDS = 3
FIT_AGREEMENT = 0.02
# the fit derives again unless the network measures within -7% / +2% of the budget: 3 points inside the
# -10% / +5% a budget is met by, as a 0.3 ms network measures 5-10% differently a minute later
FIT_WINDOW = (0.07, 0.02)
# the exported file and the same network in the fit timed this much apart: one of them caught a slow
# stretch of the host, so the file is timed again
TIMINGS_DISAGREE = 0.10


def measure_network(space, arch, table) -> float:
    """The latency of `arch`'s final network here, timed as `hwnas export` times it; the weights do not
    change it, so untrained ones do."""
    from hwnas.latency.check import time_networks
    from hwnas.latency.networks import build_network

    return time_networks({"net": build_network(space, arch)}, space, table, 100)["net"]


def fit_to_budget(search_config: SearchConfig, search_dir: Path, arch, budget_ms: float, run_dir: Path):
    """The derived network measured here; unless it lies well inside the budget (FIT_WINDOW), derive again
    from the search's architecture weights with the table rescaled by measured / predicted, up to
    FIT_ROUNDS times.
    A table predicts whole networks within a few percent, but a 0.3 ms network on a shared 2-core VM
    varies by 5-10% from one process to the next: the network that will be deployed is the one to time.
    Returns the architecture to train and the rounds, decided once per run (`fit.json`)."""
    from hwnas.data import load_dataset
    from hwnas.latency.table import load_table
    from hwnas.latency.validate import predict
    from hwnas.methods import get_method
    from hwnas.archs.routed import RoutedArch
    from hwnas.runs import load_checkpoint
    from hwnas.search import HeldOut

    decided = run_dir / "fit.json"
    if decided.is_file():
        fit = read_json(decided, HwnasError, "run's budget fit")
        return RoutedArch.from_dict(fit["arch"]), fit
    table = load_table(search_config.method.table)
    dataset = load_dataset(search_config.data)
    method = get_method(search_config.method.name)(search_config, dataset.num_classes, dataset.channels)
    model = None
    rounds, scale = [], 1.0
    for attempt in range(FIT_ROUNDS):
        predicted = predict(table, method.space, arch)["predicted_ms"]
        measured = measure_network(method.space, arch, table)
        verdict = budget_verdict(measured, budget_ms)
        rounds.append({"arch": arch.to_dict(), "predicted_ms": predicted, "measured_ms": measured,
                       "table_scale": scale, "budget": verdict})
        log.info("derived network: %.3f ms predicted, %.3f ms measured here (%s)", predicted, measured, verdict)
        # stop inside the inner window (the deployed network's own timing moves by a few percent), or
        # when the table already predicts this network (re-deriving would not move)
        inside = (1 - FIT_WINDOW[0]) * budget_ms <= measured <= (1 + FIT_WINDOW[1]) * budget_ms
        if inside or attempt == FIT_ROUNDS - 1 or abs(measured / predicted - 1) < FIT_AGREEMENT:
            break
        if model is None:
            model = method.build_supernet()
            model.load_state_dict(load_checkpoint(RunDir(search_dir).checkpoint("search"))["model"])
        factor = measured / predicted
        scale *= factor
        table = table.rescaled(factor, {"reason": "the derived network timed here"})
        method.use_table(table)
        arch = method.derive_final(model, HeldOut(search_config, dataset, "cpu"))
    fit = {"arch": arch.to_dict(), "rounds": rounds}
    if len(rounds) > 1:  # the table the network was derived with, so the report predicts with it too
        from hwnas.latency.table import save_table

        fit["table"] = str(save_table(table, run_dir / "latency_table_fit.csv"))
    write_json(decided, fit)
    return arch, fit


def _file_format(runtime_name: str) -> str:
    from hwnas.runtimes import get_runtime

    return get_runtime(runtime_name).suffix.lstrip(".")


def budget_verdict(measured_ms: float, budget_ms: float) -> str:
    """`met` when the measured latency lies within -10% / +5% of the budget, else the side it missed on."""
    if measured_ms > (1 + BUDGET_OVER) * budget_ms:
        return "over"
    if measured_ms < (1 - BUDGET_UNDER) * budget_ms:
        return "under"
    return "met"


def _stage(folder: Path, run_stage) -> dict[str, Any]:
    """A finished stage's report, or the stage run (resumed when its folder holds a started run)."""
    report = folder / "report.json"
    if report.is_file():
        return read_json(report, HwnasError, "stage report")
    return run_stage(resume=(folder / RunDir.CONFIG).is_file())


def _stage_config(model, stage, extra: list[str]):
    return build_config(model, read_yaml(stage.config), str(resolve_path(stage.config)), [*stage.set, *extra])


def run(config: RunConfig, out: str | Path, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    search_config = _stage_config(SearchConfig, config.search, [])
    if search_config.method.name not in run_method_names():
        raise ConfigError(f"{config.search.config}: `hwnas run` searches with a method that re-derives under a "
                          f"measured budget ({', '.join(run_method_names())}), not {search_config.method.name}")
    run = RunDir.prepare(out, config_to_dict(config), resume)
    with run.kept_once_started():
        return _run_stages(config, search_config, run.path, quiet, started)


def _run_stages(config: RunConfig, search_config: SearchConfig, run_dir: Path, quiet: bool,
                started: float) -> dict[str, Any]:
    """`run` in its prepared folder: table, search, fit, training, export, report."""
    from hwnas.export import export, export_files, timed_again
    from hwnas.runtimes import get_runtime
    from hwnas.archs.routed import RoutedArch
    from hwnas.search import search
    from hwnas.spaces.definition import load_space
    from hwnas.train import train

    space = load_space(search_config.method.space)
    # an int8 deployment is searched with a table of int8 networks, and its budget measured on the int8 file
    dtype = "int8" if config.export.quantize else "float32"
    table = choose_table(config.table, space, run_dir, quiet, config.runtime, dtype)
    search_config = _stage_config(SearchConfig, config.search, [
        f"method.table={table['table']}", f"method.budget_ms={config.budget_ms}", "method.latency_loss=budget"])
    train_config = _stage_config(TrainConfig, config.train, [])
    seconds: dict[str, float] = {}

    clock = time.perf_counter()
    log.info("searching with DenseNAS under %.3f ms ...", config.budget_ms)
    searched = _stage(run_dir / "search", lambda resume: search(search_config, run_dir / "search", resume, quiet,
                                                                          check_table=False))
    seconds["search"] = time.perf_counter() - clock
    arch, fit = fit_to_budget(search_config, run_dir / "search", RoutedArch.from_dict(searched["arch"]),
                              config.budget_ms, run_dir)
    seconds["fit"] = time.perf_counter() - clock - seconds["search"]

    clock = time.perf_counter()
    log.info("training the derived network ...")
    trained = _stage(run_dir / "train", lambda resume: train(train_config, arch, run_dir / "train", resume, quiet))
    seconds["train"] = time.perf_counter() - clock

    clock = time.perf_counter()
    log.info("exporting and verifying ...")
    onnx_path = run_dir / "model.onnx"
    exported_json = run_dir / "export.json"
    deployed_format = _file_format(config.runtime)
    formats = [deployed_format, *config.export.formats]
    if exported_json.is_file():
        exported = read_json(exported_json, HwnasError, "export record")
    else:
        for stale in export_files(onnx_path, formats, config.export.quantize).values():
            stale.unlink(missing_ok=True)  # left by a run killed while exporting
        exported = export(None, onnx_path, weights=trained["weights"]["last"],
                          table=fit.get("table", table["table"]), quantize=config.export.quantize,
                          max_accuracy_drop=config.export.max_accuracy_drop / 100, qat_epochs=config.export.qat_epochs,
                          dynamic_batch=config.export.dynamic_batch, formats=formats)
        write_json(exported_json, exported)
    seconds["export"] = time.perf_counter() - clock

    # the latency of the file the user deploys, in its runtime
    deployed = exported.get("runtimes", {}).get(deployed_format, exported)
    deployed_path = deployed.get("path", exported["onnx"])
    if config.export.quantize:
        quantized = deployed["int8"]
        deployed = {"latency": quantized["latency"],
                    "parity": {k: quantized[k] for k in ("fp32_acc", "int8_acc", "accuracy_drop", "remedy")}}
        deployed_path = quantized["path"]
    latency = deployed["latency"]
    fit_ms = fit["rounds"][-1]["measured_ms"]
    if abs(latency["measured_ms"] / fit_ms - 1) > TIMINGS_DISAGREE:
        log.info("the exported file measured %.3f ms, the same network %.3f ms in the fit: timing it again",
                 latency["measured_ms"], fit_ms)
        latency = timed_again(get_runtime(config.runtime), deployed_path, latency, exported["input_shape"])
    budget = config.budget_ms
    report = {
        "command": "run", "run_dir": str(run_dir), "budget_ms": budget, "table": table,
        "arch": arch.to_dict(), "arch_text": trained["arch_text"], "budget_fit": fit["rounds"],
        "params": exported["params"], "macs": exported["macs"],
        "predicted_ms": latency["predicted_ms"], "measured_ms": latency["measured_ms"],
        **({"timings_ms": latency["timings_ms"]} if "timings_ms" in latency else {}),
        "measured_vs_budget_pct": 100 * (latency["measured_ms"] / budget - 1),
        "within_budget_by_table": latency["predicted_ms"] <= budget,
        "budget": budget_verdict(latency["measured_ms"], budget),
        "test_acc": trained["test_acc"], "dataset": trained["dataset"],
        "runtime": config.runtime,
        "files": {"onnx": exported["onnx"],
                  **{fmt: other["path"] for fmt, other in exported.get("runtimes", {}).items()},
                  **{f"{fmt}:int8": other["int8"]["path"] for fmt, other in exported.get("runtimes", {}).items()
                     if "int8" in other},
                  **({"int8": exported["int8"]["path"]} if "int8" in exported else {}),
                  "weights": trained["weights"]["last"]},
        "parity": deployed["parity"],
        "seconds": {**{k: round(v, 1) for k, v in seconds.items()}, "total": round(time.perf_counter() - started, 1)},
    }
    from hwnas.plots import draw_routed_arch, plot_latency_vs_budget

    plots = [draw_routed_arch(arch, space, run_dir / "architecture.png"),
             plot_latency_vs_budget(latency["breakdown_ms"], latency["predicted_ms"], latency["measured_ms"], budget,
                                    run_dir / "latency.png")]
    report["plots"] = [str(p) for p in plots] + [str(run_dir / "train" / name) for name in trained["plots"]]
    report["budget_met"] = report["budget"] == "met"
    if not report["budget_met"]:
        log.warning("the measured latency %.3f ms is %+.1f%% against the %.3f ms budget (%s; met means -10%% to "
                    "+5%%; the table predicted %.3f ms): the machine may be busier or quieter than when the table "
                    "was checked", latency["measured_ms"], report["measured_vs_budget_pct"], budget, report["budget"],
                    latency["predicted_ms"])
    write_json(run_dir / "report.json", report)
    return report


def load_run_config(path: str | None, overrides: list[str]) -> RunConfig:
    path = path or "configs/run/quickstart.yaml"
    config = build_config(RunConfig, read_yaml(path), str(resolve_path(path)), overrides)
    for stage in (config.search, config.train):
        if not resolve_path(stage.config).is_file():
            raise ConfigError(f"{resolve_path(path)}: stage config not found: {stage.config}")
    return config


def summary(report: dict[str, Any]) -> str:
    files = report["files"]
    lines = [
        f"hwnas run: DenseNAS under a {report['budget_ms']:.3f} ms budget, trained on {report['dataset']}",
        f"  table          {report['table']['table']} ({report['table']['decision']})",
        "  architecture", *("    " + line for line in report["arch_text"].splitlines()),
        f"  parameters     {report['params']:,}",
        f"  multiply-adds  {report['macs'] / 1e6:.1f} M",
        f"  latency        {report['predicted_ms']:.3f} ms predicted, {report['measured_ms']:.3f} ms measured "
        f"in {report.get('runtime', DEFAULT_RUNTIME)} "
        f"({report['measured_vs_budget_pct']:+.1f}% vs the budget: "
        f"{'met' if report['budget_met'] else 'MISSED, ' + report['budget']})",
        *([f"  budget fit     derived again {len(report['budget_fit']) - 1} time(s) with the table rescaled to the "
           "network measured here"] if len(report.get("budget_fit", [])) > 1 else []),
        f"  test accuracy  {report['test_acc']:.2%}",
        f"  files          {', '.join(path for name, path in files.items() if name != 'weights')}",
        f"  run directory  {report['run_dir']} ({report['seconds']['total']:.0f} s: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items() if k != "total") + ")",
    ]
    return "\n".join(lines)

