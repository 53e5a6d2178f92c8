"""requant/params.py: one preset switch, its overrides, and the refusals of unusable params."""

from __future__ import annotations

import pytest

from requant.params import ParamsError, load_params
from tests.params_helpers import PARAMS_YAML, make_params, raw_params


def test_repository_params_load_as_demo() -> None:
    params = load_params(PARAMS_YAML)
    assert params.preset == "demo" and params.is_demo
    assert len(params.speeches) == 8
    assert sorted(s.crop_s for s in params.speeches.values()) == [60, 60] + [390] * 6
    assert {s.lang for s in params.speeches.values()} == {"fr", "en"}
    assert len(params.eval_clips) >= 4 and all(c.crop_s <= params.eval.max_s for c in params.eval_clips.values())
    assert {lang for c in params.eval_clips.values() for lang in c.langs} == {"en", "fr"}
    # every evaluation voice is a held-out variant, never a calibration or training voice
    eval_voices = {v for c in params.eval_clips.values() for v in c.voices} | set(params.corpus.demo_voices)
    assert not eval_voices & {s.demo_voice for s in params.speeches.values()}
    assert all(v.endswith(("+m3", "+f2")) for v in eval_voices)
    assert params.corpus.languages == ["en_us", "fr_fr"] and params.corpus.max_per_language == 200


def test_demo_only_clips_are_skipped_by_the_parakeet_preset() -> None:
    demo, parakeet = make_params(preset="demo"), make_params(preset="parakeet")
    assert not any(demo.skips(c) for c in demo.eval_clips.values())
    assert [n for n, c in parakeet.eval_clips.items() if not parakeet.skips(c)] == ["jfk"]
    assert parakeet.corpus.languages == ["fr_fr"] and parakeet.corpus.max_per_language == 0


def test_preset_overrides_apply_only_to_their_preset() -> None:
    raw = raw_params()
    demo, parakeet = make_params(preset="demo"), make_params(preset="parakeet")
    assert demo.shard.budget_mb == raw["presets"]["demo"]["shard.budget_mb"]
    assert parakeet.shard.budget_mb == raw["shard"]["budget_mb"]
    assert not parakeet.is_demo
    custom = make_params(preset="parakeet", presets={"parakeet": {"windows.count": 7, "smooth.alpha": 0.8}})
    assert (custom.windows.count, custom.smooth.alpha) == (7, 0.8)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"preset": "nemo"}, "preset 'nemo' is unknown"),
        ({"smooth": {"alpha": 1.5}}, r"smooth.alpha=1.5 must be >= 0 and <= 1"),
        ({"eval_clips": {"jfk": {**raw_params()["eval_clips"]["jfk"], "crop_s": 410}}},
         "eval_clips.jfk.crop_s=410.0 exceeds eval.max_s=400"),
        ({"eval_clips": {"jfk": {**raw_params()["eval_clips"]["jfk"], "source": "youtube:K6pa-QdL4Wo"}}},
         "also a calibration speech"),
        ({"eval_clips": {"mix": {**raw_params()["eval_clips"]["switch"], "demo_voice": "en-gb+f2"}}},
         "lists 2 language"),
        ({"eval_clips": {}}, "'eval_clips' is empty"),
        ({"eval": {"bootstrap_resamples": 10}}, "eval.bootstrap_resamples=10 must be >= 100"),
        ({"windows": {"count": 0}}, "windows.count=0 must be >= 1"),
        ({"presets": {"demo": {"shard.nope": 1}}}, "'shard.nope' names no existing key"),
        ({"presets": {"demo": {"nogroup.x": 1}}}, "'nogroup.x' names no existing group"),
        ({"fetch": {"retry": 3}}, r"unknown key\(s\) \['retry'\] in 'fetch'"),
        ({"speeches": {}}, "'speeches' is empty"),
    ],
)
def test_bad_params_are_refused_with_a_clear_message(changes: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        make_params(**changes)


def test_missing_params_file(tmp_path) -> None:
    with pytest.raises(ParamsError, match="not found; run from the repository root"):
        load_params(tmp_path / "params.yaml")


def test_dvc_exp_run_set_changes_only_the_lines_it_sets(tmp_path) -> None:
    """`dvc exp run -S` rewrites params.yaml through Hydra and ruamel: flow lists, quotes and comments that
    follow a list do not survive that, so params.yaml is kept in the writer's own layout. `make compare`
    there and back gives the same file, and one value set changes one line."""
    from dvc.utils.hydra import apply_overrides

    from requant.variants import COMPARISON_ROWS, VARIANTS

    copy = tmp_path / "params.yaml"
    original = PARAMS_YAML.read_text()
    copy.write_text(original)
    apply_overrides(str(copy), ["smooth.alpha=0.6"])
    changed = [(a, b) for a, b in zip(original.splitlines(), copy.read_text().splitlines()) if a != b]
    assert changed == [("  alpha: 0.5", "  alpha: 0.6")] and len(copy.read_text()) == len(original)

    rows = ", ".join(f"{v}: {VARIANTS[v].folder}" for v in COMPARISON_ROWS)
    copy.write_text(original)
    apply_overrides(str(copy), ["compare.longform=[all]", "compare.builds=[all]", f"++compare.rows={{{rows}}}"])
    assert load_params(copy).compare.rows.keys() == set(COMPARISON_ROWS)  # make compare
    apply_overrides(str(copy), ["compare.builds=[]"])  # rows that need the comparison builds, without them
    with pytest.raises(ParamsError, match="compare.rows lists int8_mixed, .* built only with compare.builds: "):
        load_params(copy)
    apply_overrides(str(copy), ["compare.longform=[]", "~compare.rows", "+compare.rows={}"])
    assert copy.read_text() == original
