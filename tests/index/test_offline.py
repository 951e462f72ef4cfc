"""Features computed elsewhere, used with no backbone: tiny-model features exported to .npz and
.safetensors, imported, give the metrics of evaluating the model directly; stores written by
``tokenflow encode`` work the same; ``search --query-store`` and ``explain`` from stores give what
the model's own features give."""

import json
import re

import pytest
import torch

from tokenflow import get_aligner
from tokenflow.cli import main
from tokenflow.index.offline import caption_ids

from tests.helpers import STORE_PLANS, export_features

pytest.importorskip("safetensors.numpy")


def _evaluate(synth, vstore, tstore, tmp_path, *extra):
    out = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.json"
    assert main(["evaluate", "--visual-store", str(vstore), "--text-store", str(tstore), "--dataset", "flickr30k",
                 "--root", str(synth / "images"), "--split", "test", "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def _same_metrics(got, want):
    for d in ("t2v", "v2t"):
        assert got[d].keys() == want[d].keys()
        for k in want[d]:
            assert got[d][k] == pytest.approx(want[d][k], abs=1e-6), (d, k)


@pytest.mark.parametrize("plan", STORE_PLANS)
def test_round_trip_import_gives_the_direct_metrics(synth, direct, imported, tmp_path, plan):
    report = _evaluate(synth, *imported, tmp_path, "--aligner", plan)
    _same_metrics(report["metrics"], direct[2][plan]["metrics"])
    assert report["aligner"]["name"] == plan and report["evaluated"] == {"items": 6, "texts": 30}
    assert report["backbone"]["visual"]["kind"] == "imported"
    assert report["backbone"]["text"]["model"] == "tiny (exported)"


def test_round_trip_similarities_to_float_tolerance(direct, imported):
    from tokenflow.eval.evaluate import similarity
    from tokenflow.index.offline import open_stores, split_tokens

    split, enc, _ = direct
    vis, txt = split_tokens(split, open_stores(imported[0], "visual", "v"), open_stores(imported[1], "text", "t"))
    for a, b in zip(similarity(vis, txt, get_aligner("tokenflow")), similarity(enc.vis, enc.txt,
                                                                              get_aligner("tokenflow")), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_stores_written_by_encode_evaluate_the_same(synth, model_dir, direct, tmp_path):
    common = ["--model", str(model_dir), "--dataset", "flickr30k", "--root", str(synth / "images"), "--split", "test",
              "--dtype", "fp32", "--quiet"]
    assert main(["encode", *common, "--out", str(tmp_path / "V")]) == 0
    assert main(["encode", *common, "--captions", "--out", str(tmp_path / "T")]) == 0
    report = _evaluate(synth, tmp_path / "V", tmp_path / "T", tmp_path, "--aligner", "max-avg")
    _same_metrics(report["metrics"], direct[2]["max-avg"]["metrics"])
    assert report["backbone"]["visual"]["kind"] == "encoded"


def test_evaluate_from_stores_options_and_global_only(synth, direct, imported, tmp_path, capsys):
    from tokenflow.eval.evaluate import evaluate

    split, enc, _ = direct
    report = _evaluate(synth, *imported, tmp_path, "--aligner", "none", "--rerank-top", "2", "--test-norm", "dsl",
                       "--folds", "3")
    want = evaluate({}, split, None, encoded=enc, rerank_top=2, test_norm="dsl", folds=3)
    for key in ("metrics", "metrics_rerank", "metrics_test_norm", "metrics_folds_3"):
        assert json.dumps(report[key], sort_keys=True) == json.dumps(json.loads(json.dumps(want[key])), sort_keys=True)
    assert "text->visual" in capsys.readouterr().out


def test_a_learned_plan_without_a_model_folder_notes_it_as_the_scoring_path_does(synth, imported, tmp_path,
                                                                                  capsys):
    from tokenflow.models.scoring import build_plan

    _evaluate(synth, *imported, tmp_path, "--aligner", "wti")
    (note,) = build_plan(None, "wti", dim=16)[4]
    assert f"tokenflow evaluate: note: {note}\n" in capsys.readouterr().err
    assert note.startswith("wti has learned weights and no trained model folder gives them; they are freshly")


def test_evaluate_refuses_missing_ids_with_a_count(synth, direct, tmp_path, capsys):
    split, enc, _ = direct
    vfile = export_features(enc.vis[:4], split.item_ids[:4], {}, tmp_path / "v.npz", "npz")
    tids = [f"cap{k}" for k in range(len(split.texts))]  # not the ITEM#K convention
    tfile = export_features(enc.txt, tids, {}, tmp_path / "t.npz", "npz")
    for f, kind, out in ((vfile, "visual", "V"), (tfile, "text", "T")):
        assert main(["import-features", str(f), "--out", str(tmp_path / out), "--kind", kind, "--model-name",
                     "m"]) == 0
    capsys.readouterr()
    argv = ["evaluate", "--visual-store", str(tmp_path / "V"), "--text-store", str(tmp_path / "T"), "--dataset",
            "flickr30k", "--root", str(synth / "images")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--visual-store {tmp_path / 'V'}: 2 of the 6 ids asked for are not in it" in err
    assert f"{split.item_ids[4]!r}" in err
    assert main(["evaluate", "--visual-store", str(tmp_path / "T"), "--text-store", str(tmp_path / "T"),
                 "--dataset", "flickr30k", "--root", str(synth / "images")]) == 2
    assert "a store of text features; expected visual features" in capsys.readouterr().err
    assert main(["evaluate", "--visual-store", str(tmp_path / "V"), "--dataset", "flickr30k", "--root",
                 str(synth / "images")]) == 2
    assert "needs both --visual-store and --text-store" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "flickr30k", "--root", str(synth / "images")]) == 2
    assert "needs --model" in capsys.readouterr().err


def test_text_ids_follow_the_item_hash_index_convention(direct, imported, tmp_path, synth, capsys):
    split, enc, _ = direct
    tfile = export_features(enc.txt, [f"cap{k}" for k in range(len(split.texts))], {}, tmp_path / "t.npz", "npz")
    assert main(["import-features", str(tfile), "--out", str(tmp_path / "T"), "--kind", "text", "--model-name",
                 "m"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--visual-store", str(imported[0]), "--text-store", str(tmp_path / "T"), "--dataset",
                 "flickr30k", "--root", str(synth / "images")]) == 2
    err = capsys.readouterr().err
    assert "30 of the 30 ids asked for are not in it" in err and f"'{split.item_ids[0]}#0'" in err


def test_search_with_a_query_store_equals_the_exhaustive_ranking(direct, imported, tmp_path, capsys):
    pytest.importorskip("faiss")
    from tokenflow.eval.evaluate import similarity

    split, enc, _ = direct
    assert main(["index", str(imported[0])]) == 0
    qids = caption_ids(split)[:3]
    out = tmp_path / "res.json"
    argv = ["search", "--index", str(imported[0]), "--query-store", str(imported[1]), "--k", "3", "--shortlist",
            "1000", "--aligner", "max-avg", "--json", str(out)]
    for q in qids:
        argv += ["--query-id", q]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    ref = similarity(enc.vis, enc.txt[:3], get_aligner("max-avg"))[1].T  # [queries, items]
    assert [q["query"] for q in report["queries"]] == [f"{i}: {t}" for i, t in zip(qids, split.texts[:3], strict=False)]
    for q, block in enumerate(report["queries"]):
        top = torch.topk(ref[q], 3)
        assert [r["id"] for r in block["results"]] == [split.item_ids[i] for i in top.indices.tolist()]
        torch.testing.assert_close(torch.tensor([r["score"] for r in block["results"]]), top.values,
                                   rtol=1e-4, atol=1e-4)
    assert f"query: {qids[0]}: {split.texts[0]}" in printed
    # visual queries against an indexed text store
    assert main(["index", str(imported[1])]) == 0
    assert main(["search", "--index", str(imported[1]), "--query-store", str(imported[0]), "--query-id",
                 split.item_ids[0], "--k", "2", "--aligner", "none", "--json", str(out)]) == 0
    best = torch.topk(similarity(enc.vis[:1], enc.txt, None)[0][0], 2).indices.tolist()
    assert [r["id"] for r in json.loads(out.read_text())["queries"][0]["results"]] == [caption_ids(split)[i]
                                                                                       for i in best]
    capsys.readouterr()
    assert main(["search", "--index", str(imported[0]), "--query-store", str(imported[1]), "--text", "x"]) == 2
    assert "--text: give either queries to encode or --query-store" in capsys.readouterr().err
    assert main(["search", "--index", str(imported[0]), "--query-store", str(imported[0])]) == 2
    assert "a store of visual features; expected text features" in capsys.readouterr().err


def test_explain_from_stores_shows_flows_and_weights(direct, imported, tmp_path, capsys):
    split, enc, _ = direct
    item, text_id = split.item_ids[1], caption_ids(split)[5]
    out, js = tmp_path / "e.png", tmp_path / "e.json"
    assert main(["explain", "--visual-store", str(imported[0]), "--text-store", str(imported[1]), "--item", item,
                 "--text-id", text_id, "--aligner", "tokenflow", "--out", str(out), "--json", str(js)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    numbers = json.loads(js.read_text())
    plan = get_aligner("tokenflow").plan(enc.vis[1], enc.txt[5])
    assert numbers["score"] == pytest.approx(float((plan.c * plan.t2v).sum()), abs=1e-5)
    assert numbers["global_score"] == pytest.approx(float(enc.vis.pooled[1] @ enc.txt.pooled[5]), abs=1e-5)
    torch.testing.assert_close(torch.tensor(numbers["d"]), plan.d.float(), rtol=1e-5, atol=1e-6)
    assert numbers["caption"] == split.texts[5] and numbers["grid"] == [4, 4]  # 16 patches of a 32 px image
    words = re.findall(r"\w+|[^\w\s]", split.texts[5])  # the tiny tokenizer's words and punctuation
    assert numbers["tokens"] == ["<bos>", *words, "<eos>"] and len(words) + 2 == int(enc.txt.mask[5].sum())
    printed = capsys.readouterr().out
    assert "tokenflow t2v: fine score" in printed and "-> patch (" in printed
    assert main(["explain", "--visual-store", str(imported[0]), "--text-store", str(imported[1]), "--item", "nope",
                 "--text-id", text_id, "--out", str(out)]) == 2
    assert "1 of the 1 ids asked for are not in it (first: 'nope')" in capsys.readouterr().err
    assert main(["explain", "--visual-store", str(imported[0]), "--text-store", str(imported[1]), "--item", item,
                 "--out", str(out)]) == 2
    assert "needs --text-id" in capsys.readouterr().err
    assert main(["explain", "--caption", "a cat", "--out", str(out)]) == 2
    assert "needs --model, --media and --caption" in capsys.readouterr().err


def test_token_labels_without_a_tokenizer():
    from tokenflow.viz.explain import numbered_tokens, token_labels

    assert token_labels("a red cube", 3) == ["a", "red", "cube"]
    assert token_labels("a red cube", 5) == ["<bos>", "a", "red", "cube", "<eos>"]
    assert token_labels("a cube, left.", 7) == ["<bos>", "a", "cube", ",", "left", ".", "<eos>"]
    # numbered from 1, as the server numbers them (one function for both)
    assert token_labels("a red cube", 4) == ["#1", "#2", "#3", "#4"] and token_labels(None, 2) == ["#1", "#2"]
    assert numbered_tokens(3) == ["#1", "#2", "#3"]


def test_model_folder_gives_the_plan_and_other_models_features_are_flagged(synth, model_dir, direct, imported,
                                                                            tmp_path, capsys):
    report = _evaluate(synth, *imported, tmp_path, "--model", str(model_dir), "--aligner", "max-avg")
    _same_metrics(report["metrics"], direct[2]["max-avg"]["metrics"])
    split, enc, _ = direct
    other = export_features(enc.txt, caption_ids(split), {}, tmp_path / "t.npz", "npz")
    assert main(["import-features", str(other), "--out", str(tmp_path / "T"), "--kind", "text", "--model-name",
                 "another model"]) == 0
    capsys.readouterr()
    _evaluate(synth, imported[0], tmp_path / "T", tmp_path, "--aligner", "uniform")
    assert "holds features of 'tiny (exported)'" in capsys.readouterr().err  # a warning, the metrics are computed
    pytest.importorskip("faiss")
    assert main(["index", str(imported[0])]) == 0
    argv = ["search", "--index", str(imported[0]), "--query-store", str(tmp_path / "T"), "--query-id",
            caption_ids(split)[0], "--aligner", "none"]
    assert main(argv) == 2
    assert "pass --no-check-backbone to search anyway" in capsys.readouterr().err
    assert main([*argv, "--no-check-backbone"]) == 0
    from tokenflow.errors import UserError
    from tokenflow.eval.evaluate import evaluate

    with pytest.raises(UserError, match="must be given as encoded"):
        evaluate({}, split, None)


def test_an_empty_split_is_refused_naming_it(imported):
    from tokenflow.data.base import RetrievalSplit
    from tokenflow.errors import UserError
    from tokenflow.index.offline import evaluate_stores, open_stores, split_tokens

    vis, txt = open_stores(imported[0], "visual", "v"), open_stores(imported[1], "text", "t")
    empty = RetrievalSplit("flickr30k/test", "image", [], [], [], [])
    with pytest.raises(UserError, match="flickr30k/test: the split holds no items"):
        split_tokens(empty, vis, txt)
    with pytest.raises(UserError, match="flickr30k/test: the split holds no items"):
        evaluate_stores(vis, txt, empty, None)
    mute = RetrievalSplit("flickr30k/val", "image", ["a"], [imported[0] / "a.png"], [], [])
    with pytest.raises(UserError, match="flickr30k/val: the split holds no captions"):
        split_tokens(mute, vis, txt)
