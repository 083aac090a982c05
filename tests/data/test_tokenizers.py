import pytest
from transformers import AutoTokenizer

from windtunnel.data import ByteTokenizer, HFTokenizer, build_tokenizer, train_tokenizer
from windtunnel.data.sources import val_score
from windtunnel.recipe import RecipeError

TEXT = "déjà vu: naïve café — 日本語 🚀\n\tdef f(x): return x  # <|endoftext|> Ġ"


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids + [tok.eos_id]) == TEXT
    assert (tok.vocab_size, tok.eos_id) == (258, 256)
    assert [a.tolist() for a in tok.encode_batch([TEXT, "ab"])] == [ids, [97, 98]]


def test_byte_save_hf_gives_same_ids_in_auto_tokenizer(tmp_path):
    tok = ByteTokenizer()
    tok.save_hf(tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf(TEXT, add_special_tokens=False)["input_ids"] == tok.encode(TEXT)
    assert hf.decode(tok.encode(TEXT)) == TEXT
    assert (len(hf), hf.eos_token_id, hf.pad_token_id) == (258, 256, 257)


def test_hf_kind_loads_local_folder_with_stable_fingerprint(tmp_path, make_recipe):
    ByteTokenizer().save_hf(tmp_path / "hf")
    recipe = make_recipe(tokenizer={"kind": "hf", "path": str(tmp_path / "hf")})
    a, b = build_tokenizer(recipe), build_tokenizer(recipe)
    assert isinstance(a, HFTokenizer) and a.fingerprint == b.fingerprint != ByteTokenizer.fingerprint
    assert (a.vocab_size, a.eos_id) == (258, 256)
    assert a.encode(TEXT) == ByteTokenizer().encode(TEXT) and a.decode(a.encode(TEXT)) == TEXT


def test_hf_kind_bad_path_is_a_clear_error(tmp_path, make_recipe):
    recipe = make_recipe(tokenizer={"kind": "hf", "path": str(tmp_path / "missing")})
    with pytest.raises(RecipeError, match="^tokenizer.path: cannot load HF tokenizer"):
        build_tokenizer(recipe)


def _word(i: int) -> str:
    return "qz" + "abcdefghijklmnoprstu"[i] * 2 + "vk"  # letters only: the pre-tokenizer keeps it whole


@pytest.fixture
def word_corpus(tmp_path):
    """20 documents, each repeating its own word: BPE learns a word only if it trains on that document."""
    root = tmp_path / "words"
    root.mkdir()
    for i in range(20):
        (root / f"d{i:02d}.txt").write_text(f" {_word(i)}" * 300)
    return root


def test_bpe_trains_on_train_documents_and_round_trips(tmp_path, word_corpus, make_recipe):
    recipe = make_recipe({"source": "files", "paths": [str(word_corpus)], "val_fraction": 0.3},
                         {"kind": "bpe", "vocab_size": 600, "path": str(tmp_path / "bpe")})
    folder = train_tokenizer(recipe)
    assert folder == tmp_path / "bpe"
    tok = build_tokenizer(recipe)
    hf = AutoTokenizer.from_pretrained(str(folder))
    assert hf(TEXT, add_special_tokens=False)["input_ids"] == tok.encode(TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert len(hf) <= 600 and tok.eos_id == hf.eos_token_id
    is_val = {i: val_score(str(word_corpus / f"d{i:02d}.txt")) < 0.3 for i in range(20)}
    assert 0 < sum(is_val.values()) < 20
    for i, held_out in is_val.items():
        n_tokens = len(tok.encode(f" {_word(i)}"))
        assert (n_tokens > 1) if held_out else (n_tokens == 1), (i, held_out, n_tokens)


def test_bpe_trains_automatically_once_into_cache(word_corpus, make_recipe, capsys):
    recipe = make_recipe({"source": "files", "paths": [str(word_corpus)]}, {"kind": "bpe", "vocab_size": 300})
    first = build_tokenizer(recipe)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "training a 300-token BPE" in out
    second = build_tokenizer(recipe)
    assert capsys.readouterr().out == "" and second.fingerprint == first.fingerprint
    folders = list((word_corpus.parent / "cache").glob("bpe-*"))
    assert len(folders) == 1 and (folders[0] / "tokenizer.json").exists()
    bigger = make_recipe({"source": "files", "paths": [str(word_corpus)]}, {"kind": "bpe", "vocab_size": 320})
    assert build_tokenizer(bigger).fingerprint != first.fingerprint


def test_train_tokenizer_rejects_other_kinds_and_tiny_vocab(make_recipe):
    with pytest.raises(RecipeError, match="^tokenizer.kind: 'byte' is not trainable"):
        train_tokenizer(make_recipe())
    with pytest.raises(RecipeError, match="tokenizer.vocab_size: 100 is too small"):
        train_tokenizer(make_recipe(tokenizer={"kind": "bpe", "vocab_size": 100}))


def test_bpe_never_overwrites_a_folder_that_is_not_a_tokenizer(tmp_path, word_corpus, make_recipe):
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "important.txt").write_text("keep me")
    recipe = make_recipe({"source": "files", "paths": [str(word_corpus)]},
                         {"kind": "bpe", "vocab_size": 300, "path": str(keep)})
    with pytest.raises(RecipeError, match="is not a tokenizer folder"):
        train_tokenizer(recipe)
    assert (keep / "important.txt").read_text() == "keep me"
