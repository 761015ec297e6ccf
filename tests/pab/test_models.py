"""Every supported model family through the PAB checks of `model_mixin`: its tiny real-architecture transformer
(`PABModelTesterMixin`, fed inputs shaped the way its diffusers pipeline does: latent layout, text, masks, RoPE, CFG
passes) and its tiny pipeline through `VideoGenerator` (`PABPipelineTesterMixin`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from diffusers import AllegroPipeline

from pab.runtime.models import tiny

from .model_mixin import PABModelTesterMixin, PABPipelineTesterMixin

TEXT_LEN = 6

def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _text(batch: int, seed: int, length: int = TEXT_LEN) -> torch.Tensor:
    return _randn(batch, length, tiny.TEXT_DIM, seed=seed)


def _text_mask(batch: int, length: int = TEXT_LEN) -> torch.Tensor:
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[:, -2:] = 0  # padded prompt tokens, as the pipelines' tokenizers produce
    return mask


class TestLatte(PABModelTesterMixin, PABPipelineTesterMixin):
    model = "tiny-latte"
    build_transformer = staticmethod(tiny.tiny_latte_transformer)
    expected_modules = {"spatial": 2, "temporal": 2, "cross": 2, "mlp": 4}

    def make_inputs(self, batch: int, text_seed: int) -> dict[str, Any]:
        return {"hidden_states": _randn(batch, 4, tiny.LATTE_FRAMES, 8, 8, seed=0),
                "encoder_hidden_states": _text(batch, text_seed, 5)}


class TestCogVideoX(PABModelTesterMixin, PABPipelineTesterMixin):
    model = "tiny-cogvideox"
    build_transformer = staticmethod(tiny.tiny_cogvideox_transformer)
    expected_modules = {"spatial": 2, "mlp": 2}

    def make_inputs(self, batch: int, text_seed: int) -> dict[str, Any]:  # [B, F, C, H, W]; text of the table's length
        return {"hidden_states": _randn(batch, 3, 4, 8, 8, seed=0), "encoder_hidden_states": _text(batch, text_seed, 16)}


class TestWan(PABModelTesterMixin, PABPipelineTesterMixin):
    model = "tiny-wan"
    build_transformer = staticmethod(tiny.tiny_wan_transformer)
    expected_modules = {"spatial": 2, "cross": 2, "mlp": 2}
    cfg_contexts = ("cond", "uncond")

    def make_inputs(self, batch: int, text_seed: int) -> dict[str, Any]:
        return {"hidden_states": _randn(batch, 4, 3, 4, 4, seed=0), "encoder_hidden_states": _text(batch, text_seed)}


class TestHunyuanVideo(PABModelTesterMixin, PABPipelineTesterMixin):
    model = "tiny-hunyuan"
    build_transformer = staticmethod(tiny.tiny_hunyuan_transformer)
    expected_modules = {"spatial": 4, "mlp": 2}  # 2 dual-stream + 2 single-stream joint attentions
    cfg_contexts = ("cond", "uncond")  # true CFG (true_cfg_scale > 1); distilled guidance runs "cond" only

    def make_inputs(self, batch: int, text_seed: int) -> dict[str, Any]:
        return {"hidden_states": _randn(batch, 4, 3, 4, 4, seed=0), "encoder_hidden_states": _text(batch, text_seed),
                "encoder_attention_mask": _text_mask(batch), "pooled_projections": _randn(batch, 32, seed=text_seed),
                "guidance": torch.full((batch,), 6000.0)}


class TestAllegro(PABModelTesterMixin, PABPipelineTesterMixin):
    model = "tiny-allegro"
    build_transformer = staticmethod(tiny.tiny_allegro_transformer)
    expected_modules = {"spatial": 2, "cross": 2, "mlp": 2}

    def make_inputs(self, batch: int, text_seed: int) -> dict[str, Any]:
        frames, size = 3, 8
        transformer = tiny.tiny_allegro_transformer()  # only its config is read: the pipeline's 3D RoPE tables
        rope = AllegroPipeline._prepare_rotary_positional_embeddings(
            SimpleNamespace(vae_scale_factor_spatial=1, transformer=transformer), batch, size, size, frames, "cpu")
        return {"hidden_states": _randn(batch, 4, frames, size, size, seed=0), "encoder_hidden_states": _text(batch, text_seed),
                "encoder_attention_mask": _text_mask(batch), "image_rotary_emb": rope}


class TestMochi(PABModelTesterMixin, PABPipelineTesterMixin):
    model = "tiny-mochi"
    build_transformer = staticmethod(tiny.tiny_mochi_transformer)
    expected_modules = {"spatial": 2, "mlp": 2}
    cfg_contexts = ("cond_uncond",)

    def make_inputs(self, batch: int, text_seed: int) -> dict[str, Any]:
        return {"hidden_states": _randn(batch, 12, 2, 4, 4, seed=0), "encoder_hidden_states": _text(batch, text_seed),
                "encoder_attention_mask": _text_mask(batch)}

    # everything that counts steps; PAB off and the unhooked pipeline agree already


class TestLTXVideo(PABModelTesterMixin, PABPipelineTesterMixin):
    model = "tiny-ltx"
    build_transformer = staticmethod(tiny.tiny_ltx_transformer)
    expected_modules = {"spatial": 2, "cross": 2, "mlp": 2}
    cfg_contexts = ("cond_uncond",)

    def make_inputs(self, batch: int, text_seed: int) -> dict[str, Any]:  # patchified tokens [B, F*H*W, C]
        frames, size = 3, 4
        return {"hidden_states": _randn(batch, frames * size * size, 8, seed=0),
                "encoder_hidden_states": _text(batch, text_seed), "encoder_attention_mask": _text_mask(batch),
                "num_frames": frames, "height": size, "width": size}


class TestWanI2V(TestWan):
    """Wan 2.1 image-to-video: 12 input channels (latents, first-frame mask, encoded reference video) and CLIP
    image tokens beside the text in every cross-attention (diffusers splits them off by assuming 512 text tokens)."""

    model = "tiny-wan-i2v"
    image_to_video = True
    build_transformer = staticmethod(lambda seed=0: tiny.tiny_wan_i2v_pipeline(seed).transformer)

    def make_inputs(self, batch: int, text_seed: int) -> dict[str, Any]:
        return {"hidden_states": _randn(batch, 12, 3, 4, 4, seed=0),
                "encoder_hidden_states": _text(batch, text_seed, tiny.WAN_I2V_TEXT_TOKENS),
                "encoder_hidden_states_image": _randn(batch, 5, tiny.IMAGE_DIM, seed=9)}


class TestCogVideoXI2V(TestCogVideoX):
    """CogVideoX image-to-video: the reference latent concatenated on channels (8 in, 4 out)."""

    model = "tiny-cogvideox-i2v"
    image_to_video = True
    build_transformer = staticmethod(lambda seed=0: tiny.tiny_cogvideox_transformer(seed, in_channels=8))

    def make_inputs(self, batch: int, text_seed: int) -> dict[str, Any]:
        return {"hidden_states": _randn(batch, 3, 8, 8, 8, seed=0), "encoder_hidden_states": _text(batch, text_seed, 16)}


class TestLTXVideoI2V(TestLTXVideo):
    """LTX-Video image-to-video: one timestep per token, 0 on the reference frame's tokens (PAB reads the
    largest, the step's noise level)."""

    model = "tiny-ltx-i2v"
    image_to_video = True

    def timestep_input(self, inputs: dict[str, Any], batch: int, t: float) -> torch.Tensor:
        per_frame = inputs["height"] * inputs["width"]
        timestep = torch.full((batch, inputs["num_frames"] * per_frame), t)
        timestep[:, :per_frame] = 0.0
        return timestep


class TestWan22(PABPipelineTesterMixin):
    """The two-expert Wan 2.2 layout: both experts hooked, each counting its own steps (transformers as TestWan)."""

    model = "tiny-wan22"
