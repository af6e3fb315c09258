"""The embedded model on torch alone: its UNet, CLIP, tokenizer, image preprocessing and DDIM sampler.

``bestshot generate`` with the default model spends most of a cold start importing diffusers and
transformers (their top-level imports pull torch._dynamo, peft, scipy.stats, ...), while the model itself
is a 2M-parameter UNet and a 7M-parameter CLIP. These modules rebuild exactly the library classes the
embedded pipeline folder names, for the configurations it uses, with the same parameter names (the
folder's safetensors load as they are) and the same torch operations in the same order, so every image
and score comes out bit for bit as with diffusers/transformers (``tests/test_lite_models.py`` compares
them on the same weights). :func:`~bestshot.models.lite.pipeline.load_lite` builds the pipeline; the
loader falls back to the diffusers pipeline for whatever these do not cover (another scheduler, model
offloading, compilation, a UNet or CLIP configuration outside the supported one).
"""
