"""Load and fuzz `bestshot serve` on loopback.

    python bench/server_load.py --tiny --n 50 --max-queue 8            # burst of 50 txt2img at once
    python bench/server_load.py --model embedded --n 50 --steps 4      # the shipped model
    python bench/server_load.py --tiny --fuzz 25                       # schemathesis: 25 examples per route
    python bench/server_load.py --tiny --n 0 --soak 1000               # 1,000 mixed requests, RSS before/after
    python bench/server_load.py --n 0 --hostile                        # hostile bodies: peak and final RSS

The burst checks what issue 8 asks: every response is 200 or 429 (429 with Retry-After), no 5xx, every
200 names images that are on disk, and the run index holds exactly one run per 200 (nothing lost, nothing
half-done). The fuzz sends schema-generated requests to every route of /openapi.json and fails on any 5xx.
The soak sends mixed requests one after another (txt2img, progress polls, options read and written,
png-info, model lists, hostile bodies) and compares the process's RSS after the first tenth with the end:
a server that keeps something per request grows.
The hostile run sends oversized bodies (1 GB declared and 1 GB chunked png-info, a body just under the cap,
3,000,000 list items, 1,000,000 unknown keys, an extras batch of 16 2048² images at x4) one after another and
reports each one's status, seconds and peak RSS (sampled every 20 ms), and the RSS left at the end.
Run by hand with `torch.set_num_threads(1)` on a shared machine (it is set here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def post(url: str, body: dict[str, Any], timeout: float = 600) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def burst(base_url: str, n: int, body: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``n`` txt2img requests released at the same instant; returns the tally and the problems found."""
    gate = threading.Barrier(n)

    def one(i: int) -> tuple[int, dict[str, str], bytes, float]:
        gate.wait()
        t = time.perf_counter()
        status, headers, data = post(f"{base_url}/sdapi/v1/txt2img", {**body, "seed": 1000 + i, "save_images": True})
        return status, headers, data, time.perf_counter() - t

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    tally: dict[int, int] = {}
    problems, latency_ok, files = [], [], []
    for status, headers, data, dt in results:
        tally[status] = tally.get(status, 0) + 1
        if status == 200:
            latency_ok.append(dt)
            info = json.loads(json.loads(data)["info"])
            names = [x["file"] for x in info["bestshot"]["images"]]
            if not names:
                problems.append("a 200 without any image")
            for name in names:
                files.append(name)
                if not (out_dir / name).is_file():
                    problems.append(f"a 200 names {name}, which is not on disk")
        elif status == 429:
            if "retry-after" not in {k.lower() for k in headers}:
                problems.append("a 429 without Retry-After")
        else:
            problems.append(f"status {status}: {data[:200]!r}")
    return {
        "tally": tally,
        "problems": problems,
        "files": files,
        "p50_s": statistics.median(latency_ok) if latency_ok else None,
        "max_s": max(latency_ok) if latency_ok else None,
    }


