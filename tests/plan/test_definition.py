"""Plan definitions: names resolved once, every unknown name in one error, plan files validated."""

import json

import pytest

from quantkit.calculators.estimate import estimate
from quantkit.errors import ConfigError, InputError, UnknownNameError
from quantkit.plan.definition import Assumptions, build_plan, plan_names, read_plan_file
from quantkit.plan.rows import build_rows
from tests.calculators.tiny_configs import TINY


def test_aliases_resolve_and_duplicates_collapse():
    p = build_plan({"models": "Llama-2-7b-hf,llama2-7b,LLAMA2-70B", "gpus": ["h100", "h100-sxm", "a100-80gb"],
                    "dtypes": "bfloat16,int8,i4", "contexts": "4096,4096,32768", "batches": [1, 8]})
    assert [s.name for s in p.models] == ["llama2-7b", "llama2-70b"]
    assert [g.name for g in p.gpus] == ["h100-sxm", "a100-80gb"]
    assert p.dtypes == ("bf16", "int8", "int4")
    assert p.contexts == (4096, 32768) and p.batches == (1, 8)
    assert p.num_rows == 2 * 2 * 3 * 2 * 2


def test_every_unknown_name_in_one_error():
    with pytest.raises(UnknownNameError) as exc:
        build_plan({"models": "llama2-7b,llama9-7b,nosuchmodel", "gpus": "h100,h900",
                    "dtypes": "bf16,int3", "kv_dtype": "int2"})
    msg = str(exc.value)
    assert "\n" not in msg
    for name in ("'llama9-7b'", "'nosuchmodel'", "'h900'", "'int3'", "'int2'"):
        assert name in msg, msg
    assert "did you mean" in msg  # suggestions from the catalogue survive


@pytest.mark.parametrize("raw, pattern", [
    ({"gpus": "h100"}, "needs --models"),
    ({"models": "llama2-7b"}, "needs --gpus"),
    ({"models": "llama2-7b", "gpus": "h100", "contexts": "0,abc,-5"}, "bad: '0', 'abc', '-5'"),
    ({"models": "llama2-7b", "gpus": "h100", "batches": ""}, "needs|empty"),
    ({"models": "llama2-7b", "gpus": "h100", "gpu_util": 1.5}, r"gpu_util must be in \(0, 1\]"),
    ({"models": "llama2-7b", "gpus": "h100", "prefill_chunk": -1}, "prefill_chunk must be a positive"),
    ({"models": "llama2-7b", "gpus": "h100", "overhead_bytes": -1}, "overhead_bytes must be a non-negative"),
])
def test_bad_values(raw, pattern):
    with pytest.raises(InputError, match=pattern):
        build_plan(raw)


def test_defaults_are_quantkit_estimates():
    """A plan without assumptions gives exactly what a bare ``estimate(..., gpu=...)`` gives."""
    p = build_plan({"models": "llama3.1-8b", "gpus": "h100", "dtypes": "int4", "contexts": "8192",
                    "batches": "4"})
    assert p.assumptions == Assumptions()
    [row] = build_rows(p)
    from quantkit.catalogue import find_model_card
    from quantkit.spec import ModelSpec

    spec = ModelSpec.from_hf_config(find_model_card("llama3.1-8b").data, name="llama3.1-8b")
    e = estimate(spec, dtype="int4", batch=4, context=8192, gpu="h100")
    assert (row["weights_bytes"], row["kv_cache_bytes"], row["total_bytes"], row["fits"], row["min_gpus"]) == (
        e.weights_bytes, e.kv_cache_bytes, e.total_bytes, e.fits, e.min_gpus)
    assert row["max_batch"] == e.max_batch and row["decode_tokens_per_s_bound"] == e.decode_tokens_per_s_bound


def test_local_config_path_is_a_model(tmp_path):
    path = tmp_path / "tiny" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(TINY["mistral-sliding"]))
    p = build_plan({"models": f"{path.parent},llama2-7b", "gpus": "l4"})
    assert [s.name for s in p.models] == ["tiny", "llama2-7b"]


def test_builtin_plans_are_valid():
    names = plan_names()
    assert "datacenter" in names
    for name in names:
        p = build_plan(read_plan_file(name))
        assert p.num_rows > 0 and p.name == name


def test_plan_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [llama2-7b]\ngpus: [h100]\nbogus: 1\n")
    with pytest.raises(ConfigError, match="unknown plan field.*'bogus'"):
        read_plan_file(str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [llama2-7b\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        read_plan_file(str(broken))
    listing = tmp_path / "list.yaml"
    listing.write_text("- llama2-7b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        read_plan_file(str(listing))
    with pytest.raises(UnknownNameError, match="unknown plan 'nosuch'.*datacenter"):
        read_plan_file("nosuch")
