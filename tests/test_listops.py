"""ListOps: the generator (labels against a separate evaluator, lengths, seeds, LRA format), the reader
(round trip, malformed files refused), the task (model, pooling, parameter groups, presets) and
`mincore listops generate` / `mincore train --task listops` through the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import numpy as np
import pytest
from click.testing import CliRunner

from mincore.autograd import as_tensor, optim
from mincore.cli.main import main
from mincore.tasks import listops as L
from mincore.tasks import listops_data as D


def evaluate_source(source: str) -> int:
    """The value of an LRA ListOps source, by a stack over its tokens (parentheses ignored): written
    apart from the generator, which computes values while it draws the tree."""
    stack, result = [], None
    for tok in source.replace("(", " ").replace(")", " ").split():
        if tok.startswith("["):
            stack.append((tok, []))
        elif tok == "]":
            op, args = stack.pop()
            value = {"[MIN": min(args), "[MAX": max(args), "[MED": int(np.median(args)),
                     "[SM": sum(args) % 10}[op]
            (stack[-1][1].append(value) if stack else None)
            result = value
        else:
            stack[-1][1].append(int(tok)) if stack else None
            result = int(tok) if not stack else result
    assert not stack
    return result


def rows(path):
    with open(path, newline="", encoding="ascii") as f:
        lines = f.read().split("\r\n")
    assert lines[0] == "Source\tTarget" and lines[-1] == ""  # LRA's csv writer: \r\n line ends
    return [line.split("\t") for line in lines[1:-1]]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Generated files of short expressions: 300 train, 40 val, 60 test."""
    out = tmp_path_factory.mktemp("listops")
    D.generate(out, train=300, val=40, test=60, min_length=10, max_length=80, max_depth=6, max_args=5, seed=3,
               progress=False)
    return out


# ------------------------------------------------------------------------------ generator
def test_every_label_is_the_value_of_its_expression_and_lengths_are_in_range(small):
    for split, n in (("train", 300), ("val", 40), ("test", 60)):
        got = rows(small / D.FILES[split])
        assert len(got) == n
        for source, target in got:
            assert int(target) == evaluate_source(source), source
            tokens = source.replace("(", " ").replace(")", " ").split()
            assert 10 < len(tokens) < 80
            assert source.count("(") == source.count(")")


def test_the_generator_follows_the_lra_rules():
    """LRA lengths: values + 2 per operator, strictly inside (500, 2000); operators at most 10 arguments;
    no operator deeper than max_depth - 1; every expression distinct."""
    import random

    rnd = random.Random(0)
    for _ in range(300):
        node, value, length = D.sample(rnd)
        source = D.to_source(node)
        tokens = source.replace("(", " ").replace(")", " ").split()
        assert len(tokens) == length and value == evaluate_source(source)
        depth = top = 0
        for tok in tokens:
            depth += tok.startswith("[")
            top = max(top, depth)
            depth -= tok == "]"
        assert top <= 9
    assert D.to_source(("[MAX", [2, 9])) == "( ( ( [MAX 2 ) 9 ) ] )"  # the LRA's parentheses


def test_seeded_reproducible_and_distinct(tmp_path):
    kw = dict(train=50, val=10, test=10, min_length=5, max_length=40, max_depth=5, max_args=4, progress=False)
    a, b, c = (D.generate(tmp_path / d, seed=s, **kw) for d, s in (("a", 1), ("b", 1), ("c", 2)))
    for split in D.SPLITS:
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].read_bytes() != c[split].read_bytes()
    sources = [s for split in D.SPLITS for s, _ in rows(a[split])]
    assert len(set(sources)) == len(sources) == 70
    # the test split depends only on the seed, its size and the tree settings
    d = D.generate(tmp_path / "d", seed=1, **{**kw, "train": 7, "val": 3})
    assert d["test"].read_bytes() == a["test"].read_bytes()


def test_generate_refuses_settings_that_keep_nothing(tmp_path):
    with pytest.raises(ValueError, match="min_length 40, max_length 41"):
        D.generate(tmp_path, train=1, val=1, test=1, min_length=40, max_length=41, progress=False)


