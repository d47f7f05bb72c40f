"""Token ids to text, incrementally and exactly: the text released piece by piece is, joined, the tokenizer's own
decoding of all the ids (every byte kept, a leading space included), and no piece ends inside a character.

mlx-lm's streaming detokenizers trim the first token's leading space (right for a chat reply printed in a
terminal, wrong for an API that promises the model's text) and are specific to a tokenizer family. Here the
tokenizer's `decode` is asked for a short window: the tokens since the last release, after a few already released
ones that give the decoder its context (a SentencePiece decoder treats a word's first piece differently); only
the part beyond that context's own text is new. Text ending in U+FFFD is held back until the character completes
(or the stream ends, when what the tokenizer makes of the bytes is released as it is)."""
from __future__ import annotations

REPLACEMENT = "\ufffd"
CONTEXT = 4  # released tokens kept in front of the window
MAX_HELD = 8  # tokens held back at most: a character has at most 4 bytes, so more are invalid bytes


class ExactDetokenizer:
    def __init__(self, tokenizer):
        self._decode = tokenizer.decode
        self.tokens: list[int] = []
        self.text = ""  # everything released so far
        self.offsets: list[int] = []  # where each token's text starts in `text` (a split character: its start)
        self._start = 0  # the window's first token (context)
        self._read = 0  # the first token not yet released

    def add_token(self, token: int) -> str:
        """The text that `token` completes ('' while a character or a merge is still open)."""
        self.offsets.append(len(self.text))
        self.tokens.append(int(token))
        return self._release(final=False)

    def finalize(self) -> str:
        """Whatever is still held back (an incomplete character becomes what the tokenizer makes of it)."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self._read == len(self.tokens):
            return ""
        context = self._decode(self.tokens[self._start:self._read]) if self._read > self._start else ""
        window = self._decode(self.tokens[self._start:])
        force = final or len(self.tokens) - self._read > MAX_HELD
        if not window.startswith(context):
            if not force:
                return ""  # the decoder reads the context differently with the new tokens: wait for more
            whole = self._decode(self.tokens)
            new = whole[len(self.text):] if whole.startswith(self.text) else self._decode(self.tokens[self._read:])
        elif window.endswith(REPLACEMENT) and not force:
            return ""  # a character is still open
        else:
            new = window[len(context):]
        self.text += new
        self._read = len(self.tokens)
        self._start = max(self._read - CONTEXT, 0)
        return new


def decode_with_offsets(tokenizer, tokens: list[int]) -> tuple[str, list[int]]:
    """(text, each token's offset in it) of a whole token list, as the streaming path would release them."""
    detokenizer = ExactDetokenizer(tokenizer)
    for token in tokens:
        detokenizer.add_token(token)
    detokenizer.finalize()
    return detokenizer.text, detokenizer.offsets
