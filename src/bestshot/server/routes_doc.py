"""docs/API.md: the table of every route the app serves, next to AUTOMATIC1111's (built from the app, so a
test can regenerate it and compare; run ``python -m bestshot.server.routes_doc > docs/API.md``)."""

from __future__ import annotations

from typing import Any

# A1111's API routes (modules/api/api.py, 1.10; /loras and /refresh-loras come with its built-in Lora
# extension, /sd-modules with Forge, /internal/ping with the web UI) and what A1111 does there
A1111_ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/sdapi/v1/txt2img"): "text to image",
    ("POST", "/sdapi/v1/img2img"): "image to image, inpainting",
    ("POST", "/sdapi/v1/extra-single-image"): "upscale one image",
    ("POST", "/sdapi/v1/extra-batch-images"): "upscale images",
    ("POST", "/sdapi/v1/png-info"): "read an image's infotext",
    ("GET", "/sdapi/v1/progress"): "progress, live preview",
    ("POST", "/sdapi/v1/interrogate"): "caption an image",
    ("POST", "/sdapi/v1/interrupt"): "stop the running job",
    ("POST", "/sdapi/v1/skip"): "skip the current batch (one n_iter)",
    ("GET", "/sdapi/v1/options"): "settings",
    ("POST", "/sdapi/v1/options"): "change settings",
    ("GET", "/sdapi/v1/cmd-flags"): "command-line flags",
    ("GET", "/sdapi/v1/samplers"): "samplers",
    ("GET", "/sdapi/v1/schedulers"): "schedule types",
    ("GET", "/sdapi/v1/upscalers"): "upscalers",
    ("GET", "/sdapi/v1/latent-upscale-modes"): "latent upscale modes",
    ("GET", "/sdapi/v1/sd-models"): "checkpoints",
    ("GET", "/sdapi/v1/sd-vae"): "VAEs",
    ("GET", "/sdapi/v1/sd-modules"): "Forge: extra modules",
    ("GET", "/sdapi/v1/hypernetworks"): "hypernetworks",
    ("GET", "/sdapi/v1/face-restorers"): "face restorers",
    ("GET", "/sdapi/v1/realesrgan-models"): "Real-ESRGAN models",
    ("GET", "/sdapi/v1/prompt-styles"): "saved styles",
    ("GET", "/sdapi/v1/embeddings"): "textual inversions",
    ("GET", "/sdapi/v1/loras"): "LoRAs",
    ("POST", "/sdapi/v1/refresh-loras"): "rescan LoRAs",
    ("POST", "/sdapi/v1/refresh-checkpoints"): "rescan checkpoints",
    ("POST", "/sdapi/v1/refresh-vae"): "rescan VAEs",
    ("POST", "/sdapi/v1/refresh-embeddings"): "rescan embeddings",
    ("GET", "/sdapi/v1/memory"): "RAM and CUDA memory",
    ("POST", "/sdapi/v1/unload-checkpoint"): "free the model",
    ("POST", "/sdapi/v1/reload-checkpoint"): "load it again",
    ("GET", "/sdapi/v1/scripts"): "script names",
    ("GET", "/sdapi/v1/script-info"): "script arguments",
    ("GET", "/sdapi/v1/extensions"): "installed extensions",
    ("POST", "/sdapi/v1/create/embedding"): "train: new embedding",
    ("POST", "/sdapi/v1/create/hypernetwork"): "train: new hypernetwork",
    ("POST", "/sdapi/v1/train/embedding"): "train an embedding",
    ("POST", "/sdapi/v1/train/hypernetwork"): "train a hypernetwork",
    ("POST", "/sdapi/v1/server-kill"): "stop the server (--api-server-stop)",
    ("POST", "/sdapi/v1/server-restart"): "restart (--api-server-stop)",
    ("POST", "/sdapi/v1/server-stop"): "stop (--api-server-stop)",
    ("GET", "/internal/ping"): "liveness probe",
    ("POST", "/internal/progress"): "the web UI's progress poll",
    ("GET", "/internal/sysinfo"): "system information",
    ("GET", "/config"): "the Gradio UI's config",
    ("GET", "/controlnet/version"): "sd-webui-controlnet extension: its API version",
    ("GET", "/controlnet/model_list"): "sd-webui-controlnet extension: ControlNet models",
    ("GET", "/controlnet/module_list"): "sd-webui-controlnet extension: preprocessors",
}

