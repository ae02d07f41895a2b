"""An offline byte-level BPE tokenizer in the Qwen2 format, and tiny Qwen text encoders built on it.

The tokenizer is a real ``Qwen2Tokenizer`` (Qwen's pre-tokenizer regex, byte-level BPE, ``<|im_start|>`` /
``<|im_end|>`` special tokens) whose merges are trained in code on the most frequent CLIP words and on the
Qwen-Image prompt template, so the template's system prefix tokenizes into the same 34 tokens as with Qwen's own
vocabulary (Qwen-Image drops exactly those 34 hidden states). A Qwen3-style chat template (with
``enable_thinking``) is set for FLUX.2 [klein].
"""

from __future__ import annotations

import functools
import json

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer

from flowalign.models.tokenizers import clip_vocab_and_merges

#: Qwen2's pre-tokenizer regex (as in transformers' Qwen2Tokenizer)
QWEN_PRETOKENIZE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                    r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
#: the words of Qwen-Image's system prompt (trained in so its prefix is 34 tokens, as with Qwen's vocabulary)
TEMPLATE_TEXT = ("system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
                 "relationships of the objects and background:\nuser\nassistant\n<think>\n\n</think>\n\n")
#: Qwen3's chat template reduced to what text-to-image pipelines use (user turns, generation prompt, thinking off)
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


@functools.lru_cache(maxsize=1)
def _trained_vocab_and_merges(num_words: int = 3000) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab, _ = clip_vocab_and_merges()
    ranked = sorted(vocab.items(), key=lambda item: item[1])
    words = [tok[: -len("</w>")] for tok, rank in ranked
             if rank >= 512 and tok.endswith("</w>") and tok[: -len("</w>")].isalpha()][:num_words]
    corpus = [TEMPLATE_TEXT] * 50 + [" ".join(words)] * 3 + [" " + w.capitalize() for w in words[:500]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=8000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return dict(model["vocab"]), merges


def build_qwen_tokenizer(model_max_length: int = 32768) -> Qwen2Tokenizer:
    """A Qwen2 byte-level BPE tokenizer (≈5k entries), pad = eos = ``<|endoftext|>``, with a chat template."""
    vocab, merges = _trained_vocab_and_merges()
    tokenizer = Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
    tokenizer.add_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS[1:]])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_qwen25_vl_encoder(seed: int, vocab_size: int, hidden_size: int = 16, num_layers: int = 2):
    """A tiny ``Qwen2_5_VLForConditionalGeneration`` (Qwen-Image's text encoder class), float32, eval mode."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
                     "num_hidden_layers": num_layers, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "vocab_size": vocab_size, "rope_theta": 1000000.0, "bos_token_id": 0, "eos_token_id": 0,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": hidden_size},
        vocab_size=vocab_size, bos_token_id=0, eos_token_id=0,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwen3_encoder(seed: int, vocab_size: int, hidden_size: int = 16, num_layers: int = 3):
    """A tiny ``Qwen3ForCausalLM`` (FLUX.2 [klein]'s text encoder class), float32, eval mode."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=1024, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return Qwen3ForCausalLM(config).eval()
