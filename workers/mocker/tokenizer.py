"""The mocker's own small byte-level BPE tokenizer and chat template, built deterministically in code."""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|image|>", "<|end|>"]
BOS, EOS, IMAGE = "<|bos|>", "<|eos|>", "<|image|>"
VOCAB_SIZE = 800

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>"
    "{{ ' ' ~ message['name'] if message['name'] is defined else '' }}\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS = """the of and to in is was for on are with as at be by this have from or one had not but what all were when we
there can an your which their said if do will each about how up out them then she many some so these would other into has
more her two like him see time could no make than first been its who now people my made over did down only way find use may
water long little very after words called just where most know get through back much go good new write our me man too any
day same right look think also around another came come work three word must because does part even place well such here
take why things help put years different away again off went old number great tell men say small every found still between
name should home big give air line set own under read last never us left end along while might next sound below saw
something thought both few those always looked show large often together asked house world going want school important
until form food keep children feet land side without boy once animals life enough took sometimes four head above kind began
almost live page got earth need far hand high year mother light parts country father let night following picture being study
second eyes soon times story boys since white days ever paper hard near sentence better best across during today others
however sure means knew try told young miles sun ways thing whole hear example heard several change answer room sea against
top turned learn point city play toward five using himself usually cat dog red blue green mesh token cache router diffusion""".split()


@lru_cache(maxsize=1)
def build_tokenizer() -> Tokenizer:
    """Train (deterministically) the byte-level BPE on the built-in word list; ~0.1 s, cached per process."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(_WORDS[i : i + 12]) for i in range(0, len(_WORDS), 3)] * 3
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


@lru_cache(maxsize=1)
def word_token_ids() -> tuple[int, ...]:
    """Ids of whole-word tokens with a leading space ('Ġword'), the mocker's output alphabet."""
    vocab = build_tokenizer().get_vocab()
    return tuple(sorted(i for t, i in vocab.items() if t.startswith("Ġ") and t[1:].isalpha() and len(t) > 2))
