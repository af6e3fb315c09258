"""Every GPU speed lever of bestshot's generate path, side by side, in one run.

SDXL architecture with RANDOM weights (speed does not depend on weight values), fp16, 1024², 30 Euler
steps, CFG 7.5, best of 4, plus the embedded model on the world oracle. One JSON and one Markdown table:

* plain diffusers: per-seed loop, one batched call (the reference images: eager fp16, fp32 VAE upcast);
* bestshot generate, eager (the old defaults), with the exact-best solo re-render, with the fp16 VAE,
  with early pruning (4 started, 1 or 2 finished);
* regional ``torch.compile`` (cold and warm persistent cache, in child processes) and float8 GEMMs
  (torchao, compiled);
* the load of the saved fp16 folder in the process, and a cold ``bestshot generate`` process;
* images of every fast path against the eager fp16 reference on the same seeds (PSNR, dB);
* the embedded model on CUDA: plain best-of-N against pruned configurations, judged by the world's oracle
  (full-match rate and denoiser work per kept image).

    bash bench/gpu_all.sh                  # on a GPU machine (H200: ~6 min); writes bench_out/gpu_all/
    python bench/gpu_all.py --tiny         # CPU smoke run (what CI executes); timings mean nothing

Results are written after every phase, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

PROMPT = "a lighthouse at dusk"
SEEDS = [42, 43, 44, 45]


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def psnr(a, b) -> float:
    """PSNR in dB between two uint8 images (inf when identical)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def min_psnr(images, ref) -> float:
    return min(psnr(a, b) for a, b in zip(images, ref))


class Report:
    """Rows and facts, rewritten (atomically) after every phase."""

    def __init__(self, out: Path, meta: dict):
        self.out, self.data = out, {"meta": meta, "rows": [], "facts": {}, "errors": {}}
        out.mkdir(parents=True, exist_ok=True)

    def row(self, **kw):
        self.data["rows"].append(kw)
        self.save()

    def fact(self, key, value):
        self.data["facts"][key] = value
        self.save()

    def error(self, phase, err):
        self.data["errors"][phase] = f"{type(err).__name__}: {err}"[:500]
        print(f"[{phase}] FAILED: {err}", flush=True)
        self.save()

    def save(self):
        from bestshot.store import atomic_write_text

        atomic_write_text(
            self.out / "gpu_all.json", json.dumps(_clean(self.data), indent=1, default=str, allow_nan=False)
        )
        atomic_write_text(self.out / "gpu_all.md", self.markdown())

    def markdown(self) -> str:
        m = self.data["meta"]
        lines = [
            f"# bestshot GPU bench ({m['date']})",
            "",
            f"{m['device']}; torch {m['torch']}, diffusers {m['diffusers']}, transformers {m['transformers']}; "
            f"{m['setup']}",
            "",
            f"Command: `{m['command']}`",
            "",
            "| path | s per best-of-4 | gen s | CLIP s | peak GiB | min PSNR vs eager fp16 (dB) | note |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.data["rows"]:
            lines.append(
                f"| {r['path']} | {_fmt(r.get('s'))} | {_fmt(r.get('gen'))} | {_fmt(r.get('clip'))} | "
                f"{_fmt(r.get('peak_gib'), 1)} | {_fmt(r.get('psnr_db'), 1)} | {r.get('note', '')} |"
            )
        lines += ["", "| fact | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(_clean(v))} |" for k, v in self.data["facts"].items()]
        if self.data["errors"]:
            lines += ["", "Failed phases:", ""] + [f"- {k}: {v}" for k, v in self.data["errors"].items()]
        return "\n".join(lines) + "\n"


def _clean(x):
    """inf (identical images) → the string "identical"; NaN → None: the JSON stays strict."""
    if isinstance(x, float) and not math.isfinite(x):
        return "identical" if x == float("inf") else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float) and v == float("inf"):
        return "identical"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------------------------- models
def build_models(work: Path, tiny: bool) -> tuple[Path, Path]:
    model_dir, clip_dir = work / ("sdxl_tiny" if tiny else "sdxl_fp16"), work / ("clip_tiny" if tiny else "clip_l14")
    if not (model_dir / "model_index.json").exists():
        if tiny:
            import tiny_models

            tiny_models.build_sdxl(model_dir)
        else:
            from gpu_generate import build_full

            with torch.device("cuda"):  # random init on the GPU: seconds instead of minutes
                build_full("sdxl", model_dir, dtype=torch.float16)
    if not (clip_dir / "config.json").exists():
        if tiny:
            import tiny_models

            tiny_models.build_clip(clip_dir)
        else:
            from gpu_generate import build_clip_l14

            build_clip_l14(clip_dir)
    return model_dir, clip_dir