# ------------------------------------------------------------------------------ reader
def test_the_files_round_trip_through_the_reader(small):
    data = D.read_folder(small)
    for split in D.SPLITS:
        got = rows(small / D.FILES[split])
        s = data[split]
        assert len(s) == len(got) and s.labels.tolist() == [int(t) for _, t in got]
        for i, (source, _) in enumerate(got):
            ids = s.tokens[s.offsets[i]:s.offsets[i + 1]]
            assert " ".join(D.VOCAB[k] for k in ids) == " ".join(source.replace("(", "").replace(")", "").split())
    x, lengths = data["test"].pad([3, 0, 5])
    assert x.shape == (3, lengths.max()) and (x[np.arange(x.shape[1]) >= lengths[:, None]] == D.PAD).all()
    r, _ = data["test"].pad([3, 0, 5], reverse=True)
    for row in range(3):
        n = lengths[row]
        assert (r[row, :n] == x[row, :n][::-1]).all() and (r[row, n:] == D.PAD).all()


def test_an_lra_file_as_written_by_the_lra_code_is_read(tmp_path):
    p = tmp_path / "basic_test.tsv"
    p.write_bytes(b"Source\tTarget\r\n( ( ( [MAX 2 ) 9 ) ] )\t9\r\n"
                  b"( ( ( ( [SM 5 ) 8 ) ( ( ( [MED 1 ) 4 ) ] ) ) ] )\t5\r\n")
    s = D.read_split(p)
    assert s.labels.tolist() == [9, 5] and s.lengths.tolist() == [4, 8]
    assert [D.VOCAB[i] for i in s.tokens[:4]] == ["[MAX", "2", "9", "]"]


@pytest.mark.parametrize("text, problem", [
    ("Source,Target\r\n", "line 1: the header"),
    ("Source\tTarget\n[MAX 2 9 ]\t9\textra\n", "line 2: 3 tab-separated fields"),
    ("Source\tTarget\n[MAX 2 9 ]\t9\n[MAX 2 9 ]\tnine\n", "line 3: target 'nine'"),
    ("Source\tTarget\n[MAX 2 9 ]\t10\n", "line 2: target '10'"),
    ("Source\tTarget\n[MAX 2 12 ]\t9\n", "line 2: unknown token '12'"),
    ("Source\tTarget\n[MAX 2 \x01 ]\t9\n", "line 2: unknown token '\\x01'"),
    ("Source\tTarget\n[MAXX 2 9 ]\t9\n", "line 2: unknown token '[MAXX'"),
    ("Source\tTarget\n[MAX 2 9 ] ]\t9\n", "line 2: token 5 is a ']' with no open operator"),
    ("Source\tTarget\n[MAX 2 [MIN 9 ]\t9\n", "line 2: 1 operator(s) left open"),
    ("Source\tTarget\n[MAX 2 ] 9\t9\n", "line 2: the expression ends at token 3"),
    ("Source\tTarget\n( )\t9\n", "line 2: empty source"),
    ("Source\tTarget\n", "no examples"),
])
def test_malformed_files_are_refused_naming_file_line_and_problem(tmp_path, text, problem):
    p = tmp_path / "basic_train.tsv"
    p.write_text(text, encoding="utf-8", newline="")
    with pytest.raises(ValueError) as e:
        D.read_split(p)
    assert str(e.value).startswith(str(p)) and problem in str(e.value), str(e.value)


def test_a_missing_file_or_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="basic_train.tsv"):
        D.read_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        D.read_folder(tmp_path / "nowhere")


# ------------------------------------------------------------------------------ model and task
TINY = dict(d_model=16, n_layers=2, expansion=1.0, batch_size=8, eval_batch=16, warmup=5)


def tiny(small, **kw):
    return L.config("default", data_dir=str(small), **{**TINY, **kw})


