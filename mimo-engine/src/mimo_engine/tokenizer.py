"""The model's tokenizer, rebuilt from the GGUF vocabulary and merges with the `tokenizers` library, and its chat
template rendered with jinja2 as Hugging Face renders it."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from gguf import GGUFReader
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from mimo_engine.gguf_model import UnsupportedModelError, metadata

CONTROL, USER_DEFINED = 3, 4  # GGUF token types (gguf.TokenType)
# Qwen2's split pattern, as in its tokenizer.json: single digits, letters with one leading non-letter, and so on
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Control tokens that end a turn besides the GGUF's eos (llama.cpp's end-of-generation list)
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def _pre_tokenizer(pre: str) -> tuple[Any, Any]:
    """(normalizer, pre-tokenizer) of a GGUF `tokenizer.ggml.pre` name."""
    if pre == "smollm":  # StarCoder style: every digit alone, then GPT-2's byte-level split
        return None, pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    if pre == "qwen2":
        return normalizers.NFC(), pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    raise UnsupportedModelError(f"GGUF pre-tokenizer {pre!r} is not supported (supported: smollm, qwen2)")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: the byte each vocabulary character stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = (b for b in range(256) if b not in printable)
    mapping = {chr(b): b for b in printable}
    mapping.update({chr(256 + i): b for i, b in enumerate(shifted)})
    return mapping


BYTE_OF_CHAR = _byte_level_alphabet()


class Tokenizer:
    """Byte-level BPE tokenizer and chat template of one GGUF model."""

    def __init__(
        self, tokens: list[str], merges: list[str], token_types: list[int], pre: str,
        eos_id: int, bos_id: int | None, chat_template: str | None,
    ) -> None:  # fmt: skip
        normalizer, pre_tokenizer = _pre_tokenizer(pre)
        backend = BackendTokenizer(
            models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ", 1)) for m in merges])
        )
        if normalizer is not None:
            backend.normalizer = normalizer
        backend.pre_tokenizer = pre_tokenizer
        backend.decoder = decoders.ByteLevel()
        added = [
            AddedToken(text, special=kind == CONTROL, normalized=False)
            for text, kind in zip(tokens, token_types)
            if kind in (CONTROL, USER_DEFINED)
        ]
        backend.add_tokens(added)
        self._backend = backend
        self._plain = BackendTokenizer.from_str(backend.to_str())  # control tokens in text stay plain text
        self._plain.encode_special_tokens = True
        self._tokens = tokens
        control_ids = {i for i, kind in enumerate(token_types) if kind == CONTROL}
        self._added_ids = control_ids | {i for i, kind in enumerate(token_types) if kind == USER_DEFINED}
        self._control_texts = [tokens[i] for i in sorted(control_ids)]
        self.eos_ids = {eos_id} | {i for i in control_ids if tokens[i] in END_OF_TURN}
        self.vocab_size = len(tokens)
        self._template_tokens = {"eos_token": tokens[eos_id], "bos_token": tokens[bos_id] if bos_id is not None else ""}
        self._template = _compile_template(chat_template) if chat_template else None

    @classmethod
    def from_gguf(cls, reader: GGUFReader) -> Tokenizer:
        """The tokenizer described by a GGUF file's `tokenizer.*` metadata."""
        model = metadata(reader, "tokenizer.ggml.model")
        if model != "gpt2":
            raise UnsupportedModelError(f"GGUF tokenizer model {model!r} is not supported (supported: gpt2, byte BPE)")
        return cls(
            tokens=metadata(reader, "tokenizer.ggml.tokens"),
            merges=metadata(reader, "tokenizer.ggml.merges"),
            token_types=metadata(reader, "tokenizer.ggml.token_type"),
            pre=metadata(reader, "tokenizer.ggml.pre", "default"),
            eos_id=int(metadata(reader, "tokenizer.ggml.eos_token_id")),
            bos_id=metadata(reader, "tokenizer.ggml.bos_token_id", None),
            chat_template=metadata(reader, "tokenizer.chat_template", None),
        )

    def to_json(self) -> str:
        """The tokenizer as a Hugging Face tokenizer.json (control tokens special, no token added around a text)."""
        return self._backend.to_str()

    def same_vocabulary(self, other: Tokenizer) -> bool:
        """Whether `other` maps every token id to the same token (a draft model must, to propose the target's ids)."""
        return self._tokens == other._tokens

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Token ids of `text`; with allow_special=False a control token's text is tokenized as ordinary text."""
        # The batch call releases the GIL (a single encode holds it), so a server thread encoding a long text leaves
        # the event loop free
        (encoding,) = (self._backend if allow_special else self._plain).encode_batch([text], add_special_tokens=False)
        return encoding.ids

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """The text of token ids (control tokens included unless skip_special)."""
        (text,) = self._backend.decode_batch([list(ids)], skip_special_tokens=skip_special)  # releases the GIL
        return text

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes of one token (a piece of a UTF-8 character for some)."""
        text = self._tokens[token_id]
        if token_id in self._added_ids:
            return text.encode()
        return bytes(BYTE_OF_CHAR[c] for c in text)

    def token_text(self, token_id: int) -> str:
        """One token as text, for logprobs entries; bytes that are not whole UTF-8 characters show as U+FFFD."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation, rendered with the model's own chat template."""
        if self._template is None:
            raise UnsupportedModelError("this GGUF has no tokenizer.chat_template")
        return self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, tools=None, **self._template_tokens
        )

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation's prompt, ready for the assistant's turn. Message text is tokenized as text:
        `<|im_end|>` typed in a message stays characters, so it cannot close the turn or open another."""
        rendered = self.render_chat(messages)
        if not any(control in m["content"] for m in messages for control in self._control_texts):
            return self.encode(rendered)  # the common case: token for token what the template alone gives
        # Render again with a random mark for each message's text, then tokenize the template's pieces with their
        # control tokens and each message's text without
        marks = {f"<mimo-message-{secrets.token_hex(16)}>": m["content"] for m in messages}
        skeleton = self.render_chat([{**m, "content": mark} for m, mark in zip(messages, marks)])
        pieces = re.split(f"({'|'.join(marks)})", skeleton)
        if any(skeleton.count(mark) != 1 for mark in marks) or "".join(marks.get(p, p) for p in pieces) != rendered:
            raise ValueError("a message holds control-token text, and this model's chat template does not keep "
                             "message text verbatim, so it cannot be kept apart from the template's control tokens")
        return [i for p in pieces for i in (self.encode(marks[p], False) if p in marks else self.encode(p))]


def _raise(message: str) -> None:
    raise TemplateError(message)


def _compile_template(source: str):
    # The same environment as transformers' apply_chat_template, so that templates render identically
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    return env.from_string(source)
