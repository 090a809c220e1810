"""bitmos.model: the binarized Mixture-of-Scales transformer, its float teacher, and their training.

Modules, small to large:

* :mod:`bitmos.model.config` -- :class:`ModelConfig`, the one dataclass every module takes.
* :mod:`bitmos.model.quant` -- :func:`quantize_per_token`, the activation quantizer (hardware contract).
* :mod:`bitmos.model.binarize` -- binarized linear layers for every scheme (sign, fbi, onebit, bitnet, pb, mos, ternary).
* :mod:`bitmos.model.transformer` -- the LLaMA-style decoder (:class:`Transformer`).
* :mod:`bitmos.model.checkpoint` -- safetensors checkpoints with an embedded JSON config.
* :mod:`bitmos.model.data` -- tokenizers, the built-in offline corpus, batch sampling.
* :mod:`bitmos.model.distill`, :mod:`bitmos.model.train` -- losses and training loops (single process or DDP).
* :mod:`bitmos.model.hf`, :mod:`bitmos.model.gguf` -- pretrained LLaMA-family models in (Hugging Face folders,
  GGUF files) with their own tokenizers.
* :mod:`bitmos.model.cli` -- ``bitmos train | distill | eval | generate | export``.
"""

from bitmos.model.config import SCHEMES, ModelConfig  # noqa: F401  (re-exported)