@pytest.mark.parametrize("model", L.MODELS)
@pytest.mark.parametrize("pool", ["last", "mean", "both"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_never_reaches_an_example(small, model, pool, bidirectional):
    """A padded batch gives each example the logits it gets alone (a backward-reading layer starts at
    each example's own last token), and `at` (the last block on the last positions only) equals the
    full block there."""
    task = L.ListOpsTask(tiny(small, model=model, pool=pool, bidirectional=bidirectional))
    m = task.model.to(dtype=np.float64)
    split = task.data["test"]
    x, lengths = split.pad([0, 1, 2, 3])
    together = m(x, lengths).data
    for row in range(4):
        alone = m(*split.pad([row])).data
        np.testing.assert_allclose(together[row], alone[0], rtol=1e-10, atol=1e-12)
    if bidirectional:
        return
    h = m.embed(x)
    for blk in m.blocks[:-1]:
        h = blk(h, lengths)
    rows_, pos = np.arange(4), lengths - 1
    np.testing.assert_allclose(m.blocks[-1].at(h, rows_, pos).data, m.blocks[-1](h, lengths).data[rows_, pos],
                               rtol=1e-10)


def test_a_bidirectional_block_reads_both_ways_with_half_the_states_each(small):
    """Its output at a token depends on the tokens after it (a causal block's does not), and its
    two directions together have the causal block's states."""
    causal, both = (L.ListOpsTask(tiny(small, bidirectional=b)).model.to(dtype=np.float64) for b in (False, True))
    assert both.blocks[0].rnn.N + both.blocks[0].rnn_back.N == causal.blocks[0].rnn.N
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 12, 16))
    x2 = x.copy()
    x2[0, 8:] += rng.standard_normal((4, 16))  # change the tokens after position 7
    lengths = np.array([12])
    for m, sees_ahead in ((causal, False), (both, True)):
        y, y2 = (m.blocks[0](as_tensor(v), lengths).data for v in (x, x2))
        assert np.allclose(y[0, :8], y2[0, :8]) != sees_ahead


def test_the_lrus_recurrent_parameters_get_the_smaller_lr_and_no_decay(small):
    task = L.ListOpsTask(tiny(small, lr=2e-3, lru_lr_factor=0.25, weight_decay=0.1))
    groups = task.param_groups()
    names = {id(p): n for n, p in task.model.named_parameters()}
    slow = next(g for g in groups if g.get("lr") == 5e-4)
    assert sorted(names[id(p)].rsplit(".", 1)[1] for p in slow["params"]) == \
        sorted(["nu_log", "theta_log", "gamma_log", "B"] * 2) and slow["weight_decay"] == 0
    decayed = {names[id(p)] for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert "blocks.0.rnn.C" in decayed and "blocks.0.rnn.D" not in decayed and "head.bias" not in decayed
    assert sum(len(g["params"]) for g in groups) == len(names)
    opt = optim.AdamW(groups, lr=2e-3)
    opt.set_lr_factor(0.5)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3, 2.5e-4]


def test_presets():
    d, p = L.PRESETS["default"], L.PRESETS["paper"]
    for cfg in (d, p):
        cfg.validate()
        assert cfg.test_lengths == D.LRA_LENGTHS and cfg.data_dir is None
    assert (p.model, p.n_layers, p.d_model, int(p.expansion * p.d_model), p.batch_size, p.r_min, p.r_max, p.dropout) \
        == ("lru", 6, 128, 256, 32, 0.0, 0.99, 0.0)
    assert (p.n_train, p.n_val, p.n_test, p.train_lengths, p.max_depth, p.max_args) == \
        (96_000, 2_000, 2_000, D.LRA_LENGTHS, 10, 10)
    assert p.warmup == p.steps // 10 and p.min_lr_factor == 0 and p.lru_lr_factor < 1 and p.weight_decay > 0


