"""Character-level text data: the tiny-shakespeare corpus (cached download verified by sha256) or any
UTF-8 text, a character vocabulary, and nanoGPT's 90/10 split. No network is touched unless the corpus
is neither given (`data`) nor cached."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import numpy as np

from . import cache_dir  # the per-user cache: re-exported, the corpus is cached at its top

__all__ = ["CORPUS_URL", "CORPUS_SHA256", "CORPUS_NAME", "cache_dir", "sha256", "corpus_path", "load_text",
           "Vocab", "split"]

CORPUS_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CORPUS_NAME = "tinyshakespeare.txt"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def corpus_path(data=None, *, url: str = CORPUS_URL, cache: Path | None = None, timeout: float = 30.0) -> Path:
    """`data` when given; else the cached tiny-shakespeare, downloaded once from `url` and verified
    against CORPUS_SHA256 (a wrong file is refused, never used)."""
    if data is not None:
        p = Path(data).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"--data {data}: no such file")
        return p
    p = Path(cache) if cache is not None else cache_dir() / CORPUS_NAME
    if p.is_dir():
        p = p / CORPUS_NAME
    how = (f"download {url} yourself and pass --data PATH (or save it as {p}); "
           f"expected sha256 {CORPUS_SHA256}")
    if p.exists():
        if sha256(p.read_bytes()) != CORPUS_SHA256:
            raise ValueError(f"{p}: checksum mismatch (not tiny-shakespeare, or damaged); delete it or {how}")
        return p
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=timeout) as r:
            raw = r.read()
    except (OSError, ValueError) as e:  # URLError is an OSError; offline, DNS, refused, bad URL
        raise RuntimeError(f"tiny-shakespeare is not cached and could not be downloaded ({e}); {how}") from None
    if sha256(raw) != CORPUS_SHA256:
        raise ValueError(f"download from {url} failed the checksum (sha256 {sha256(raw)}); refusing it; {how}")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".download-{secrets.token_hex(8)}"
    # os.open with 0o666: the file gets the umask's mode like any other (mkstemp's 0600 did not)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
        f.write(raw)
    os.replace(tmp, p)  # atomic: a broken download never sits under the final name
    return p


def load_text(data=None, **kw) -> str:
    p = corpus_path(data, **kw)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text ({e})") from None


class Vocab:
    """Characters <-> ids: id = position in the sorted character set."""

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self):
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        missing = sorted(set(text) - set(self.index))
        if missing:
            raise ValueError(f"characters not in the vocabulary: {''.join(missing)!r}")
        return np.fromiter((self.index[c] for c in text), np.int64, len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def split(ids: np.ndarray, train_fraction: float = 0.9):
    """nanoGPT's split: the first 90% train, the last 10% test."""
    n = int(len(ids) * train_fraction)
    return ids[:n], ids[n:]
