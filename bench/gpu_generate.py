"""Best-of-N speed: bestshot's generate path beside plain diffusers, same process, same weights.

Builds the real SDXL / SD 3.5 Large / SD 1.5 architectures with RANDOM weights (speed does not depend on
weight values), saves them once, and times:

* plain diffusers, per-seed loop (the design document's way);
* plain diffusers, one batched call with a generator per seed;
* bestshot ``generate`` (loader + batched candidates + CLIP ViT-L/14 scoring + store).

Reports seconds per best-of-N, UNet/transformer ms per step, VAE decode ms, CLIP scoring ms, peak GPU
memory, and the ratio to the FLOP floor (denoiser FLOPs x steps / measured matmul peak).

    python bench/gpu_generate.py --family sdxl                # H100: 1024², 30 steps, best of 4
    python bench/gpu_generate.py --family sdxl --tiny         # CPU smoke run (what CI executes)

Without CUDA it always runs the tiny configs so the script keeps working.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _text_cfg(hidden, layers, heads, inter, act, proj):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        hidden_act=act,
        projection_dim=proj,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def build_full(family: str, folder: Path, dtype: torch.dtype | None = None) -> None:
    """Real architecture, random weights (saved in ``dtype`` when given, as a hub fp16 variant would be)."""
    import diffusers as d
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from tiny_models import clip_tokenizer

    tok = clip_tokenizer()
    vae_kw = dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
    )
    te_l = _text_cfg(768, 12, 12, 3072, "quick_gelu", 768)
    te_g = _text_cfg(1280, 32, 20, 5120, "gelu", 1280)
    if family == "sdxl":
        unet = d.UNet2DConditionModel(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        sched = d.EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        )
        vae = d.AutoencoderKL(latent_channels=4, sample_size=1024, scaling_factor=0.13025, force_upcast=True, **vae_kw)
        pipe = d.StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(te_l),
            tokenizer=tok,
            text_encoder_2=CLIPTextModelWithProjection(te_g),
            tokenizer_2=tok,
            unet=unet,
            scheduler=sched,
        )
    elif family == "sd3":
        from transformers import T5Config, T5EncoderModel

        tr = d.SD3Transformer2DModel(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            num_layers=38,
            attention_head_dim=64,
            num_attention_heads=38,
            joint_attention_dim=4096,
            caption_projection_dim=2432,
            pooled_projection_dim=2048,
            out_channels=16,
            pos_embed_max_size=192,
            qk_norm="rms_norm",
        )
        vae = d.AutoencoderKL(
            latent_channels=16,
            sample_size=1024,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
            **vae_kw,
        )
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=32128,
                d_model=4096,
                d_kv=64,
                d_ff=10240,
                num_layers=24,
                num_heads=64,
                feed_forward_proj="gated-gelu",
            )
        )
        del t5  # no T5 tokenizer offline: SD 3.5 runs without T5 (diffusers pads zeros); time it that way
        pipe = d.StableDiffusion3Pipeline(
            transformer=tr,
            scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=vae,
            text_encoder=CLIPTextModelWithProjection(te_l),
            tokenizer=tok,
            text_encoder_2=CLIPTextModelWithProjection(te_g),
            tokenizer_2=tok,
            text_encoder_3=None,
            tokenizer_3=None,
        )
    else:
        unet = d.UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = d.AutoencoderKL(latent_channels=4, sample_size=512, **vae_kw)
        pipe = d.StableDiffusionPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(te_l),
            tokenizer=tok,
            unet=unet,
            scheduler=d.EulerDiscreteScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
            ),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if dtype is not None:
        pipe.to(dtype)
    pipe.save_pretrained(folder)


def build_clip_l14(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from tiny_models import clip_tokenizer

    cfg = CLIPConfig(
        text_config=_text_cfg(768, 12, 12, 3072, "quick_gelu", 768).to_dict(),
        vision_config=dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            patch_size=14,
            image_size=224,
            projection_dim=768,
            hidden_act="quick_gelu",
        ),
        projection_dim=768,
    )
    CLIPModel(cfg).save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)
    CLIPImageProcessorPil().save_pretrained(folder)


def timed(fn, repeats=2):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["sdxl", "sd3", "sd15"], default="sdxl")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="tiny configs (forced without CUDA)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="measured dense bf16 peak (H100: 790)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    tiny = args.tiny or not cuda
    steps = args.steps or (2 if tiny else {"sdxl": 30, "sd3": 28, "sd15": 30}[args.family])
    size = args.size or (64 if tiny else {"sdxl": 1024, "sd3": 1024, "sd15": 512}[args.family])
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bestshot-bench-"))
    model_dir, clip_dir = work / f"{args.family}{'_tiny' if tiny else ''}", work / f"clip{'_tiny' if tiny else ''}"
    if not (model_dir / "model_index.json").exists():
        import tiny_models

        (getattr(tiny_models, f"build_{args.family}") if tiny else lambda f: build_full(args.family, f))(model_dir)
    if not (clip_dir / "config.json").exists():
        (tiny_models_build_clip if tiny else build_clip_l14)(clip_dir)

    from bestshot.generation import generate
    from bestshot.models.loader import load_pipeline

    dev = "cuda" if cuda else "cpu"
    pipe = load_pipeline(str(model_dir), device=dev)
    seeds = list(range(42, 42 + args.n))

    def plain(batched: bool):
        def run():
            if batched:
                pipe(
                    prompt="a lighthouse at dusk",
                    num_inference_steps=steps,
                    height=size,
                    width=size,
                    num_images_per_prompt=len(seeds),
                    generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                )
            else:
                for s in seeds:
                    pipe(
                        prompt="a lighthouse at dusk",
                        num_inference_steps=steps,
                        height=size,
                        width=size,
                        generator=torch.Generator("cpu").manual_seed(s),
                    )

        return run

    out = work / "out"
    res = {}

    def ours():
        res["r"] = generate(
            "a lighthouse at dusk",
            model=str(model_dir),
            scorer=str(clip_dir),
            n_images=args.n,
            steps_base=steps,
            height=size,
            width=size,
            clip_min=-1,
            device=dev,
            style_suffix="",
            negative_prompt="",
            out_dir=str(out),
            log_jsonl=str(out / "log.jsonl"),
            exact_best=False,
        )

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rows = {
        "plain per-seed loop": timed(plain(False), 1),
        "plain batched": timed(plain(True)),
        "bestshot generate": timed(ours),
    }
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    step_ms, flops = denoiser_step(pipe, seeds, steps, size)
    vae_ms = vae_decode_ms(pipe, len(seeds), size)
    r = res["r"]
    floor = flops * steps / (args.peak_tflops * 1e12)
    print(f"\n{args.family} {'tiny ' if tiny else ''}{size}x{size}, {steps} steps, best of {args.n}, device {dev}")
    print("| path | seconds per best-of-N |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.3f} |")
    print(
        f"denoiser: {step_ms:.1f} ms/step at batch {2 * len(seeds)} (CFG), {flops / 1e12:.2f} TFLOP/step; "
        f"VAE decode {vae_ms:.1f} ms; CLIP scoring {1000 * r['timing_s']['clip']:.1f} ms; "
        f"peak GPU memory {peak:.2f} GiB"
    )
    print(
        f"FLOP floor at {args.peak_tflops:.0f} TFLOP/s: {floor:.3f} s for {steps} steps; "
        f"bestshot end to end is {floor / rows['bestshot generate']:.0%} of the floor"
    )
    print(f"bestshot timing_s: {json.dumps(r['timing_s'])}")


def denoiser_step(pipe, seeds, steps, size):
    """(median ms per denoising step from step callbacks, FLOPs of one denoiser forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    den_name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    den = getattr(pipe, den_name)
    orig, counted, stamps = den.forward, {}, []

    def fwd(*a, **k):
        if "flops" not in counted:
            with FlopCounterMode(display=False) as fc:
                out = orig(*a, **k)
            counted["flops"] = fc.get_total_flops()
            return out
        return orig(*a, **k)

    def cb(p, i, t, kw):
        _sync()
        stamps.append(time.perf_counter())
        return kw

    den.forward = fwd
    try:
        pipe(
            prompt="a lighthouse",
            num_inference_steps=2,
            height=size,
            width=size,
            num_images_per_prompt=len(seeds),
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        )
        pipe(
            prompt="a lighthouse",
            num_inference_steps=steps,
            height=size,
            width=size,
            num_images_per_prompt=len(seeds),
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            callback_on_step_end=cb,
        )
    finally:
        den.forward = orig
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:])) or [float("nan")]
    return 1000 * gaps[len(gaps) // 2], counted.get("flops", 0)


def vae_decode_ms(pipe, n, size):
    vae = pipe.vae
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    lat = torch.randn(n, vae.config.latent_channels, size // f, size // f, device=vae.device, dtype=vae.dtype)
    with torch.no_grad():
        return 1000 * timed(lambda: vae.decode(lat))


def tiny_models_build_clip(folder):
    import tiny_models

    tiny_models.build_clip(folder)


if __name__ == "__main__":
    main()