def rss_mib() -> float:
    """This process's resident memory (the server runs in it, on a thread)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def get(url: str, timeout: float = 60) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def soak(base_url: str, n: int, body: dict[str, Any]) -> dict[str, Any]:
    """``n`` mixed requests in turn; the tally, RSS after the first tenth and at the end, and any 5xx."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    png = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    calls = [
        lambda i: post(f"{base_url}/sdapi/v1/txt2img", {**body, "seed": i})[0],
        lambda i: get(f"{base_url}/sdapi/v1/progress")[0],
        lambda i: get(f"{base_url}/sdapi/v1/options")[0],
        lambda i: post(f"{base_url}/sdapi/v1/options", {"bestshot_best_of": 1, f"client_key_{i}": "x" * 100})[0],
        lambda i: post(f"{base_url}/sdapi/v1/png-info", {"image": png})[0],
        lambda i: get(f"{base_url}/sdapi/v1/sd-models")[0],
        lambda i: post(f"{base_url}/sdapi/v1/txt2img", {**body, "cfg_scale": "NaN"})[0],
        lambda i: post(f"{base_url}/sdapi/v1/txt2img", {**body, "prompt": "x" * 20_000})[0],
        lambda i: get(f"{base_url}/sdapi/v1/samplers")[0],
        lambda i: get(f"{base_url}/v1/runs")[0],
    ]
    tally: dict[int, int] = {}
    errors, rss_start = [], None
    for i in range(n):
        status = calls[i % len(calls)](i)
        tally[status] = tally.get(status, 0) + 1
        if status >= 500:
            errors.append(f"request {i} (kind {i % len(calls)}): {status}")
        if i == max(0, n // 10 - 1):
            rss_start = rss_mib()
    rss_end = rss_mib()
    return {
        "requests": n,
        "tally": tally,
        "server_errors": errors,
        "rss_mib_after_first_tenth": round(rss_start, 1),
        "rss_mib_end": round(rss_end, 1),
        "rss_growth_mib": round(rss_end - rss_start, 1),
    }


def _raw_post(base_url: str, path: str, head_length: int | None, chunks: Any) -> int:
    """POST ``chunks`` (an iterable of bytes) with a declared Content-Length or chunked; the status (0: the
    server closed the connection before answering)."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    headers = {"Content-Type": "application/json"}
    if head_length is not None:
        headers["Content-Length"] = str(head_length)
    try:
        conn.request("POST", path, body=chunks, headers=headers, encode_chunked=head_length is None)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused mid-body: read the answer that was sent
    try:
        return conn.getresponse().status
    except (http.client.HTTPException, OSError):
        return 0
    finally:
        conn.close()


def hostile(base_url: str, max_body_mb: float) -> dict[str, Any]:
    """Each hostile body in turn: its status, seconds and the peak RSS while it ran; RSS before and after."""
    import base64
    import io

    from PIL import Image

    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.02)

    def gib_of_a(n_mib: int):
        block = b"A" * (1 << 20)
        yield b'{"image": "'
        for _ in range(n_mib):
            yield block
        yield b'"}'

    def near_cap() -> int:
        body = b'{"image": "' + b"QUFB" * int(max_body_mb * 2**20 * 0.95 / 4) + b'"}'
        return _raw_post(base_url, "/sdapi/v1/png-info", len(body), [body])

    buf = io.BytesIO()
    Image.new("RGB", (2048, 2048), (30, 60, 90)).save(buf, "PNG")
    big_png = base64.b64encode(buf.getvalue()).decode()
    attacks = {
        "png-info, 1 GB declared": lambda: _raw_post(base_url, "/sdapi/v1/png-info", 1 << 30, gib_of_a(1024)),
        "png-info, 1 GB chunked": lambda: _raw_post(base_url, "/sdapi/v1/png-info", None, gib_of_a(1024)),
        f"png-info, {0.95 * max_body_mb:g} MB (under the cap)": near_cap,
        "img2img, 3,000,000 list items": lambda: post(
            f"{base_url}/sdapi/v1/img2img", {"prompt": "a", "init_images": [0] * 3_000_000}
        )[0],
        "generate, 1,000,000 unknown keys": lambda: post(
            f"{base_url}/v1/generate", {"prompt": "a", **{f"k{i}": 0 for i in range(1_000_000)}}
        )[0],
        "extras, 16 x 2048² at x4": lambda: post(
            f"{base_url}/sdapi/v1/extra-batch-images",
            {
                "imageList": [{"data": big_png, "name": str(i)} for i in range(16)],
                "upscaling_resize": 4,
                "upscaler_1": "Lanczos",
            },
        )[0],
    }
    threading.Thread(target=sample, daemon=True).start()
    time.sleep(0.1)
    start = rss_mib()
    rows = []
    for name, attack in attacks.items():
        peak[0] = rss_mib()
        t = time.perf_counter()
        status = attack()
        rows.append(
            {
                "attack": name,
                "status": status,
                "seconds": round(time.perf_counter() - t, 2),
                "peak_rss_mib": round(peak[0], 1),
                "rss_after_mib": round(rss_mib(), 1),
            }
        )
    stop.set()
    time.sleep(0.5)  # the last request's memory release runs after its response
    return {
        "rss_start_mib": round(start, 1),
        "attacks": rows,
        "rss_end_mib": round(rss_mib(), 1),
        "max_peak_over_start_mib": round(max(r["peak_rss_mib"] for r in rows) - start, 1),
    }


def fuzz(app: Any, examples: int) -> list[str]:
    """Schema-driven requests to every operation; returns the 5xx found (empty = none)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures = []
    for result in schema.get_all_operations():
        op = result.ok()
        strategy = op.as_strategy()

        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case, op=op):
            resp = case.call()
            documented = str(resp.status_code) in case.operation.definition.raw.get("responses", {})
            if resp.status_code >= 500 and not documented:  # a documented 503 is an answer, not a crash
                failures.append(f"{op.method.upper()} {op.path}: {resp.status_code} for {case.body!r:.200}")

        check()
    return failures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model to serve (default: a tiny random SD 1.5 with --tiny)")
    ap.add_argument("--scorer", default=None)
    ap.add_argument("--tiny", action="store_true", help="build and serve tiny random SD 1.5 + CLIP (CPU, seconds)")
    ap.add_argument("--n", type=int, default=50, help="concurrent requests in the burst (0: no burst)")
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--best-of", type=int, default=1)
    ap.add_argument("--fuzz", type=int, default=0, help="schemathesis examples per operation (0: no fuzz)")
    ap.add_argument("--soak", type=int, default=0, help="mixed requests one after another (0: no soak)")
    ap.add_argument("--hostile", action="store_true", help="oversized bodies one after another: peak and final RSS")
    ap.add_argument("--max-body-mb", type=float, default=100.0, help="the server's body cap in the hostile run")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "tests"))
    from bestshot.server import ServerSettings, create_app
    from bestshot.server.a1111 import Limits
    from bestshot.server.background import BackgroundServer

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bestshot-load-"))
    model, scorer = args.model, args.scorer
    if args.tiny:
        import tiny_models

        if not (work / "sd15" / "model_index.json").exists():
            tiny_models.build_sd15(work / "sd15")
        if not (work / "clip" / "config.json").exists():
            tiny_models.build_clip(work / "clip")
        model, scorer = str(work / "sd15"), str(work / "clip")
    out = work / "images_out"
    report: dict[str, Any] = {"model": model or "embedded"}
    if args.n:
        app = create_app(
            ServerSettings(
                model=model or "embedded",
                scorer=scorer,
                out_dir=str(out),
                curate_dir=str(work / "outputs"),
                max_queue=args.max_queue,
            )
        )
        body = {
            "prompt": "a red circle",
            "steps": args.steps,
            "width": args.size,
            "height": args.size,
            "best_of": args.best_of,
        }
        before = len(app.state.store.index.list(limit=1_000_000))  # a reused --workdir keeps older runs
        with BackgroundServer(app) as url:
            t = time.perf_counter()
            res = burst(url, args.n, body, out)
            res["wall_s"] = round(time.perf_counter() - t, 2)
            new_runs = len(app.state.store.index.list(limit=1_000_000)) - before
            served = res["tally"].get(200, 0)
            if new_runs != served:  # one generate() run per served request (batch_size 1)
                res["problems"].append(f"{new_runs} runs indexed for {served} served requests")
        report["burst"] = {k: v for k, v in res.items() if k != "files"}
        print(
            f"burst of {args.n} (max-queue {args.max_queue}): {res['tally']} in {res['wall_s']} s, "
            f"p50 {res['p50_s'] and round(res['p50_s'], 2)} s, problems: {res['problems'] or 'none'}"
        )
    if args.soak:
        app = create_app(
            ServerSettings(
                model=model or "embedded",
                scorer=scorer,
                out_dir=str(work / "soak_out"),
                curate_dir=str(work / "soak_outputs"),
                max_queue=args.max_queue,
            )
        )
        body = {"prompt": "a red circle", "steps": args.steps, "width": args.size, "height": args.size}
        with BackgroundServer(app) as url:
            t = time.perf_counter()
            res = soak(url, args.soak, body)
            res["wall_s"] = round(time.perf_counter() - t, 2)
        report["soak"] = res
        print(
            f"soak of {args.soak} mixed requests: {res['tally']} in {res['wall_s']} s; RSS "
            f"{res['rss_mib_after_first_tenth']} → {res['rss_mib_end']} MiB ({res['rss_growth_mib']:+} MiB); "
            f"server errors: {res['server_errors'] or 'none'}"
        )
    if args.hostile:
        app = create_app(
            ServerSettings(
                model=model or "embedded",
                scorer=scorer,
                out_dir=str(work / "hostile_out"),
                curate_dir=str(work / "hostile_outputs"),
                limits=Limits(max_body_mb=args.max_body_mb),
            )
        )
        with BackgroundServer(app) as url:
            res = hostile(url, args.max_body_mb)
        report["hostile"] = res
        print(
            f"hostile bodies (cap {args.max_body_mb:g} MB): RSS {res['rss_start_mib']} MiB at the start, "
            f"{res['rss_end_mib']} MiB at the end"
        )
        for r in res["attacks"]:
            print(
                f"  {r['attack']}: {r['status']} in {r['seconds']} s, peak RSS {r['peak_rss_mib']} MiB, "
                f"after {r['rss_after_mib']} MiB"
            )
    if args.fuzz:
        app = create_app(
            ServerSettings(
                model=model or "embedded",
                scorer=scorer,
                out_dir=str(work / "fuzz_out"),
                curate_dir=str(work / "fuzz_outputs"),
                max_queue=64,
                allowed_hosts=("*",),
                limits=Limits(max_steps=2, max_side=64, max_images=2, max_candidates=4),
            )
        )
        t = time.perf_counter()
        failures = fuzz(app, args.fuzz)
        report["fuzz"] = {
            "examples_per_operation": args.fuzz,
            "server_errors": failures,
            "wall_s": round(time.perf_counter() - t, 2),
        }
        print(
            f"fuzz, {args.fuzz} examples per operation: {len(failures)} server errors in "
            f"{report['fuzz']['wall_s']} s" + "".join(f"\n  {f}" for f in failures[:20])
        )
    return report


if __name__ == "__main__":
    rep = main()
    bad = (
        rep.get("burst", {}).get("problems")
        or rep.get("fuzz", {}).get("server_errors")
        or rep.get("soak", {}).get("server_errors")
    )
    sys.exit(1 if bad else 0)
