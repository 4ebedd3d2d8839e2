"""The demo from nothing to a results table, as `adadistill demo` runs it.

Synthetic identities -> a teacher, a standalone student and an AdaDistill (alpha') student with
identical budgets -> verification accuracy and IJB-style TAR@FAR of all three -> DIR/report.md
with plots, and the TensorBoard logs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from insightface_adadistill import distributed
from insightface_adadistill.demo import report
from insightface_adadistill.demo.configs import RunPlace, write_run_configs
from insightface_adadistill.demo.pipeline import (IJB_NAME, MIN_FALSE_ACCEPTS, evaluate_run, generate_data,
                                                  ijb_workers_for, max_steps_overrides, train_run)
from insightface_adadistill.demo.presets import DEMO_STUDENTS, LR_BATCH, METHODS, TEACHER, DemoPreset
from insightface_adadistill.evaluation.verification import VerificationSet
from insightface_adadistill.outputs import CLAIM_FILES, OutputFolderError, claim_output, folder_kind, staged
from insightface_adadistill.training.schedule import scaled_lr

WRITTEN = ("data", "configs", "runs", "report.md", "report.json", "alpha_curves.png", "roc.png")


@contextlib.contextmanager
def demo_output(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Claim `out` for the demo and clear a previous demo's files in it (a rerun replaces them).

    A folder of another kind, or a non-empty one the demo did not write, is refused unless
    `overwrite` (then the demo's own names in it are replaced; other files stay).
    """
    out = out.resolve()

    def only_a_demo(folder: Path) -> None:
        foreign = folder_kind(folder) is None and any(p.name not in CLAIM_FILES for p in folder.iterdir())
        if foreign and not overwrite:
            raise OutputFolderError(f"--out {out} exists and holds files the demo did not write; choose a new or "
                                    f"empty folder, or pass --overwrite to write the demo into it (its "
                                    f"{', '.join(WRITTEN)} are replaced)")

    with claim_output(out, "demo", overwrite=overwrite, check=only_a_demo) as folder:
        for path in map(folder.joinpath, WRITTEN):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        yield folder


def run_pipeline(preset: DemoPreset, out: Path, dist: distributed.DistInfo, *, seed: int,
                 device: str, max_steps: Optional[int] = None,
                 on_stage: Callable[[int, str], None] = lambda number, text: None) -> Dict[str, Any]:
    """Data -> configs -> teacher and students -> evaluation; returns everything the report needs.

    `on_stage(number, text)` is called as each of the stages 1-3 starts (the command prints it).
    """
    seconds: Dict[str, float] = {}
    started = time.perf_counter()
    on_stage(1, f"writing {preset.train_ids} x {preset.images_per_id} synthetic training faces, "
              f"{preset.val_pairs} verification pairs and an {IJB_NAME}-style folder")
    data = generate_data(preset, out / "data", seed)
    seconds["data"] = time.perf_counter() - started

    place = RunPlace(rec=data["rec"], runs_dir=out / "runs", seed=seed, device=device)
    configs = write_run_configs(preset, place, out / "configs", DEMO_STUDENTS)
    runs = {}
    for name, path in configs.items():
        on_stage(2, f"training {name} ({path})")
        runs[name] = train_run(path, dist, max_steps_overrides(max_steps))
    seconds["training"] = sum(run["seconds"] for run in runs.values())

    on_stage(3, f"evaluating on synth_val.bin and the {IJB_NAME}-style folder")
    started = time.perf_counter()
    vset = VerificationSet.load(data["synth_val"])
    results = {name: {**run, **evaluate_run(run, vset, data["ijb"], device=dist.device,
                                            ijb_workers=ijb_workers_for(dist.device, preset))}
               for name, run in runs.items()}
    seconds["evaluation"] = time.perf_counter() - started
    return {"data": data, "configs": configs, "results": results, "seconds": seconds}


