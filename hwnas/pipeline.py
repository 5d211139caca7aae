"""`hwnas run`: the whole job in one command.

Latency table (the shipped one when it was measured on this CPU model with this ONNX Runtime version,
else the space profiled here first) -> DenseNAS search under the budget -> final training -> ONNX and
.ort export, verified against PyTorch, latency measured beside the budget and the table's prediction.
Each stage has its own run folder inside the run directory, so `--resume` continues a killed run at
the stage it was in (finished stages are kept).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hwnas.config import RunConfig, SearchConfig, TrainConfig, build_config, config_to_dict, read_yaml, resolve_path
from hwnas.errors import ConfigError
from hwnas.runs import RunDir, write_json

log = logging.getLogger("hwnas.run")

RUNTIME = "onnxruntime"


def choose_table(shipped: str, space, run_dir: Path, quiet: bool) -> dict[str, Any]:
    """The shipped table if it was measured here (same CPU model, ONNX Runtime version and space), else a
    table profiled now with the shipped table's settings."""
    import onnxruntime

    from hwnas.latency import kit
    from hwnas.latency.table import load_table
    from profilers.measure import cpu_model

    table = load_table(shipped)
    measured_on = {"cpu_model": (table.meta.get("device") or {}).get("cpu_model"),
                   "runtime": table.meta.get("runtime"), "runtime_version": table.meta.get("runtime_version"),
                   "space": table.space}
    here = {"cpu_model": cpu_model(), "runtime": RUNTIME, "runtime_version": onnxruntime.__version__,
            "space": space.name}
    if measured_on == here:
        return {"table": table.source, "profiled": False, "machine": here}
    profiled = run_dir / "latency_table.csv"
    if not profiled.is_file():
        differs = ", ".join(f"{k} {measured_on[k]} here {here[k]}" for k in here if measured_on[k] != here[k])
        log.info("the shipped table %s does not describe this machine (%s): profiling %s first",
                 table.source, differs, space.name)
        kit.profile(space, profiled, "ort", name="this-machine", threads=int(table.meta.get("threads", 1)),
                    batch=table.batch, warmup=int(table.meta.get("warmup", 10)),
                    runs=int(table.meta.get("runs", 100)), quiet=quiet)
    return {"table": str(profiled), "profiled": True, "machine": here, "shipped": table.source}


def _stage(folder: Path, run_stage) -> dict[str, Any]:
    """A finished stage's report, or the stage run (resumed when its folder holds a started run)."""
    report = folder / "report.json"
    if report.is_file():
        return json.loads(report.read_text())
    return run_stage(resume=(folder / RunDir.CONFIG).is_file())


def _stage_config(model, stage, extra: list[str]):
    return build_config(model, read_yaml(stage.config), str(resolve_path(stage.config)), [*stage.set, *extra])


