"""A tiny random Llama with a real BPE tokenizer and chat template, for tests and quick benches."""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ("<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_WORDS_TEXT = (
    "the a an and or but if then so because of to in on at by for with from as is are was were be "
    "been have has had do does did can could will would should may might must not no yes you your "
    "i me my we our they them their he she it its this that these those what which who how why "
    "when where here there all any some many much more most few less one two three four five ten "
    "sorry cannot help assist request unable provide information harmful safe please thank thanks "
    "sure certainly answer question explain write story poem code list step steps example make "
    "build learn teach tell show give take find use need want like know think say ask work time "
    "day year people world life water food home school book music game city country friend "
    "family health money help policy guideline illegal dangerous weapon advice instead here's "
    "hello hi assistant user system okay fine good great bad new old big small first last "
    "placeholder answer reply sample text token word sentence paragraph fixed alpha beta gamma"
)


def _corpus() -> list[str]:
    """Deterministic training text: the word list in several arrangements plus character runs."""
    words = _WORDS_TEXT.split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [" ".join(reversed(words[i : i + 9])) for i in range(0, len(words), 9)]
    lines += [w.capitalize() + "." for w in words]
    lines.append("0123456789 .,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`")
    lines.append("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return lines


def build_tiny_tokenizer(vocab_size: int = 1024):  # -> PreTrainedTokenizerFast
    """Train a small byte-level BPE and wrap it with the chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(out_dir: Path, seed: int = 0) -> Path:
    """Save a deterministic tiny LlamaForCausalLM (hidden 64, 2 layers) with its tokenizer."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        # vLLM's CPU attention supports head sizes 32, 64, 80, ... but not hidden/heads = 16
        head_dim=32,
        max_position_embeddings=512,
        # a wider init than 0.02 gives peaked logits, so greedy decoding has no near-ties
        initializer_range=0.1,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