def write_outputs(preset: DemoPreset, out: Path, outcome: Dict[str, Any],
                  meta: Dict[str, Any]) -> Dict[str, Path]:
    """report.md, report.json, alpha_curves.png and roc.png in `out`; returns their paths."""
    results = outcome["results"]
    fars = sorted(results[TEACHER]["tar_at_far"])
    rows = [{"label": "teacher" if name == TEACHER else METHODS[name].label, **res} for name, res in results.items()]
    names = {"report": "report.md", "json": "report.json", "alpha_curves": "alpha_curves.png", "roc": "roc.png"}
    tensorboard_dir = Path(results["adadistill"]["output"]) / "tensorboard"
    curves = report.read_scalars(tensorboard_dir, [*report.DISTILL_CURVES, report.LR_TAG])
    with staged(out) as stage:  # the four files appear together, each whole
        files = {key: stage / name for key, name in names.items()}
        report.plot_distill_curves(curves, files["alpha_curves"],
                                   f"AdaDistill α′ student ({preset.student_network}): centre momentum")
        report.plot_roc_curves({row["label"]: (row["fpr"], row["tpr"]) for row in rows}, files["roc"],
                               results[TEACHER]["num_impostor"], min(fars, default=1.0),
                               f"{IJB_NAME}-style 1:1 verification (held-out ids)")
        table = report.results_table(rows, fars, IJB_NAME)
        final = {tag: value for tag, value in report.final_means(curves).items() if tag != report.LR_TAG}
        files["report"].write_text(render_markdown(preset, out, outcome, table, final, meta))
        files["json"].write_text(json.dumps(report.json_ready({
            **meta, "preset": dataclasses.asdict(preset), "fars": fars, "seconds": outcome["seconds"],
            "distill_final_means": final,
            "results": {name: {k: v for k, v in res.items() if k not in ("fpr", "tpr")}
                        for name, res in results.items()},
            "configs": {name: str(path) for name, path in outcome["configs"].items()}}), indent=1) + "\n")
    return {key: out / name for key, name in names.items()}


def render_markdown(preset: DemoPreset, out: Path, outcome: Dict[str, Any], table: str,
                    final: Dict[str, float], meta: Dict[str, Any]) -> str:
    """The text of report.md: blocks separated by a blank line."""
    results = outcome["results"]
    teacher, student = results[TEACHER], results["standalone"]
    steps_note = (f"every student: {student['steps']} steps of batch {preset.batch_size} "
                  f"({preset.student_epochs} epochs), the same lr schedule and seed; the teacher: "
                  f"{teacher['steps']} steps")
    finals = ", ".join(f"{tag.split('/')[-1]} {value:.3f}" for tag, value in final.items())
    blocks: List[str] = [
        f"# AdaDistill demo: preset `{preset.name}`, device {meta['device']}",
        table.rstrip("\n"),
        f"Verification accuracy: 10-fold protocol on `synth_val.bin` ({preset.val_pairs} pairs of held-out "
        f"identities, mean ± std over folds). TAR on the {IJB_NAME}-style folder ({teacher['num_genuine']} "
        f"genuine and {teacher['num_impostor']} impostor template pairs) is shown only at FARs where at "
        f"least {MIN_FALSE_ACCEPTS} impostor pairs are accepted; at lower FARs a handful of pairs would "
        "decide the number.",
        "## What ran",
        report.summary_lines({
            "data": f"{preset.train_ids} training identities x {preset.images_per_id} images "
                    f"(`{preset.difficulty}` synthetic faces, seed {meta['seed']}); held-out identities "
                    f"{preset.heldout_ids} (never trained on)",
            "teacher": f"`{preset.teacher_network}`, ArcFace m 0.5",
            "students": f"`{preset.student_network}`, ArcFace m 0.45 with the exact margin gradient, "
                        "fp32; standalone = learned classifier, AdaDistill α′ = class centres distilled "
                        "from the teacher",
            "budget": steps_note,
            "optimiser": f"SGD momentum 0.9, weight decay 5e-4, lr {preset.lr} per 512 samples "
                         f"({scaled_lr(preset.lr, preset.batch_size, LR_BATCH):g} at batch {preset.batch_size}) "
                         "divided by 10 after 1/2 and 3/4 of the epochs, gradient-norm clip 5, no warm-up (the "
                         "paper's settings, its 26-epoch schedule shortened)",
            "time": ", ".join(f"{k} {v:.0f} s" for k, v in outcome["seconds"].items())
                    + f", total {meta['total_seconds']:.0f} s",
        }),
    ]
    if preset.name != "gpu":
        blocks.append(f"This preset uses the registered demo backbones `{preset.teacher_network}` and "
                      f"`{preset.student_network}` instead of the paper's `r50` and `mfn`: on 2 CPU cores "
                      "those need tens of seconds per training batch, hours for a meaningful run. On a GPU "
                      "(`--preset gpu`, the default when CUDA is available) the demo trains `r50` -> `mfn` "
                      "on a larger synthetic set.")
    blocks += [
        "## Adaptive centre momentum", "![alpha curves](alpha_curves.png)",
        f"End of training (mean of the last logged values): {finals}.",
        "## ROC", "![roc](roc.png)",
        "## Files",
        report.summary_lines({
            "configs (rerun with `adadistill train <file> --set output=<new folder>`)": f"`{out / 'configs'}`",
            "runs (model.pt, training.log, tensorboard/)": f"`{out / 'runs'}`",
            "TensorBoard": f"`tensorboard --logdir {out / 'runs'}`",
            "data": f"`{out / 'data'}`",
        }),
    ]
    return "\n\n".join(blocks) + "\n"