def run(config: RunConfig, out: str | Path, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    from hwnas.export import export
    from hwnas.routed import RoutedArch
    from hwnas.search import search
    from hwnas.spaces.definition import load_space
    from hwnas.train import train

    started = time.perf_counter()
    search_config = _stage_config(SearchConfig, config.search, [])
    if search_config.method.name != "densenas":
        raise ConfigError(f"{config.search.config}: `hwnas run` searches with densenas, "
                          f"not {search_config.method.name}")
    run_dir = RunDir.prepare(out, config_to_dict(config), resume).path
    space = load_space(search_config.method.space)
    table = choose_table(config.table, space, run_dir, quiet)
    search_config = _stage_config(SearchConfig, config.search, [
        f"method.table={table['table']}", f"method.budget_ms={config.budget_ms}", "method.latency_loss=budget"])
    train_config = _stage_config(TrainConfig, config.train, [])
    seconds: dict[str, float] = {}

    clock = time.perf_counter()
    log.info("searching with DenseNAS under %.3f ms ...", config.budget_ms)
    searched = _stage(run_dir / "search", lambda resume: search(search_config, run_dir / "search", resume, quiet))
    seconds["search"] = time.perf_counter() - clock
    arch = RoutedArch.from_dict(searched["arch"])

    clock = time.perf_counter()
    log.info("training the derived network ...")
    trained = _stage(run_dir / "train", lambda resume: train(train_config, arch, run_dir / "train", resume, quiet))
    seconds["train"] = time.perf_counter() - clock

    clock = time.perf_counter()
    log.info("exporting and verifying ...")
    onnx_path = run_dir / "model.onnx"
    exported_json = run_dir / "export.json"
    if exported_json.is_file():
        exported = json.loads(exported_json.read_text())
    else:
        for stale in (onnx_path, onnx_path.with_suffix(".ort"), onnx_path.with_suffix(".int8.onnx")):
            stale.unlink(missing_ok=True)  # left by a run killed while exporting
        exported = export(None, onnx_path, weights=trained["weights"]["last"], table=table["table"],
                          ort_format=config.export.ort, quantize=config.export.quantize,
                          dynamic_batch=config.export.dynamic_batch)
        write_json(exported_json, exported)
    seconds["export"] = time.perf_counter() - clock

    latency = exported["latency"]
    budget = config.budget_ms
    report = {
        "command": "run", "run_dir": str(run_dir), "budget_ms": budget, "table": table,
        "arch": searched["arch"], "arch_text": trained["arch_text"],
        "params": exported["params"], "macs": exported["macs"],
        "predicted_ms": latency["predicted_ms"], "measured_ms": latency["measured_ms"],
        "measured_vs_budget_pct": 100 * (latency["measured_ms"] / budget - 1),
        "within_budget_by_table": latency["predicted_ms"] <= budget,
        "budget_met": latency["measured_ms"] <= 1.05 * budget,
        "test_acc": trained["test_acc"], "dataset": trained["dataset"],
        "files": {"onnx": exported["onnx"], **({"ort": exported["ort"]["path"]} if "ort" in exported else {}),
                  **({"int8": exported["int8"]["path"]} if "int8" in exported else {}),
                  "weights": trained["weights"]["last"]},
        "parity": exported["parity"],
        "seconds": {**{k: round(v, 1) for k, v in seconds.items()}, "total": round(time.perf_counter() - started, 1)},
    }
    from hwnas.plots import draw_routed_arch, plot_latency_vs_budget

    plots = [draw_routed_arch(arch, space, run_dir / "architecture.png"),
             plot_latency_vs_budget(latency["breakdown_ms"], latency["predicted_ms"], latency["measured_ms"], budget,
                                    run_dir / "latency.png")]
    report["plots"] = [str(p) for p in plots] + [str(run_dir / "train" / name) for name in trained["plots"]]
    if not report["budget_met"]:
        log.warning("the measured latency %.3f ms is %.1f%% over the %.3f ms budget (the table predicted %.3f ms); "
                    "the table may not describe this machine's current state: re-profile it", latency["measured_ms"],
                    report["measured_vs_budget_pct"], budget, latency["predicted_ms"])
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
        f"  table          {report['table']['table']}" + (" (profiled here)" if report["table"]["profiled"] else ""),
        "  architecture", *("    " + line for line in report["arch_text"].splitlines()),
        f"  parameters     {report['params']:,}",
        f"  multiply-adds  {report['macs'] / 1e6:.1f} M",
        f"  latency        {report['predicted_ms']:.3f} ms predicted, {report['measured_ms']:.3f} ms measured "
        f"({report['measured_vs_budget_pct']:+.1f}% vs the budget: {'met' if report['budget_met'] else 'MISSED'})",
        f"  test accuracy  {report['test_acc']:.2%}",
        f"  files          {', '.join(files[k] for k in ('onnx', 'ort', 'int8') if k in files)}",
        f"  run directory  {report['run_dir']} ({report['seconds']['total']:.0f} s: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items() if k != "total") + ")",
    ]
    return "\n".join(lines)

