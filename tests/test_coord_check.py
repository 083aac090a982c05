"""Coordinate check: the real muP effect (activation size flat in width) and the CLI's JSON/PNG output."""
import json

import pytest

from windtunnel import Recipe
from windtunnel.coord_check import coord_check, depth_recipe, spread, width_recipe
from windtunnel.cli import main as cli_main


def main(argv: list[str]) -> int:
    """The subcommand through the CLI's error boundary, as a user runs it."""
    return cli_main(["coord-check", *argv])
from windtunnel.recipe import RecipeError


def tiny(d_model=32, **model):
    return Recipe.from_dict({
        "model": {"vocab_size": 64, "max_seq_len": 32, "d_model": d_model, "n_heads": 2, "n_layers": 2,
                  "mup": {"base_width": 32}, **model},
        "optim": {"lr": 1e-2}, "train": {"steps": 5, "batch_size": 4, "seq_len": 32, "seed": 0}})


@pytest.mark.slow  # trains 6 models up to width 512: ~5 s
def test_mup_keeps_logits_and_hidden_flat_across_16x_width_while_sp_grows(token_batches):
    batches = token_batches(64, n=2, batch=4, seq_len=32)
    # heads fixed at 2: the head dim grows 16 -> 256 too, so the 1/d attention rule is exercised
    table = coord_check(tiny(), [32, 128, 512], steps=5, batches=batches)
    for layer in ("logits", "blocks.1"):  # blocks.1 = residual stream after the last block
        assert spread(table, "mup", layer) < 2.0, (layer, table["mup"])
        assert spread(table, "sp", layer) > 2.0, (layer, table["sp"])
    assert spread(table, "sp", "blocks.1") > 20  # SP's hidden updates grow ~ width under Adam
    widest, narrowest = table["sp"]["512"]["logits"][-1], table["sp"]["32"]["logits"][-1]
    assert widest > narrowest  # and it is growth, not shrinkage


def test_width_recipe_scales_heads_ffn_and_base_head_dim():
    r = width_recipe(tiny(ffn_hidden=128, n_kv_heads=1), 128, "mup", head_dim=16)
    m = r.model
    assert (m.d_model, m.n_heads, m.kv_heads, m.ffn_dim, m.mup.base_head_dim) == (128, 8, 4, 512, 16)
    assert m.parameterization == "mup"
    keep_heads = width_recipe(tiny(), 256, "sp").model
    assert (keep_heads.n_heads, keep_heads.head_dim, keep_heads.parameterization) == (2, 128, "sp")
    with pytest.raises(RecipeError, match="--head-dim"):
        width_recipe(tiny(), 100, "mup", head_dim=16)
    with pytest.raises(RecipeError, match="model.d_model"):
        width_recipe(tiny(), 33, "mup")  # not divisible by n_heads


@pytest.fixture
def corpus_recipe(tmp_path, word_corpus):
    docs = word_corpus()
    path = tmp_path / "r.yaml"
    path.write_text(
        "model: {d_model: 16, n_heads: 2, n_layers: 1, mup: {base_width: 16}}\n"
        f"data: {{source: files, paths: ['{docs}/*.txt'], val_fraction: 0.2, cache_dir: '{tmp_path}/cache'}}\n"
        "tokenizer: {kind: byte}\noptim: {lr: 1.0e-2}\n"
        "train: {steps: 10, batch_size: 2, seq_len: 16, threads: 1}\n")
    return path


@pytest.mark.slow  # tokenizes a corpus, trains 4 models, draws a PNG: ~8 s
def test_cli_writes_json_table_and_png(corpus_recipe, tmp_path, capsys):
    out_json, out_png = tmp_path / "cc.json", tmp_path / "cc.png"
    rc = main([str(corpus_recipe), "--widths", "16,32", "--steps", "3", "--json", str(out_json),
               "--png", str(out_png), "--set", "train.batch_size=1"])
    assert rc == 0
    table = json.loads(out_json.read_text())
    assert set(table) == {"sp", "mup"} and set(table["mup"]) == {"16", "32"}
    row = table["mup"]["32"]
    assert set(row) == {"embed", "blocks.0.attn", "blocks.0.mlp", "blocks.0", "last", "logits"}
    assert row["last"] == row["blocks.0"]  # one block: the last residual stream is block 0's output
    assert all(len(v) == 3 and all(x > 0 for x in v) for v in row.values())
    assert table["sp"]["16"] == table["mup"]["16"]  # base width: muP is SP
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    assert "last hidden" in capsys.readouterr().out


def test_cli_bad_input_exits_2_with_one_line(corpus_recipe, capsys):
    assert main([str(corpus_recipe), "--widths", "16,abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--widths" in err and len(err.splitlines()) == 1
    assert main([str(corpus_recipe), "--parameterizations", "ntk"]) == 2


@pytest.mark.slow  # trains 4 models up to 16 blocks of width 32: ~4 s
def test_completep_keeps_the_residual_stream_flat_across_8x_depth_while_sp_grows(token_batches):
    batches = token_batches(64, n=2, batch=4, seq_len=32)
    table = coord_check(tiny(), [2, 16], steps=5, batches=batches, mode="depth")
    assert set(table["mup"]) == {"2", "16"}
    assert spread(table, "mup", "last") < 1.5, table["mup"]
    assert spread(table, "sp", "last") > 2.0 * spread(table, "mup", "last"), table["sp"]
    assert table["sp"]["2"] == table["mup"]["2"]  # base width and base depth: muP with CompleteP is SP


def test_depth_recipe_sets_the_rule_and_base_depth():
    m = depth_recipe(tiny(), 8, "mup", base_depth=2).model
    assert (m.n_layers, m.mup.depth_rule, m.mup.base_depth) == (8, "completep", 2)
    sqrt = depth_recipe(tiny(mup={"base_width": 32, "depth_rule": "sqrt"}), 8, "mup", base_depth=2).model
    assert sqrt.mup.depth_rule == "sqrt"
    assert depth_recipe(tiny(), 8, "sp", base_depth=2).model.parameterization == "sp"
