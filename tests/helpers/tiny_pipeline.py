"""A tiny Stable Diffusion pipeline with random weights, built from configs, offline.

It draws noise, not pictures, but it has every part of a real ``StableDiffusionPipeline``
(UNet, VAE, CLIP text encoder and tokenizer, scheduler) and loads through the same
``from_pretrained`` code path, in well under a second on a CPU. The tokenizer is made from a
character vocabulary written here, so nothing comes from the Hugging Face hub.

    python tests/helpers/tiny_pipeline.py FOLDER
"""

from __future__ import annotations

import json
import string
import sys
import tempfile
from pathlib import Path

SAMPLE_SIZE = 8  # latent pixels: 64x64 images by default (the VAE scales by 8)


def build(folder: Path, seed: int = 0) -> Path:
    """Write a tiny pipeline into ``folder`` (created if needed) and return it."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=16,
    )
    # Four blocks: the VAE scales by 2 ** (blocks - 1) = 8, as Stable Diffusion's does.
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=16,
        layers_per_block=1,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=1000,
            max_position_embeddings=77,
            bos_token_id=0,  # <|startoftext|> and <|endoftext|> in the vocabulary below
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,  # 0 draws a deprecation warning from diffusers
    )
    with tempfile.TemporaryDirectory() as scratch:
        pipe = StableDiffusionPipeline(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=_tokenizer(Path(scratch), CLIPTokenizer),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(folder)
    return folder


def _tokenizer(scratch: Path, cls: type) -> object:
    """A CLIP tokenizer over single characters: a vocab.json and a merges.txt with no merges."""
    symbols = ["<|startoftext|>", "<|endoftext|>", *string.ascii_lowercase, *string.digits]
    symbols += [c + "</w>" for c in string.ascii_lowercase + string.digits]
    (scratch / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    (scratch / "merges.txt").write_text("#version: 0.2\n")
    # Without model_max_length the tokenizer pads to a huge default and overflows.
    return cls(str(scratch / "vocab.json"), str(scratch / "merges.txt"), model_max_length=77)


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
