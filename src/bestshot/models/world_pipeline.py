"""``BestshotWorldPipeline``: a pixel-space diffusion pipeline conditioned on a (small) CLIP.

Why a custom pipeline: bestshot's embedded model has no VAE (it works on 32x32 pixels) and uses one CLIP
both to condition the UNet and to rank candidates, so it does not fit StableDiffusionPipeline. It is still
an ordinary ``diffusers.DiffusionPipeline`` (save_pretrained / from_pretrained / any scheduler), so the
loader treats it like a hub model.

Conditioning (``conditioning`` in model_index.json):
- ``text_tokens``: cross-attention on the CLIP text tower's last_hidden_state; if the UNet has a
  projection class embedding it also receives the normalised projected (pooled) text embedding.
- ``text_embed`` / ``image_embed``: the seed document's scheme — the UNet sees only the normalised
  projected CLIP embedding (as one cross-attention token, and as class embedding when present). With
  ``image_embed`` it was trained on image embeddings and is sampled from text embeddings.
The unconditional branch of classifier-free guidance is the empty prompt (or ``negative_prompt``).

Spatial guidance (``spatial_guidance_scale``, in model_index.json; 0 = off): the pipeline's CLIP pools
relations away, and the denoiser draws "A left of B" the wrong way round as often as not. For prompts
that state a relation, every step but the last nudges the sample up the gradient of the relation
agreement that :mod:`bestshot.models.maskclip` reads from the predicted clean image (the scheduler's, or
computed from the model's prediction for multistep solvers that do not report it; CLIP guidance, as in
the seed document's CLIP-guided DDPM, on MaskCLIP patch embeddings): ``x_{t-1} += scale *
sqrt(alpha_bar_{t-1}) * grad_x0 agreement``. ``spatial_guidance_end`` (a fraction of the steps, like
diffusers' ``control_guidance_end``) stops it early: the layout is settled in the first steps, and each
guided step costs a backward pass through the CLIP's image tower. ``spatial_guidance_every`` = k steers
only every k-th of those steps (the first, the (k+1)-th, ...), for 1/k of that cost.

Batch invariance: on CPU an image comes out the same to the last bit alone or in a batch of any size
(``batch_invariant``), so best-of-N need not re-render its pick for the seed to reproduce it. The pipeline
recomputes the products whose rows are the batch so that a row sums the same at any row count
(:mod:`.batch_invariance`), encodes each distinct prompt and relation phrase once, unpadded by its
neighbours, and the guidance's sums are plain reductions.
"""

from __future__ import annotations

from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from transformers import CLIPModel, CLIPTokenizer

from .batch_invariance import rowwise_linears
from .world_sampling import CONDITIONINGS, DEFAULTS, WorldSampling, check_guidance  # noqa: F401 - re-exported


class BestshotWorldPipeline(WorldSampling, DiffusionPipeline):
    model_cpu_offload_seq = "clip->unet"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler,
        clip: CLIPModel,
        tokenizer: CLIPTokenizer,
        conditioning: str = "text_tokens",
        spatial_guidance_scale: float = 0.0,
        spatial_guidance_end: float = 1.0,
        spatial_guidance_every: int = 1,
    ):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        check_guidance(spatial_guidance_scale, spatial_guidance_end, spatial_guidance_every)
        self.register_modules(unet=unet, scheduler=scheduler, clip=clip, tokenizer=tokenizer)
        rowwise_linears(unet, clip)  # each image the same alone or in a batch (see batch_invariance)
        self.register_to_config(
            conditioning=conditioning,
            spatial_guidance_scale=float(spatial_guidance_scale),
            spatial_guidance_end=float(spatial_guidance_end),
            spatial_guidance_every=int(spatial_guidance_every),
        )

    def _output(self, images):
        return ImagePipelineOutput(images=images)
