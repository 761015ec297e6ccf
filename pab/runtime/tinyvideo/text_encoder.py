"""The tiny model's text encoder: a learned word embedding over a closed vocabulary.

The captions use fourteen words, so a transformer text encoder would only add parameters; a lookup table plus a
position embedding is enough for cross-attention to find the colour, shape and direction words. It is a diffusers
`ModelMixin`, so it saves and loads with `save_pretrained` / `from_pretrained` like the transformer.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from pab.runtime.request.params import prompt_words
from pab.runtime.tinyvideo.data import COLOURS, DIRECTIONS, SHAPES

PAD, UNK = "<pad>", "<unk>"
DEFAULT_VOCAB: tuple[str, ...] = (PAD, UNK, "a", "moving", *COLOURS, *SHAPES, *DIRECTIONS)


class WordEmbeddingTextEncoder(ModelMixin, ConfigMixin):
    """Maps captions to [B, max_length, embed_dim]; the empty caption (all padding) is the CFG null condition."""

    @register_to_config
    def __init__(self, vocab: list[str] | tuple[str, ...] = DEFAULT_VOCAB, embed_dim: int = 64, max_length: int = 6):
        super().__init__()
        if len(set(vocab)) != len(vocab) or vocab[0] != PAD or vocab[1] != UNK:
            raise ValueError(f"vocab must be unique words starting with {PAD!r}, {UNK!r}; got {list(vocab)[:3]}...")
        self.index = {w: i for i, w in enumerate(vocab)}
        self.word = nn.Embedding(len(vocab), embed_dim)
        self.position = nn.Parameter(torch.zeros(max_length, embed_dim))
        nn.init.normal_(self.word.weight, std=1.0)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Word ids [B, max_length]; unknown words map to <unk>, captions longer than max_length are cut."""
        n = self.config.max_length
        ids = torch.zeros(len(captions), n, dtype=torch.long)
        for row, text in enumerate(captions):
            words = prompt_words(text)[:n]
            ids[row, : len(words)] = torch.tensor([self.index.get(w, 1) for w in words], dtype=torch.long)
        return ids

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in prompt_words(text) if w not in self.index]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word(input_ids.to(self.word.weight.device)) + self.position

    def encode(self, captions: list[str]) -> torch.Tensor:
        return self(self.tokenize(captions))
