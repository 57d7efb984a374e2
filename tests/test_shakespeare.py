"""Character-level Shakespeare: data (split, vocabulary, checksum, offline error), step mode = parallel
forward (conv state included), `mincore train --task shakespeare` and `mincore generate` via CliRunner.

Uses the tiny-shakespeare corpus where one is found (see `corpus`), else a small generated text;
never the network."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mincore.cli.main import main
from mincore.tasks import cache_dir
from mincore.tasks import shakespeare as S


def corpus() -> Path | None:
    """tiny-shakespeare for the tests that need the real text: $MINCORE_SHAKESPEARE, else a data folder
    shared beside the repository, else the per-user cache where `mincore train` keeps it."""
    found = [Path(p) for p in (os.environ.get("MINCORE_SHAKESPEARE"),
                               Path(__file__).resolve().parents[1].parent / "shared" / "data" / S.CORPUS_NAME,
                               cache_dir() / S.CORPUS_NAME) if p and Path(p).is_file()]
    return found[0] if found else None


CORPUS = corpus()
NO_CORPUS = ("tiny-shakespeare corpus not found: set MINCORE_SHAKESPEARE=PATH (or run `mincore train --task "
             "shakespeare` once, which caches it)")
WORDS = "the king and queen of England shall speak now to thee my lord ROMEO: JULIET, what say you?".split()


def small_text(n_lines=300, seed=0) -> str:
    rng = np.random.default_rng(seed)
    return "\n".join(" ".join(rng.choice(WORDS, 8)) for _ in range(n_lines)) + "\n"


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "small.txt"
    p.write_text(small_text(), encoding="utf-8")
    return p


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty per-user cache and no network: urlopen always fails."""
    def refuse(*a, **k):
        raise urllib.error.URLError("network is unreachable (test)")
    monkeypatch.setenv("MINCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_vocab_round_trip_and_split():
    text = small_text()
    v = S.Vocab(text)
    assert v.chars == "".join(sorted(set(text))) and len(v) == len(set(text))
    ids = v.encode(text)
    assert ids.dtype == np.int64 and v.decode(ids) == text
    train, test = S.split(ids)
    assert len(train) == int(0.9 * len(ids)) and np.array_equal(np.concatenate([train, test]), ids)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        v.encode("~")


@pytest.mark.skipif(CORPUS is None, reason=NO_CORPUS)
def test_tiny_shakespeare_as_nanogpt():
    text = S.load_text(CORPUS)
    v = S.Vocab(text)
    train, test = S.split(v.encode(text))
    assert (len(text), len(v), len(train), len(test)) == (1115394, 65, 1003854, 111540)


def test_checksum_refuses_a_wrong_file(tmp_path, monkeypatch):
    cached = tmp_path / S.CORPUS_NAME
    cached.write_text("not shakespeare\n")
    with pytest.raises(ValueError, match="checksum mismatch"):
        S.corpus_path(cache=cached)

    class Wrong:  # a "download" with the wrong bytes is refused and never cached
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return b"wrong bytes"
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Wrong())
    fresh = tmp_path / "fresh" / S.CORPUS_NAME
    with pytest.raises(ValueError, match="failed the checksum"):
        S.corpus_path(cache=fresh)
    assert not fresh.exists()


@pytest.mark.skipif(CORPUS is None, reason=NO_CORPUS)
def test_download_is_verified_and_cached_once(tmp_path, monkeypatch):
    calls = []

    class Body:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return CORPUS.read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, **k: calls.append(url) or Body())
    monkeypatch.setenv("MINCORE_CACHE", str(tmp_path))
    p = S.corpus_path()
    assert p == tmp_path / S.CORPUS_NAME and p.read_bytes() == CORPUS.read_bytes()
    assert S.corpus_path() == p and calls == [S.CORPUS_URL]


def test_offline_without_a_file_is_one_line_error(offline):
    with pytest.raises(RuntimeError, match="--data PATH") as e:
        S.corpus_path()
    assert "\n" not in str(e.value)
    r = CliRunner().invoke(main, ["train", "--task", "shakespeare", "--steps", "1", "--quiet"])
    assert r.exit_code != 0 and "could not be downloaded" in r.output and "--data PATH" in r.output
    assert "Traceback" not in r.output


def tiny_cfg(**kw):
    return S.config("default", **{**dict(d_model=16, n_layers=2, context=32, mlp_mult=2, eval_chunk=700), **kw})


def test_step_mode_equals_parallel_forward_float64():
    """After a prefix, the next-character distribution of the recurrent step mode (from scratch, and
    after a parallel prompt pass as generate does) equals the parallel forward's at the last position."""
    task = S.ShakespeareTask(tiny_cfg(), text=small_text())
    model = task.model.to(dtype=np.float64).eval()
    prefix = task.test_ids[:23]

    def softmax(z):
        z = np.asarray(z.data, np.float64)
        p = np.exp(z - z.max(-1, keepdims=True))
        return p / p.sum(-1, keepdims=True)
    logits, _ = model(prefix[None])
    want = softmax(logits)[0]
    state = None
    for i, tok in enumerate(prefix):
        out, state = model.step(np.array([tok]), state)
        np.testing.assert_allclose(softmax(out)[0], want[i], rtol=1e-10, atol=1e-12)
    for split in (1, 2, 3, 10):  # prompt shorter than, equal to and longer than the conv's K - 1 = 3
        _, state = model(prefix[None, :split])
        for i in range(split, len(prefix)):
            out, state = model.step(np.array([prefix[i]]), state)
        np.testing.assert_allclose(softmax(out)[0], want[-1], rtol=1e-10, atol=1e-12)


