"""Small plans written once per session (real catalogue: Llama 2 7B/70B, Mixtral, DeepSeek-V2-Lite,
Gemma 2 9B on H100/A100/L4) for the workbook and LibreOffice tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantkit.plan.definition import build_plan
from quantkit.plan.export import write_plan
from quantkit.plan.rows import build_rows
from tests.plan.expected import Assume

SMALL = {"models": "llama2-7b,llama2-70b", "gpus": "h100-80gb,a100-80gb", "dtypes": "bf16,int8,int4",
         "contexts": "4096,32768", "batches": "1,8"}
# MoE (gpt-oss: biased experts), MLA, sliding windows, paged blocks, fp8 KV, 90% utilisation, int4 groups of 64, 40 KV heads;
# a 131,072-token prefill chunk puts rows on both sides of it (batch x context, and largest batch x
# context: test_xlsx checks that both branches of the largest-batch formula are taken)
OPTIONS = {"models": "mixtral-8x7b,deepseek-v2-lite,gemma2-9b,llama2-13b,gpt-oss-20b", "gpus": "h100,l4",
           "dtypes": "bf16,int4", "contexts": "4097,32768", "batches": "1,7", "block_size": 16,
           "kv_dtype": "fp8", "gpu_util": 0.9, "group_size": 64, "prefill_chunk": 131072,
           "overhead_bytes": 10**9}
OPTIONS_ASSUME = Assume(kv_dtype="fp8", block_size=16, gpu_util=0.9, group_size=64, prefill_chunk=131072,
                        overhead_bytes=10**9)


def make(raw: dict, folder: Path, name: str, fmt: str = "xlsx"):
    plan = build_plan(raw)
    rows = build_rows(plan)
    path = folder / f"{name}.{fmt}"
    write_plan(plan, rows, path, fmt, command="pytest")
    return plan, rows, path


@pytest.fixture(scope="session")
def plans_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("plans")


@pytest.fixture(scope="session")
def small_plan(plans_dir):
    """(plan, rows, xlsx path) of SMALL: 48 rows."""
    return make(SMALL, plans_dir, "small")


@pytest.fixture(scope="session")
def options_plan(plans_dir):
    return make(OPTIONS, plans_dir, "options")