def settings(tiny: bool) -> dict:
    return dict(steps=2 if tiny else 30, size=64 if tiny else 1024)


# -------------------------------------------------------------------------------------------- phases
def phase_load(rep: Report, model_dir: Path, dev: str):
    """Loading the saved fp16 folder in this process (the files are in the page cache after the build).
    Loading straight to the device (diffusers' ``device_map="cuda"``) was measured on 2026-12-04 on an
    H200 and gained nothing over this (2.67-3.00 s against 2.64-2.85 s), so bestshot does not use it."""
    from bestshot.models.loader import CACHE, load_pipeline

    times = []
    for _ in range(2):
        CACHE.clear()
        _sync()
        t = time.perf_counter()
        load_pipeline(str(model_dir), device=dev)
        _sync()
        times.append(time.perf_counter() - t)
    CACHE.clear()
    rep.fact("load_s", [round(x, 3) for x in times])


def phase_speed(
    rep: Report, model_dir: Path, clip_dir: Path, dev: str, tiny: bool, reps: int, variants_too: bool = True
):
    from bestshot.generation import generate
    from bestshot.models.loader import load_pipeline

    s = settings(tiny)
    out = Path(tempfile.mkdtemp(prefix="bestshot-gpu-all-"))
    pipe = load_pipeline(str(model_dir), device=dev, vae_fp16=False)

    def plain(batched):
        ims = []
        if batched:
            ims = pipe(
                prompt=PROMPT,
                num_inference_steps=s["steps"],
                height=s["size"],
                width=s["size"],
                guidance_scale=7.5,
                num_images_per_prompt=len(SEEDS),
                generator=[torch.Generator("cpu").manual_seed(x) for x in SEEDS],
            ).images
        else:
            for x in SEEDS:
                ims += pipe(
                    prompt=PROMPT,
                    num_inference_steps=s["steps"],
                    height=s["size"],
                    width=s["size"],
                    guidance_scale=7.5,
                    generator=torch.Generator("cpu").manual_seed(x),
                ).images
        return ims

    def timed(fn, repeats, warm=True):
        if warm:
            fn()
        best, res = float("inf"), None
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            _sync()
            t = time.perf_counter()
            res = fn()
            _sync()
            best = min(best, time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        return best, res, peak

    t, ref, peak = timed(lambda: plain(True), reps)
    rep.row(path="plain diffusers, one batched call", s=t, peak_gib=peak, note="reference images")
    np.savez_compressed(out / "ref.npz", *[np.asarray(x) for x in ref])
    if not variants_too:
        return out / "ref.npz"
    t2, again, _ = timed(lambda: plain(True), 1, warm=False)
    rep.fact("plain_batched_deterministic", bool(min_psnr(again, ref) == float("inf")))
    t, loop, peak = timed(lambda: plain(False), 1, warm=False)
    rep.row(
        path="plain diffusers, per-seed loop",
        s=t,
        peak_gib=peak,
        psnr_db=min_psnr(loop, ref),
        note="seed 000's way; PSNR = solo vs batch render",
    )
    rep.fact("solo_vs_batch_psnr_db", [round(psnr(a, b), 2) for a, b in zip(loop, ref)])

    common = dict(
        model=str(model_dir),
        scorer=str(clip_dir),
        n_images=len(SEEDS),
        steps_base=s["steps"],
        height=s["size"],
        width=s["size"],
        clip_min=-1.0,
        device=dev,
        style_suffix="",
        negative_prompt="",
        out_dir=str(out),
        log_jsonl=str(out / "log.jsonl"),
        seed_base=SEEDS[0],
        guidance=7.5,
    )
    variants = [
        ("bestshot, eager (before: fp32 VAE upcast, exact_best off)", dict(vae_fp16=False, exact_best=False)),
        ("bestshot, eager + exact-best solo re-render", dict(vae_fp16=False, exact_best=True)),
        ("bestshot, fp16 VAE (checked)", dict(vae_fp16=True, exact_best=False)),
        (
            "bestshot, fp16 VAE + pruning 4→2 at 30 %",
            dict(vae_fp16=True, exact_best=False, n_images=2, prune_start=4, prune_at=0.3),
        ),
        (
            "bestshot, fp16 VAE + pruning 4→1 at 30 %",
            dict(vae_fp16=True, exact_best=False, n_images=1, prune_start=4, prune_at=0.3),
        ),
    ]
    by_seed = dict(zip(SEEDS, ref))
    for name, kw in variants:
        try:
            box = {}

            def run(box=box, kw=kw):
                box["r"] = generate(PROMPT, **{**common, **kw}, return_candidates_images=True)
                return box["r"]

            t, r, peak = timed(run, reps)
            ims, seeds = r["candidate_images"], [c["seed"] for c in r["candidates"]]
            if kw.get("exact_best"):  # the kept image was re-rendered alone: what --seed S -n 1 gives
                note = f"exact-best {r['timing_s'].get('exact_best', 0):.3f} s"
            else:
                note = r.get("reproduce", "")[:40]
            if "prune_start" in kw:
                work = r["pruning"]["cost_ratio"] * kw["n_images"] / kw["prune_start"]
                note = f"denoiser work {work:.0%} of best of 4; kept seeds {seeds}"
            rep.row(
                path=name,
                s=t,
                gen=r["timing_s"]["gen"],
                clip=r["timing_s"]["clip"],
                peak_gib=peak,
                psnr_db=min_psnr(ims, [by_seed[x] for x in seeds]),
                note=note,
            )
        except Exception as e:  # one lever failing must not cost the others
            rep.error(name, e)
    # the CLIP scorer's own cost at batch 4 (fp16 on CUDA)
    from bestshot.scoring import get_scorer

    sc = get_scorer(str(clip_dir), device=dev)
    _sync()
    t = time.perf_counter()
    sc.score(ref, PROMPT)
    _sync()
    rep.fact("clip_score_4_images_s", round(time.perf_counter() - t, 4))
    rep.fact("clip_dtype", str(sc.dtype))
    return out / "ref.npz"


CHILD_FLAG = "--child"


def phase_child(rep: Report, name: str, args: list[str], timeout: int, ref_npz: Path, env: dict):
    """A compiled variant in its own process (a cold compile must not hang the rest), bounded in time."""
    out = Path(tempfile.mkdtemp(prefix="bestshot-child-"))
    cmd = [sys.executable, __file__, CHILD_FLAG, str(out), *args]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        rep.row(path=name, note=f"did not finish in {timeout} s (cut)")
        return
    wall = time.perf_counter() - t
    res = out / "child.json"
    if proc.returncode != 0 or not res.exists():
        rep.error(name, RuntimeError((proc.stderr or proc.stdout)[-400:]))
        return
    r = json.loads(res.read_text())
    ref = list(np.load(ref_npz).values())
    ims = list(np.load(out / "images.npz").values())
    rep.row(
        path=name,
        s=r["s"],
        gen=r["gen"],
        clip=r["clip"],
        peak_gib=r["peak_gib"],
        psnr_db=min_psnr(ims, ref[: len(ims)]),
        note=f"first call {r['first_call_s']:.1f} s (compile), load {r['load_s']:.1f} s, process {wall:.0f} s",
    )


def child_main(argv: list[str]) -> None:
    """Runs in the child: load, apply the lever, time the first call (the compile) and the steady state."""
    out = Path(argv[0])
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--clip")
    ap.add_argument("--lever", choices=["compile", "fp8"])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    a = ap.parse_args(argv[1:])
    from bestshot.generation import generate
    from bestshot.models.loader import compile_pipeline, load_pipeline

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    s = settings(a.tiny)
    t = time.perf_counter()
    pipe = load_pipeline(a.model, device=dev, vae_fp16=True, dtype=a.dtype)
    if a.lever == "fp8":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        quantize_(pipe.unet, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    if dev == "cuda":
        compile_pipeline(pipe)
    load_s = time.perf_counter() - t
    common = dict(
        model=a.model,
        scorer=a.clip,
        n_images=len(SEEDS),
        steps_base=s["steps"],
        height=s["size"],
        width=s["size"],
        clip_min=-1.0,
        device=dev,
        style_suffix="",
        negative_prompt="",
        out_dir=str(out),
        log_jsonl=str(out / "log.jsonl"),
        seed_base=SEEDS[0],
        guidance=7.5,
        exact_best=False,
        vae_fp16=True,
        dtype=a.dtype,
    )
    _sync()
    t = time.perf_counter()
    generate(PROMPT, **common)
    _sync()
    first = time.perf_counter() - t
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    best, r = float("inf"), None
    for _ in range(a.reps):
        _sync()
        t = time.perf_counter()
        r = generate(PROMPT, **common, return_candidates_images=True)
        _sync()
        best = min(best, time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    np.savez_compressed(out / "images.npz", *[np.asarray(x) for x in r["candidate_images"]])
    (out / "child.json").write_text(
        json.dumps(
            dict(
                s=best,
                gen=r["timing_s"]["gen"],
                clip=r["timing_s"]["clip"],
                peak_gib=peak,
                first_call_s=first,
                load_s=load_s,
            )
        )
    )


def parse_configs(text: str) -> list[tuple[int, int, float | None]]:
    """``"8:8,8:2:0.5"`` → [(8, 8, None), (8, 2, 0.5)] (started:kept[:prune_at]; no prune_at = plain)."""
    out = []
    for item in text.split(","):
        parts = item.split(":")
        out.append((int(parts[0]), int(parts[1]), float(parts[2]) if len(parts) > 2 else None))
    return out


def phase_steps(rep: Report, model_dir: Path, dev: str, tiny: bool):
    """Denoiser ms per step at batch 2 (one image with CFG) and 8 (four): is a small batch launch-bound?"""
    from bestshot.models.loader import load_pipeline

    s = settings(tiny)
    pipe = load_pipeline(str(model_dir), device=dev)
    for n in (1, 4):
        stamps = []

        def cb(p, i, t, kw, stamps=stamps):
            _sync()
            stamps.append(time.perf_counter())
            return kw

        pipe(
            prompt=PROMPT,
            num_inference_steps=max(4, s["steps"] // 3),
            height=s["size"],
            width=s["size"],
            num_images_per_prompt=n,
            generator=[torch.Generator("cpu").manual_seed(x) for x in SEEDS[:n]],
            callback_on_step_end=cb,
            output_type="latent",
        )
        gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
        rep.fact(f"unet_ms_per_step_batch_{2 * n}", round(1000 * gaps[len(gaps) // 2], 1))


def phase_cold_cli(rep: Report, model_dir: Path, clip_dir: Path, tiny: bool):
    """The README's way on this model: one fresh ``bestshot generate`` process, wall time."""
    s = settings(tiny)
    out = Path(tempfile.mkdtemp(prefix="bestshot-cli-"))
    cmd = [
        sys.executable,
        "-m",
        "bestshot.cli",
        "generate",
        PROMPT,
        "--model",
        str(model_dir),
        "--scorer",
        str(clip_dir),
        "-n",
        "4",
        "--steps",
        str(s["steps"]),
        "--size",
        f"{s['size']}x{s['size']}",
        "--clip-min",
        "-1",
        "--out",
        str(out),
        "--log",
        str(out / "log.jsonl"),
        "--json",
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=out)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        rep.error("cold CLI", RuntimeError((proc.stderr or proc.stdout)[-400:]))
        return
    rec = json.loads(proc.stdout[proc.stdout.index("{") :])
    rep.fact("cold_cli_wall_s", round(wall, 2))
    rep.fact("cold_cli_timing_s", rec.get("timing_s"))


def phase_world(
    rep: Report, dev: str, prompts: int, configs: list[tuple[int, int, float | None]], objects: tuple[int, ...] = (2, 1)
):
    """Plain best-of-N against pruned configurations on the embedded model, judged by the oracle.

    A configuration is (started, kept, prune_at); prune_at None = plain best-of-started. Work is counted in
    denoiser image-steps per kept image; the rates are the oracle's full match of the scorer's pick."""
    from bestshot.generation import make_candidates, pipeline_kwargs, seeds_for
    from bestshot.models.loader import load_pipeline
    from bestshot.models.registry import resolve_model
    from bestshot.models.settings import resolve_config
    from bestshot.pruning import cost_ratio, run_pruned
    from bestshot.scoring import pipeline_scorer
    from bestshot.world import heldout_prompts
    from bestshot.world.oracle import oracle

    cfg = resolve_config(None, clip_min=-1.0, device=dev)
    pipe = load_pipeline("embedded", device=dev)
    scorer = pipeline_scorer(None, pipe, resolve_model("embedded").family, dev)
    steps = cfg.steps_base
    for n_obj in objects:
        ps = heldout_prompts(prompts, seed=777, n_objects=n_obj)
        for start, keep, at in configs:
            hits, t0 = 0, time.perf_counter()
            seeds = seeds_for(0, start)
            for p in ps:
                c = resolve_config(None, n_images=start, clip_min=-1.0, device=dev)
                if at is None:
                    ims = make_candidates(pipe, None, p, "", seeds, c)
                else:
                    ims = run_pruned(
                        pipe,
                        pipeline_kwargs(pipe, p, "", seeds, c, None),
                        seeds=seeds,
                        keep=keep,
                        at=at,
                        score_fn=lambda x, p=p: scorer.score(x, p),
                        family="embedded",
                    ).images
                sc = scorer.score(ims, p)
                hits += oracle(ims[max(range(len(sc)), key=sc.__getitem__)], p).match
            work = start * steps if at is None else cost_ratio(steps, start, keep, at) * keep * steps
            rep.row(
                path=f"embedded world, {n_obj} object(s): "
                + (f"best of {start}" if at is None else f"{start} started → {keep} at {at:.0%}"),
                s=(time.perf_counter() - t0) / len(ps),
                note=f"full match {hits}/{len(ps)} = {hits / len(ps):.1%}; work {work:.0f} image-steps per "
                f"kept image ({work / (start * steps):.0%} of best of {start})",
            )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        child_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny configs on CPU (forced without CUDA)")
    ap.add_argument("--out", default="bench_out/gpu_all")
    ap.add_argument("--workdir", default=None, help="where the random-weight models are built (reused)")
    ap.add_argument(
        "--skip",
        default="",
        help="comma list of phases to skip: load,steps,cli,speed (all of it),variants (all but "
        "the reference images),compile,fp8,world",
    )
    ap.add_argument("--reps", type=int, default=2, help="timed repeats per variant (after one warm-up)")
    ap.add_argument("--world-prompts", type=int, default=24)
    ap.add_argument(
        "--world-configs",
        default="8:8,8:2:0.3,4:4,4:1:0.3",
        help="started:kept[:prune_at], comma-separated; no prune_at = plain best-of-started",
    )
    ap.add_argument("--world-objects", default="2,1", help="objects per prompt, comma-separated")
    ap.add_argument("--child-timeout", type=int, default=150)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    tiny = args.tiny or not cuda
    dev = "cuda" if cuda else "cpu"
    skip = set(filter(None, args.skip.split(",")))
    import diffusers
    import transformers

    meta = dict(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        device=torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        transformers=transformers.__version__,
        setup=(
            "tiny SDXL, 64², 2 steps"
            if tiny
            else "SDXL architecture, random weights, fp16, 1024², "
            "30 Euler steps, CFG 7.5, best of 4, CLIP ViT-L/14 (random) scorer"
        ),
        command="python bench/gpu_all.py " + " ".join(sys.argv[1:]),
    )
    rep = Report(Path(args.out), meta)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bestshot-gpu-all-"))
    t = time.perf_counter()
    model_dir, clip_dir = build_models(work, tiny)
    rep.fact("build_s", round(time.perf_counter() - t, 1))
    if "load" not in skip:
        try:
            phase_load(rep, model_dir, dev)
        except Exception as e:
            rep.error("load", e)
    for phase, fn in (
        ("steps", lambda: phase_steps(rep, model_dir, dev, tiny)),
        ("cli", lambda: phase_cold_cli(rep, model_dir, clip_dir, tiny)),
    ):
        if phase not in skip:
            try:
                fn()
            except Exception as e:
                rep.error(phase, e)
    ref_npz = None
    if "speed" not in skip:
        try:
            ref_npz = phase_speed(rep, model_dir, clip_dir, dev, tiny, args.reps, "variants" not in skip)
        except Exception as e:
            rep.error("speed", e)
    from bestshot.models.loader import CACHE

    CACHE.clear()
    if ref_npz is not None:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"))
        base = ["--model", str(model_dir), "--clip", str(clip_dir), "--reps", str(args.reps)] + (
            ["--tiny"] if tiny else []
        )
        if "compile" not in skip:
            for label in ("cold cache", "warm cache"):
                phase_child(
                    rep,
                    f"bestshot, fp16 VAE + regional compile ({label})",
                    base + ["--lever", "compile"],
                    args.child_timeout,
                    ref_npz,
                    env,
                )
        if "fp8" not in skip and cuda:
            phase_child(
                rep,
                "bestshot, bf16 + float8 GEMMs (torchao, per-row) + regional compile",
                base + ["--lever", "fp8", "--dtype", "bfloat16"],
                args.child_timeout,
                ref_npz,
                dict(env, TORCHINDUCTOR_CACHE_DIR=str(work / "inductor-fp8")),
            )
    if "world" not in skip:
        try:
            if tiny:
                phase_world(rep, dev, 1, [(2, 2, None), (2, 1, 0.5)], (2, 1))
            else:
                phase_world(
                    rep,
                    dev,
                    args.world_prompts,
                    parse_configs(args.world_configs),
                    tuple(int(x) for x in args.world_objects.split(",")),
                )
        except Exception as e:
            rep.error("world", e)
    print(rep.markdown())


if __name__ == "__main__":
    main()