def test_stateful_chunks_equal_one_pass_and_window_loss_counts_every_character():
    task = S.ShakespeareTask(tiny_cfg(), text=small_text())
    task.model.eval()
    one = S.ShakespeareTask(tiny_cfg(eval_chunk=10**6), text=small_text())
    one.model.load_state_dict(task.model.state_dict())
    one.model.eval()
    assert abs(task.stateful_loss() - one.stateful_loss()) < 1e-5
    x, y = task.test_ids[:-1], task.test_ids[1:]
    T, total = task.cfg.context, 0.0
    for i in range(0, len(x), T):
        logits, _ = task.model(x[None, i:i + T])
        z = logits.data[0].astype(np.float64)
        lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
        total += float((lse - z[np.arange(len(z)), y[i:i + T]]).sum())
    assert abs(task.window_loss() - total / len(y)) < 1e-5


def test_train_and_generate_through_the_cli(tmp_path, text_file, monkeypatch):
    monkeypatch.setitem(S.PRESETS, "default", tiny_cfg())
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--task", "shakespeare", "--steps", "2", "--eval-every", "2",
                                  "--batch-size", "4", "--data", str(text_file), "--out", str(out), "--quiet"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "held-out loss" in r.output and "(loss" not in r.output  # the metric is the loss: said once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["vocab"] == S.Vocab(small_text()).chars
    assert np.isfinite(summary["loss"]) and np.isfinite(summary["stateful_loss"])
    assert (out / "learning_curve.png").stat().st_size > 0
    ck = str(out / "checkpoint.h5")
    args = ["generate", "--checkpoint", ck, "--prompt", "ROMEO:", "--tokens", "40", "--top-k", "5"]
    runs = [CliRunner().invoke(main, args + ["--seed", s], catch_exceptions=False) for s in ("1", "1", "2")]
    assert all(r.exit_code == 0 for r in runs), runs[0].output
    texts = [r.output.split("\n[")[0] for r in runs]
    assert texts[0] == texts[1] and texts[0].startswith("ROMEO:") and len(texts[0]) == len("ROMEO:") + 40
    assert texts[0] != texts[2]
    assert "tokens/s" in runs[0].output
    bad = CliRunner().invoke(main, args[:3] + ["--prompt", "~~"])
    assert bad.exit_code != 0 and "not in the vocabulary" in bad.output


def _one_error_line(r, *needles):
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_resume_and_eval_verify_the_text_and_eval_takes_a_moved_one(tmp_path, text_file, monkeypatch):
    """The run keeps its text's sha256: a changed text is refused by --resume and eval (file, both
    digests, what to do); a moved one is found with --data, and must be the same text."""
    monkeypatch.setitem(S.PRESETS, "default", tiny_cfg())
    out = tmp_path / "run"
    train = ["train", "--task", "shakespeare", "--steps", "2", "--eval-every", "2", "--batch-size", "4", "--quiet",
             "--out", str(out)]
    assert CliRunner().invoke(main, [*train, "--data", str(text_file)]).exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    good = text_file.read_bytes()
    want, ck = S.sha256(good)[:12], str(out / "checkpoint.h5")

    text_file.write_bytes(good.replace(b"king", b"kind"))  # same characters, other text
    got = S.sha256(text_file.read_bytes())[:12]
    resume = ["train", "--task", "shakespeare", "--out", str(out), "--resume", "--quiet"]
    _one_error_line(CliRunner().invoke(main, resume), str(text_file), want, got, "--data PATH", "--out")
    _one_error_line(CliRunner().invoke(main, ["eval", "--checkpoint", ck]), str(text_file), want, got,
                    "--data PATH")

    moved = tmp_path / "moved.txt"
    moved.write_bytes(good)
    text_file.unlink()
    _one_error_line(CliRunner().invoke(main, ["eval", "--checkpoint", ck]), str(text_file), "does not exist",
                    "--data PATH")
    r = CliRunner().invoke(main, ["eval", "--checkpoint", ck, "--data", str(moved), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["loss"] == summary["loss"]
    r = CliRunner().invoke(main, [*resume, "--data", str(moved)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "summary.json").read_text())["data"] == str(moved)


def test_sampling_refuses_non_finite_temperatures_and_survives_tiny_ones():
    rng = np.random.default_rng(0)
    assert S._sample(np.array([0.0, 1.0, 2.0]), rng, 1e-320, None) == 2  # (z - max) / T: no inf - inf
    assert S._sample(np.array([0.0, 5.0, 2.0]), rng, 1e-300, 2) == 1
    task = S.ShakespeareTask(tiny_cfg(), text=small_text())
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="temperature"):
            next(S.generate(task.model.eval(), task.vocab, "the", 3, temperature=bad))


def test_a_downloaded_corpus_gets_the_mode_the_umask_gives(tmp_path):
    """The download is written atomically (temporary file + rename) with the umask's mode, not 0600."""
    src = corpus()
    if src is None:
        pytest.skip(NO_CORPUS)
    old = os.umask(0o022)
    try:
        p = S.corpus_path(url=src.resolve().as_uri(), cache=tmp_path)
    finally:
        os.umask(old)
    assert p.read_bytes() == src.read_bytes()
    assert p.stat().st_mode & 0o777 == 0o644
    assert [q.name for q in tmp_path.iterdir()] == [p.name]


def test_default_preset_shape():
    """The default: 4,096 characters per step as 16 windows of 256 (test windows as long), dropout on
    (without it the 0.71M-parameter model overfits the 1M training characters), and a last
    evaluation that falls on the last step (eval_every divides steps: no extra evaluation)."""
    d = S.PRESETS["default"]
    d.validate()
    assert (d.d_model, d.n_layers, d.context, d.batch_size) == (128, 3, 256, 16)
    assert d.dropout > 0 and d.steps % d.eval_every == 0 and d.steps // d.eval_every <= 4
