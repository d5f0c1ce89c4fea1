"""workflows.common.ResultCache: the one place that decides "already computed"."""

import json

from workflows.common import HASH_KEY, ResultCache, StageCache


def test_reuse_only_with_same_key_and_artifacts(tmp_path):
    art = tmp_path / "dose.nii.gz"
    c = ResultCache(tmp_path / "results.json", "k1", artifacts=[art])
    assert c.load() is None
    rec = c.save({"x": 1})
    assert rec[HASH_KEY] == "k1" and json.loads((tmp_path / "results.json").read_text())["x"] == 1
    assert c.load() is None  # the artifact is missing
    art.write_bytes(b"")
    assert c.load() == {"x": 1, HASH_KEY: "k1"}
    assert ResultCache(tmp_path / "results.json", "k2", artifacts=[art]).load() is None  # other inputs
    assert ResultCache(tmp_path / "results.json", "k1", artifacts=[art], force=True).load() is None


def test_unreadable_or_foreign_records_are_not_reused(tmp_path):
    p = tmp_path / "results.json"
    p.write_text("{ half")
    assert ResultCache(p, "k").load() is None
    p.write_text(json.dumps([1, 2]))
    assert ResultCache(p, "k").load() is None
    p.write_text(json.dumps({"provenance": {"inputs_hash": "k"}}))  # the old key name alone does not count
    assert ResultCache(p, "k").load() is None


def test_invalidate_removes_a_stale_result(tmp_path):
    c = ResultCache(tmp_path / "results.json", "k")
    c.save({"x": 1})
    c.invalidate()
    assert not (tmp_path / "results.json").exists()
    c.invalidate()  # idempotent


def test_stage_cache_is_a_result_cache_per_stage(tmp_path):
    s = StageCache(tmp_path)
    art = tmp_path / "seg.nii.gz"
    art.write_bytes(b"")
    s.record("segment", "abc", {"level_hu": 200.0})
    rec = json.loads((tmp_path / "stages" / "segment.json").read_text())
    assert rec == {"level_hu": 200.0, HASH_KEY: "abc"}
    assert s.done("segment", "abc", [art])["level_hu"] == 200.0
    assert s.done("segment", "xyz", [art]) is None
    s.invalidate_from(["segment"])
    assert s.done("segment", "abc", [art]) is None
