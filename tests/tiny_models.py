"""Tiny, randomly initialised models of the REAL classes, built from configs (the diffusers way).

Each builder writes a folder with ``save_pretrained`` so tests load it back through bestshot's own
loader exactly as they would load a hub model. Tokenizers carry the real CLIP BPE vocabulary
(built from open_clip's bundled file), so text encoders use vocab_size=49408.
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 49408


_TOKENIZERS: dict = {}


def clip_tokenizer(max_len: int = 77):
    """The real CLIP BPE tokenizer, built once per length (seconds each; a copy costs as much) and shared by
    the tiny models, which only read it and save it with their pipeline."""
    from bestshot.models.clip_tokenizer import build_clip_tokenizer

    if max_len not in _TOKENIZERS:
        _TOKENIZERS[max_len] = build_clip_tokenizer(model_max_length=max_len)
    return _TOKENIZERS[max_len]


def _text_config(**kw):
    from transformers import CLIPTextConfig

    base = dict(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=VOCAB,
        hidden_act="gelu",
        projection_dim=32,
        max_position_embeddings=77,
    )
    base.update(kw)
    return CLIPTextConfig(**base)


def _sdxl_parts(projection_dim: int, cross_attention_dim: int):
    """UNet, scheduler and VAE of a tiny SDXL (diffusers' own test configuration)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=projection_dim,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        sample_size=128,
    )
    return unet, scheduler, vae


def build_sdxl(folder: Path, seed: int = 0) -> Path:
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet, scheduler, vae = _sdxl_parts(projection_dim=80, cross_attention_dim=64)
    te = CLIPTextModel(_text_config())
    te2 = CLIPTextModelWithProjection(_text_config())
    tok = clip_tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok, unet=unet, scheduler=scheduler
    )
    pipe.save_pretrained(folder)
    return folder


def build_sdxl_refiner(folder: Path, seed: int = 1) -> Path:
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    # refiner: only the second text encoder, and the aesthetic score in the added conditioning (8 * 5 + 32)
    unet, scheduler, vae = _sdxl_parts(projection_dim=72, cross_attention_dim=32)
    te2 = CLIPTextModelWithProjection(_text_config())
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=te2,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=True,
    )
    pipe.save_pretrained(folder)
    return folder


def build_sd3(folder: Path, seed: int = 0) -> Path:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    te = CLIPTextModelWithProjection(_text_config())
    te2 = CLIPTextModelWithProjection(_text_config())
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    tok = clip_tokenizer()
    # SD 3.x can run without its T5 encoder (diffusers fills zeros); no T5 vocabulary exists offline
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tok,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(folder)
    return folder


def build_sd15(folder: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(_text_config()),
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_clip(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny transformers CLIPModel + tokenizer + image-processor config in one folder."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=_text_config().to_dict(),
        vision_config=dict(
            image_size=image_size,
            patch_size=8,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
        ),
        projection_dim=32,
    )
    CLIPModel(cfg).save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)
    return folder


def build_world(folder: Path, seed: int = 0) -> Path:
    """A tiny random BestshotWorldPipeline (the embedded model's class): pixel-space UNet + tiny CLIP."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel

    from bestshot.models.world_pipeline import BestshotWorldPipeline

    torch.manual_seed(seed)
    clip = CLIPModel(
        CLIPConfig(
            text_config=_text_config().to_dict(),
            vision_config=dict(
                image_size=16,
                patch_size=8,
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=1,
                projection_dim=32,
            ),
            projection_dim=32,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    pipe = BestshotWorldPipeline(
        unet=unet,
        scheduler=DDIMScheduler(num_train_timesteps=100),
        clip=clip.eval(),
        tokenizer=clip_tokenizer(),
        conditioning="text_tokens",
    )
    pipe.save_pretrained(folder)
    return folder


def build_train_clip(folder: Path, seed: int = 0) -> Path:
    """A small CLIP as `bestshot train clip` writes it (16-px images), for the DDPM trainer's tests."""
    from bestshot.train.clip_train import ClipTrainConfig, build_clip, build_clip_tokenizer, save_clip_folder

    cc = ClipTrainConfig(
        img_size=16,
        patch_size=4,
        vision_hidden=32,
        vision_layers=1,
        vision_heads=2,
        text_hidden=32,
        text_layers=1,
        text_heads=2,
        projection_dim=16,
        max_length=16,
    )
    torch.manual_seed(seed)
    save_clip_folder(build_clip(cc), build_clip_tokenizer(16), cc, folder)
    return Path(folder)
