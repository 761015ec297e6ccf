"""A tiny text-to-video model trained by the project: coloured shapes moving on a black background.

`data` draws the clips and captions, `text_encoder` is the learned word embedding, `model` the pixel-space Latte
transformer and noise schedule, `sampling` the CFG loop, `pipeline` the diffusers pipeline and the shipped-weights
loader, `train` the reproducible training script. See weights/MODEL_CARD.md.
"""

from pab.runtime.tinyvideo.pipeline import MODEL_NAME, WEIGHTS_DIR, TinyVideoPipeline, load_tiny_shapes, random_tiny_shapes
from pab.runtime.tinyvideo.text_encoder import WordEmbeddingTextEncoder

__all__ = ["MODEL_NAME", "WEIGHTS_DIR", "TinyVideoPipeline", "WordEmbeddingTextEncoder", "load_tiny_shapes",
           "random_tiny_shapes"]