def test_the_paper_preset_runs_unchanged_on_lra_format_files(small, tmp_path):
    cfg = L.config("paper", data_dir=str(small), steps=1, eval_every=1)
    s = L.train(cfg, tmp_path / "run", progress=False)
    assert s["steps"] == 1 and 0 <= s["accuracy"] <= 1 and {"val_accuracy", "val_loss"} <= set(s)
    assert s["parameters"] == L.ListOpsModel(cfg).num_parameters()


@pytest.mark.parametrize("model", L.MODELS)
def test_each_model_learns_a_tiny_listops_set_above_chance(tmp_path, model):
    """Expressions of depth 3 (one operator over values and operators over values), 300 steps."""
    data = tmp_path / "data"
    D.generate(data, train=2000, val=10, test=300, min_length=3, max_length=40, max_depth=3, max_args=4,
               seed=1, progress=False)
    cfg = L.config("default", model=model, data_dir=str(data), d_model=32, n_layers=2, expansion=1.0,
                   batch_size=32, steps=300, lr=5e-3, warmup=20, eval_every=300, reverse=True)
    s = L.train(cfg, tmp_path / "run", progress=False)
    majority = np.bincount(D.read_split(data / "basic_test.tsv").labels).max() / 300
    assert s["accuracy"] > majority + 0.15, (s["accuracy"], majority)


# ------------------------------------------------------------------------------ CLI
def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def tiny_preset(monkeypatch):
    monkeypatch.setitem(L.PRESETS, "default", L.config("default", **TINY))


def test_generate_then_train_eval_and_resume_through_the_cli(tmp_path, tiny_preset, monkeypatch):
    data = tmp_path / "data"
    r = run("listops", "generate", "--out", str(data), "--train", "40", "--val", "5", "--test", "12",
            "--min-length", "5", "--max-length", "30", "--max-depth", "4", "--seed", "2", "--quiet")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(data)) == sorted(D.FILES.values())
    args = ["train", "--task", "listops", "--data-dir", str(data), "--steps", "5", "--eval-every", "2", "--quiet"]
    assert run(*args, "--out", str(tmp_path / "a")).exit_code == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["steps"] == 5 and {"accuracy", "loss"} <= set(summary) and summary["model"] == "lru"
    r = run("eval", "--checkpoint", str(tmp_path / "a" / "checkpoint.h5"), "--json")
    assert r.exit_code == 0 and json.loads(r.output) == {"loss": summary["loss"], "accuracy": summary["accuracy"]}
    # interrupted at step 3, then resumed: the same parameters as the uninterrupted run
    orig, calls = L.ListOpsTask.batch, {"n": 0}

    def batch(self, rng, size):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return orig(self, rng, size)
    with monkeypatch.context() as m:
        m.setattr(L.ListOpsTask, "batch", batch)
        assert run(*args, "--out", str(tmp_path / "b")).exit_code == 130
    r = run("train", "--task", "listops", "--out", str(tmp_path / "b"), "--resume", "--quiet")
    assert r.exit_code == 0, r.output
    from mincore.autograd import load_checkpoint

    a, b = (load_checkpoint(tmp_path / d / "checkpoint.h5") for d in "ab")
    assert a.step == b.step == 5 and all(np.array_equal(p, b.params[n]) for n, p in a.params.items())


@pytest.mark.parametrize("args, problem", [
    (["train", "--task", "listops", "--data-dir", "/no/such", "--steps", "1"], "/no/such: no such folder"),
    (["train", "--task", "copy", "--data-dir", "/tmp", "--steps", "1"], "--data-dir is an option of --task listops"),
    (["listops", "generate", "--out", "x", "--min-length", "9", "--max-length", "10"], "--min-length"),
    (["listops", "generate", "--out", "", "--train", "1"], "--out"),
])
def test_bad_arguments_give_one_line_errors(args, problem):
    r = CliRunner().invoke(main, args)
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert r.exit_code != 0 and len(errors) == 1 and problem in errors[0], r.output


