"""ListOps data (Nangia & Bowman 2018, as in the Long Range Arena, Tay et al. 2021): a seeded generator
writing the LRA's files, and a reader for them (the LRA release's or the generator's).

Generator, the rules of LRA's `lra_benchmarks/data/listops.py`: operators MIN, MAX, MED (the median
truncated to an integer), SM (sum modulo 10); values 0-9. A node above the maximum depth is an operator
with probability 0.25 (LRA's VALUE_P = 0.25 is tested as `random() > VALUE_P -> value`), else a value;
at the maximum depth it is a value. An operator takes 2..max_args arguments, each drawn the same way
one level deeper (the root is at depth 1). Length = values + 2 per operator (the operator and its `]`:
the token count once parentheses are dropped); an expression is kept when min_length < length <
max_length, strictly, as LRA; every kept expression is distinct from every other, across splits.

Files: basic_train.tsv, basic_val.tsv, basic_test.tsv, tab-separated, header `Source<TAB>Target`, the
source with LRA's parentheses around every binary grouping: MAX(2, 9) is `( ( ( [MAX 2 ) 9 ) ] )`.
Each split draws from its own stream, in the order test, val, train (each kept distinct from those
before), so a test split depends only on the seed, its size and the tree settings, not on the others.

Reader: tokens as the LRA pipelines make them (parentheses dropped, split on white space) in the
vocabulary `<pad> [MIN [MAX [MED [SM ] 0 .. 9`; a malformed file is refused naming file, line, problem.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["OPERATORS", "END", "VOCAB", "PAD", "SPLITS", "FILES", "LRA_LENGTHS", "sample", "to_source",
           "generate", "Split", "tokenize", "read_split", "read_folder"]

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VOCAB = ("<pad>", *OPERATORS, END, *map(str, range(10)))  # token id = index; padding is 0
PAD = 0
SPLITS = ("train", "val", "test")
FILES = {s: f"basic_{s}.tsv" for s in SPLITS}
LRA_LENGTHS = (500, 2000)  # the LRA's kept lengths (exclusive bounds)
OPERATOR_P = 0.25  # probability that a node above the maximum depth is an operator



def _median(v) -> int:
    """The median truncated to an integer (LRA: int(np.median(v))): the mean of the middle two, floored."""
    s, m = sorted(v), len(v) // 2
    return s[m] if len(v) % 2 else (s[m - 1] + s[m]) // 2


_APPLY = {"[MIN": min, "[MAX": max, "[MED": _median, "[SM": lambda v: sum(v) % 10}


# ------------------------------------------------------------------------------ generator
def sample(rnd: random.Random, max_depth: int = 10, max_args: int = 10, depth: int = 1):
    """One expression tree: (node, value, length); node is an int 0-9 or (operator, [children]).
    Only rnd.random() is drawn, so a seed gives the same trees on every Python version."""
    if depth >= max_depth or rnd.random() >= OPERATOR_P:
        v = int(rnd.random() * 10)
        return v, v, 1
    n_args = 2 + int(rnd.random() * (max_args - 1))
    kids, values, length = [], [], 2
    for _ in range(n_args):
        node, value, n = sample(rnd, max_depth, max_args, depth + 1)
        kids.append(node)
        values.append(value)
        length += n
    op = OPERATORS[int(rnd.random() * 4)]
    return (op, kids), _APPLY[op](values), length


def to_source(node) -> str:
    """The LRA text of a tree: op(a1..ak) is `( `*(k+1) op a1 ) a2 ) .. ak ) ] )`."""
    parts: list[str] = []
    _write(node, parts)
    return " ".join(parts)


def _write(node, parts):
    if isinstance(node, int):
        parts.append(str(node))
        return
    op, kids = node
    parts.extend(["("] * (len(kids) + 1))
    parts.append(op)
    for kid in kids:
        _write(kid, parts)
        parts.append(")")
    parts.extend([END, ")"])


def _split_rng(seed: int, split: str) -> random.Random:
    return random.Random(f"listops-{seed}-{split}")  # str seeds are hashed (sha512): stable everywhere


def _check_settings(counts, lengths, max_depth, max_args):
    for split, n in counts.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{split}: expected a number of examples >= 0, got {n!r}")
    for split, (lo, hi) in lengths.items():
        if not 0 <= lo < hi - 1:
            raise ValueError(f"{split} lengths: expected 0 <= min_length < max_length - 1 (kept: min < length < "
                             f"max), got min_length {lo}, max_length {hi}")
    if max_depth < 2 or max_args < 2:
        raise ValueError(f"max_depth and max_args must be >= 2, got {max_depth} and {max_args}")


def generate(out, *, train: int = 96_000, val: int = 2_000, test: int = 2_000, min_length: int = 500,
             max_length: int = 2_000, max_depth: int = 10, max_args: int = 10, seed: int = 0,
             train_lengths: tuple[int, int] | None = None, progress: bool = True) -> dict[str, Path]:
    """Write basic_{train,val,test}.tsv into folder `out` (created); {split: path}. `train_lengths`
    (min, max) gives the train split other lengths than val and test. Each file is written under a
    temporary name and renamed when complete, so a file under its final name is always whole."""
    from tqdm.auto import tqdm

    counts = {"test": test, "val": val, "train": train}
    lengths = {s: (min_length, max_length) for s in counts}
    if train_lengths is not None:
        lengths["train"] = tuple(train_lengths)
    _check_settings(counts, lengths, max_depth, max_args)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seen: set[bytes] = set()  # digests of every kept expression, all splits
    paths = {}
    with tqdm(total=sum(counts.values()), desc="ListOps", unit="expr", disable=not progress) as bar:
        for split in ("test", "val", "train"):
            paths[split] = _write_split(out / FILES[split], _split_rng(seed, split), counts[split], lengths[split],
                                        max_depth, max_args, seen, bar)
    return {s: paths[s] for s in SPLITS}


def _write_split(path, rnd, n, lengths, max_depth, max_args, seen, bar) -> Path:
    lo, hi = lengths
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "w", newline="", encoding="ascii") as f:
            w = csv.writer(f, delimiter="\t")  # as LRA's writer: \r\n line ends
            w.writerow(["Source", "Target"])
            kept = 0
            while kept < n:
                node, value, length = sample(rnd, max_depth, max_args)
                if not lo < length < hi:
                    continue
                source = to_source(node)
                digest = hashlib.blake2b(source.encode(), digest_size=16).digest()
                if digest in seen:
                    continue
                seen.add(digest)
                w.writerow([source, value])
                kept += 1
                bar.update(1)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ------------------------------------------------------------------------------ reader
@dataclass
class Split:
    """A split as token ids: example i is tokens[offsets[i]:offsets[i + 1]], its class labels[i]."""

    tokens: np.ndarray   # (total,) int8, every example's tokens one after another
    offsets: np.ndarray  # (n + 1,) int64
    labels: np.ndarray   # (n,) int64, 0-9
    source: str = ""     # the file it was read from

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def pad(self, idx, reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(x (len(idx), longest) int64 padded with PAD at the end, lengths (len(idx),) int64); with
        `reverse` each example's tokens are in reverse order (last token first), padding still at the end."""
        idx = np.asarray(idx)
        lengths = self.lengths[idx]
        x = np.full((len(idx), int(lengths.max(initial=1))), PAD, np.int64)
        for row, (i, n) in enumerate(zip(idx, lengths, strict=True)):
            tokens = self.tokens[self.offsets[i]:self.offsets[i] + n]
            x[row, :n] = tokens[::-1] if reverse else tokens
        return x, lengths.astype(np.int64)


# single-byte stand-ins (control characters) for the multi-character tokens: then one byte per token
_STANDINS = "\x01\x02\x03\x04\x05"
_SHORT = tuple(zip((*OPERATORS, END), _STANDINS, strict=True))
_LUT = np.full(256, 255, np.uint8)
for _i, _c in enumerate(_STANDINS):
    _LUT[ord(_c)] = 1 + _i
for _d in range(10):
    _LUT[ord(str(_d))] = 6 + _d
_NO_PARENS = str.maketrans("", "", "()")
_OPEN = np.zeros(len(VOCAB), np.int64)
_OPEN[1:5], _OPEN[5] = 1, -1  # depth change per token: operators open, ] closes


def tokenize(source: str) -> np.ndarray:
    """Token ids (int8) of an LRA source: parentheses dropped, split on white space. A ValueError names
    the first token outside the vocabulary, or a `]` with no open operator / an operator left open."""
    words = source.translate(_NO_PARENS).split()
    if not words:
        raise ValueError("empty source (no tokens once parentheses are dropped)")
    s = " ".join(words)
    if any(c in s for c in _STANDINS):
        ids = None
    else:
        for long, short in _SHORT:
            s = s.replace(long, short)
        raw = np.frombuffer(s.encode("ascii", "replace"), np.uint8)
        ids = _LUT[raw[0::2]]  # every token one byte, one space between: else a word is not a token
        if len(raw) != 2 * len(words) - 1 or (ids == 255).any():
            ids = None
    if ids is None:
        bad = next(w for w in words if w not in VOCAB[1:])
        raise ValueError(f"unknown token {bad!r} (expected one of {' '.join(VOCAB[1:])}, and parentheses)")
    depth = np.cumsum(_OPEN[ids])
    if depth.min() < 0:
        raise ValueError(f"token {int(np.argmax(depth < 0)) + 1} is a ']' with no open operator")
    if depth[-1] != 0:
        raise ValueError(f"{int(depth[-1])} operator(s) left open (no closing ']')")
    if len(ids) > 1 and depth[:-1].min() == 0:
        raise ValueError(f"the expression ends at token {int(np.argmax(depth == 0)) + 1} and more tokens follow")
    return ids.astype(np.int8)


def read_split(path) -> Split:
    """An LRA ListOps TSV file (header `Source<TAB>Target`, then one expression and its value 0-9 a line)
    as a Split. A malformed file is refused: ValueError `FILE, line N: problem`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected an LRA ListOps file {'/'.join(FILES.values())})")
    chunks, labels = [], []
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.rstrip("\r\n").split("\t")
            if line_no == 1:
                if fields != ["Source", "Target"]:
                    raise ValueError(f"{path}, line 1: the header is {line.rstrip()!r}, expected 'Source<TAB>Target'")
                continue
            if fields == [""]:
                continue  # a blank line (a trailing newline)
            chunks.append(_row(path, line_no, fields))
            labels.append(int(fields[1]))
    if not labels:
        raise ValueError(f"{path}: no examples after the header")
    lengths = np.array([len(c) for c in chunks], np.int64)
    return Split(np.concatenate(chunks), np.concatenate([[0], np.cumsum(lengths)]),
                 np.array(labels, np.int64), str(path))


def _row(path, line_no, fields) -> np.ndarray:
    if len(fields) != 2:
        raise ValueError(f"{path}, line {line_no}: {len(fields)} tab-separated fields, expected 2 (source, target)")
    if fields[1].strip() not in tuple(map(str, range(10))):
        raise ValueError(f"{path}, line {line_no}: target {fields[1]!r}, expected a digit 0-9")
    try:
        return tokenize(fields[0])
    except ValueError as e:
        raise ValueError(f"{path}, line {line_no}: {e}") from None


def read_folder(folder, splits=SPLITS) -> dict[str, Split]:
    """{split: Split} of the basic_<split>.tsv files in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected one holding {', '.join(FILES.values())})")
    return {s: read_split(folder / FILES[s]) for s in splits}
