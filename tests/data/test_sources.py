import json

import pytest

from windtunnel.data import sources
from windtunnel.data.sources import Document, iter_documents, split_documents, stdlib_files, stdlib_root
from windtunnel.recipe import RecipeError


def _touch(path, text="x = 1\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_stdlib(tmp_path, monkeypatch):
    root = tmp_path / "lib" / "python3.x"
    for rel in ["os.py", "b/mod.py", "a.py", "site-packages/pkg/x.py", "dist-packages/y.py",
                "test/test_os.py", "b/tests/t.py", "__pycache__/c.py", "notes.txt"]:
        _touch(root / rel, f"# {rel}\n")
    monkeypatch.setattr(sources, "stdlib_root", lambda: root)
    return root


def test_stdlib_excludes_site_packages_and_sorts(fake_stdlib, make_recipe):
    docs = list(iter_documents(make_recipe().data))
    assert [d.id for d in docs] == ["a.py", "b/mod.py", "b/tests/t.py", "os.py", "test/test_os.py"]
    assert docs[0].text == "# a.py\n"


def test_stdlib_tests_false_drops_test_folders(fake_stdlib, make_recipe):
    docs = list(iter_documents(make_recipe({"stdlib_tests": False}).data))
    assert [d.id for d in docs] == ["a.py", "b/mod.py", "os.py"]


def test_real_stdlib_is_deterministic_and_capped(make_recipe):
    files = stdlib_files()
    rel = [p.relative_to(stdlib_root()).as_posix() for p in files]
    assert "os.py" in rel and rel == sorted(rel)
    assert not any({"site-packages", "dist-packages"} & set(r.split("/")) for r in rel)
    cfg = make_recipe({"max_documents": 5}).data
    first, second = list(iter_documents(cfg)), list(iter_documents(cfg))
    assert len(first) == 5 and first == second


def test_files_dir_glob_and_file_in_order(tmp_path, make_recipe):
    _touch(tmp_path / "d" / "z.md", "zed")
    _touch(tmp_path / "d" / "sub" / "a.rst", "aye")
    _touch(tmp_path / "d" / ".hidden" / "h.txt", "hidden")
    _touch(tmp_path / "g" / "1.txt", "one")
    _touch(tmp_path / "g" / "2.txt", "two")
    _touch(tmp_path / "g" / "3.log", "log")
    paths = [str(tmp_path / "g" / "*.txt"), str(tmp_path / "d"), str(tmp_path / "g" / "1.txt")]
    docs = list(iter_documents(make_recipe({"source": "files", "paths": paths}).data))
    assert [d.text for d in docs] == ["one", "two", "aye", "zed"]  # duplicates dropped, dirs recursive
    assert docs[0].id == str(tmp_path / "g" / "1.txt")


def test_files_pattern_matching_nothing_is_a_clear_error(tmp_path, make_recipe):
    cfg = make_recipe({"source": "files", "paths": ["x/*.txt"]}).data
    with pytest.raises(RecipeError, match=r"^data.paths: 'x/\*.txt' matches no file$"):
        list(iter_documents(cfg))


def test_jsonl_json_array_and_parquet(tmp_path, make_recipe):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text(json.dumps({"content": "first", "n": 1}) + "\n\n"
                                      + json.dumps({"content": "sécond"}) + "\n")
    (tmp_path / "b.json").write_text(json.dumps([{"content": "third"}, {"content": None}]))
    pq.write_table(pa.table({"content": ["fourth", "fifth"], "n": [1, 2]}), tmp_path / "c.parquet")
    cfg = make_recipe({"source": "files", "paths": [str(tmp_path / "*")], "text_field": "content"}).data
    docs = list(iter_documents(cfg))
    assert [d.text for d in docs] == ["first", "sécond", "third", "fourth", "fifth"]
    assert docs[1].id.endswith("a.jsonl#2") and docs[4].id.endswith("c.parquet#1")


def test_missing_text_field_names_the_field(tmp_path, make_recipe):
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    cfg = make_recipe({"source": "files", "paths": [str(tmp_path / "a.jsonl")]}).data
    with pytest.raises(ValueError, match="no field 'text'"):
        list(iter_documents(cfg))


def test_hf_saved_dataset_streaming_and_cap(tmp_path, make_recipe):
    import datasets

    texts = [f"row {i} ü" for i in range(7)]
    datasets.Dataset.from_dict({"text": texts, "n": list(range(7))}).save_to_disk(str(tmp_path / "ds"))
    for streaming in (False, True):
        cfg = make_recipe({"source": "hf", "dataset": str(tmp_path / "ds"), "streaming": streaming}).data
        docs = list(iter_documents(cfg))
        assert [d.text for d in docs] == texts and [d.id for d in docs] == [str(i) for i in range(7)]
    capped = make_recipe({"source": "hf", "dataset": str(tmp_path / "ds"), "max_documents": 3}).data
    assert [d.text for d in iter_documents(capped)] == texts[:3]


def test_hf_dataset_dict_split_and_bad_column(tmp_path, make_recipe):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": ["a", "b"]}),
                               "validation": datasets.Dataset.from_dict({"body": ["c"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    cfg = make_recipe({"source": "hf", "dataset": str(tmp_path / "dd"), "split": "validation",
                       "text_field": "body"}).data
    assert [d.text for d in iter_documents(cfg)] == ["c"]
    bad = make_recipe({"source": "hf", "dataset": str(tmp_path / "dd"), "text_field": "text"}).data
    with pytest.raises(ValueError, match="data.text_field: no column 'text'"):
        list(iter_documents(bad))


def test_hf_local_json_file_via_load_dataset(tmp_path, make_recipe, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(4)))
    for streaming in (True, False):
        cfg = make_recipe({"source": "hf", "dataset": str(path), "streaming": streaming}).data
        assert [d.text for d in iter_documents(cfg)] == [f"line {i}" for i in range(4)]


def _docs(n):
    return [Document(f"doc-{i}", str(i)) for i in range(n)]


def test_split_is_stable_disjoint_and_near_fraction():
    pairs = list(split_documents(iter(_docs(1000)), 0.1))
    val = {d.id for d, v in pairs if v}
    assert len(pairs) == 1000 and 60 < len(val) < 140
    again = {d.id for d, v in split_documents(iter(_docs(1000)[::-1]), 0.1) if v}
    assert again == val  # a function of the id, not of the position


def test_split_puts_at_least_one_document_in_val():
    assert [v for _, v in split_documents(iter(_docs(2)), 1e-9)].count(True) == 1
    assert [v for _, v in split_documents(iter(_docs(1)), 0.5)] == [False]
    assert not any(v for _, v in split_documents(iter(_docs(5)), 0.0))


def test_unreachable_hf_dataset_is_one_line_naming_data_dataset(make_recipe):
    from windtunnel.errors import DataError

    cfg = make_recipe({"source": "hf", "dataset": "nobody/no-such-dataset"}).data  # tests run offline
    with pytest.raises(DataError, match=r"^data.dataset: cannot load 'nobody/no-such-dataset' \(") as e:
        sources.load_hf_dataset(cfg)
    assert "\n" not in str(e.value)