def test_a_run_refuses_data_that_changed(tmp_path, tiny_preset, small):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small, data)
    assert run("train", "--task", "listops", "--data-dir", str(data), "--steps", "1", "--quiet",
               "--out", str(tmp_path / "a")).exit_code == 0
    with open(data / "basic_test.tsv", "a", encoding="ascii") as f:
        f.write("( ( ( [MAX 2 ) 9 ) ] )\t9\r\n")
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(tmp_path / "a" / "checkpoint.h5")])
    assert r.exit_code == 1 and "basic_test.tsv is not the file the run was trained on" in r.output


def test_without_a_folder_the_data_is_generated_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MINCORE_CACHE", str(tmp_path / "cache"))
    cfg = L.config("default", n_train=20, n_val=2, n_test=5, train_lengths=(3, 20), test_lengths=(5, 30),
                   max_depth=4, **TINY)
    folder = L.data_folder(cfg, progress=False)
    assert folder.parent == tmp_path / "cache" / "listops"
    stamp = {f: (folder / f).stat().st_mtime_ns for f in D.FILES.values()}
    task = L.ListOpsTask(cfg, progress=False)
    assert task.folder == folder and {f: (folder / f).stat().st_mtime_ns for f in D.FILES.values()} == stamp
    assert len(task.data["train"]) == 20 and task.data["train"].lengths.max() < 20
    assert 5 < task.data["test"].lengths.min()


def test_a_batch_is_drawn_from_examples_of_similar_length(small):
    task = L.ListOpsTask(tiny(small, bucket=2))
    x, lengths, y = task.batch(np.random.default_rng(0), 8)
    assert x.shape == (8, lengths.max()) and y.shape == (8,)
    ranks = np.argsort(np.argsort(task.data["train"].lengths, kind="stable"), kind="stable")
    picked = [i for i in range(300) if any(np.array_equal(task.data["train"].pad([i], True)[0][0], row[:n])
                                           for row, n in zip(x, lengths, strict=True))]
    assert len(picked) == 8 and np.ptp(ranks[picked]) < 16  # within a window of bucket x batch examples in length order
    loss, metrics = task.loss((x, lengths, y))
    assert loss.shape == () and 0 <= metrics["accuracy"] <= 1
    assert set(task.evaluate()) == {"loss", "accuracy"}


# ------------------------------------------------------------------------------ the LRU in the other tasks
def test_copy_with_the_lru_equals_its_full_model_and_groups_its_parameters():
    from mincore.tasks import copy as C

    cfg = C.config("default", model="lru", seq_len=12, n_data=3, d_model=8, expansion=2.0, dropout=0.0)
    m = C.CopyModel(cfg).to(dtype=np.float64)
    x, y = C.make_batch(np.random.default_rng(0), 4, 12, 3)
    h = m.embed(x)
    for blk in m.blocks:
        h, _ = blk(h)
    np.testing.assert_allclose(m(x, 3).data, m.head(m.norm(h)).data[:, -3:], rtol=1e-10)
    groups = C.CopyTask(dataclasses.replace(cfg, eval_size=4)).param_groups()
    slow = [g for g in groups if g.get("lr") == cfg.lr * cfg.lru_lr_factor]
    assert len(slow) == 1 and len(slow[0]["params"]) == 4 * cfg.n_layers and slow[0]["weight_decay"] == 0


def test_shakespeare_trains_and_samples_with_the_lru(tmp_path):
    from mincore.tasks import shakespeare as S

    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question\n" * 20, encoding="utf-8")
    cfg = S.config("default", model="lru", data=str(text), context=16, d_model=8, n_layers=1, mlp_mult=1,
                   batch_size=4, steps=2, eval_every=2, eval_chunk=64)
    s = S.train(cfg, tmp_path / "run", progress=False)
    assert s["model"] == "lru" and np.isfinite(s["loss"])
    task = S.ShakespeareTask(cfg)
    assert any(g.get("lr") == cfg.lr * cfg.lru_lr_factor for g in task.param_groups())
    model, vocab, _ = S.load_model(tmp_path / "run" / "checkpoint.h5")
    assert len("".join(S.generate(model, vocab, "to be", 10, seed=0))) == 10