# Request fields beyond the core ones that bestshot honours (one line each; appended to docs/API.md)
HONOURED_FIELDS = (
    "`alwayson_scripts.controlnet.args` (txt2img): sd-webui-controlnet units `{enabled, module, model, weight, image "
    "| input_image, resize_mode, threshold_a, threshold_b, guidance_start, guidance_end, control_mode}`; models are "
    "the diffusers ControlNet folders in `serve --controlnet-dir` (default models/ControlNet beside --out-dir), "
    "modules the weight-free ones of GET /controlnet/module_list; control_mode other than Balanced, processor_res "
    "and pixel_perfect are not honoured (info.bestshot.controlnet says so). An `ip-adapter*` unit runs the "
    "IP-Adapter weights file of that name in the same folder (its image encoder in `image_encoder/` beside it). "
    "SD 1.x / SDXL models only; elsewhere the units are named in info.bestshot.ignored.",
    "`subseed`, `subseed_strength` (txt2img): A1111's variation seeds (image i: seed + i, subseed + i), echoed in "
    "info and the PNG's `Variation seed` / `Variation seed strength`.",
    "`override_settings.sd_vae`: a VAE of GET /sdapi/v1/sd-vae (`serve --vae-dir`, default models/VAE beside "
    "--out-dir) for this request; Automatic / None: the model's own.",
    "`serve --safety-checker MODEL`: flagged candidates are never returned or saved (an image with no clean "
    "candidate comes back black, as diffusers answers); info.bestshot.nsfw_flagged counts them.",
    "`bestshot_search` (txt2img, bestshot's own): each image's `best_of` candidates are spent as a search over "
    "noises (`--search`); info.bestshot.runs[].search says what it kept and branched. `/v1/generate` takes "
    "`search`, `search_pool`, `search_at`, `search_branches`, `search_keep_noise`.",
    "`bestshot_repair` (txt2img with best_of >= 2, bestshot's own): after ranking, the objects the scorer reads as "
    "right in the best candidate are kept and the rest repainted (`--repair`, needs a `+regions` scorer); "
    "info.bestshot.runs[].repair lists each round. `/v1/generate` takes `repair`, `repair_tries`, `repair_rounds`.",
)


def routes(app: Any) -> dict[tuple[str, str], str]:
    """(METHOD, path) → a one-line description, from the app's OpenAPI schema (its docstrings)."""
    out: dict[tuple[str, str], str] = {}
    for path, ops in app.openapi().get("paths", {}).items():
        for method, op in ops.items():
            text = ((op.get("description") or "").strip().split("\n")[0] or op.get("summary") or "").strip()
            out[(method.upper(), path)] = text.replace("|", "\\|")
    return out


def route_table(app: Any) -> str:
    """Markdown: every route of the app and of A1111, what each does in both (``—``: not there)."""
    ours = routes(app)
    keys = sorted(
        set(ours) | set(A1111_ROUTES),
        key=lambda k: (not k[1].startswith("/sdapi"), not k[1].startswith("/internal"), k[1], k[0]),
    )
    lines = [
        "# bestshot serve: routes",
        "",
        "Generated from the app by `python -m bestshot.server.routes_doc > docs/API.md`; "
        "tests/test_server_routes_doc.py fails when this file and the app disagree.",
        "",
        "Every AUTOMATIC1111 route a client calls answers in A1111's shape; where bestshot has no such feature "
        "it answers what A1111 answers without it (an empty list, null). `—`: the route does not exist there.",
        "",
        "Prompt features honoured on txt2img and img2img (and `/v1/generate`):",
        "",
        "- LoRA: `<lora:name:weight>` / `<lyco:...>` in the prompt (a file of the LoRA folder, listed by "
        "`GET /sdapi/v1/loras`; `/v1/generate` also takes `loras`); an unknown name is a 422 naming `prompt`.",
        "- Prompt weighting and long prompts: `(word:1.3)`, `(word)`, `[word]`, `\\(`, `BREAK`; prompts over 77 "
        "tokens are encoded in chunks (SD 1.x/2.x, SDXL).",
        "- Clip skip: `override_settings.CLIP_stop_at_last_layers` (`/v1/generate`: `clip_skip`).",
        "- Textual-inversion embeddings: a prompt naming a file of the embeddings folder (`GET /sdapi/v1/embeddings`).",
        "- Region-steered sampling (txt2img and `/v1/generate`; SD 1.x, SDXL, embedded): `bestshot_regions` "
        '(`/v1/generate`: `regions`) `auto`, `off` or a layout object `{"objects": [{"phrase", "box"}]}`; '
        "the run's `regions` record (`info.bestshot.regions`) names the layout used or why none; img2img lists it "
        "in `info.bestshot.ignored`.",
        "",
        "| route | A1111 | bestshot |",
        "|---|---|---|",
    ]
    for m, p in keys:
        lines.append(f"| `{m} {p}` | {A1111_ROUTES.get((m, p), '—')} | {ours.get((m, p), '—')} |")
    missing = [f"`{m} {p}`" for m, p in keys if (m, p) in A1111_ROUTES and (m, p) not in ours]
    lines += [
        "",
        "A1111 routes bestshot does not serve (training and server control; none of the clients in "
        "tests/fixtures/clients calls them): " + (", ".join(missing) if missing else "none") + ".",
        "",
        "## Request fields honoured beyond the basics",
        "",
        *(f"- {line}" for line in HONOURED_FIELDS),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:  # pragma: no cover - a tiny CLI
    import sys
    import tempfile

    from .app import create_app

    with tempfile.TemporaryDirectory() as d:
        sys.stdout.write(route_table(create_app(out_dir=d)))


if __name__ == "__main__":
    main()
