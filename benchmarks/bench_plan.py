"""Time ``quantkit plan`` on 10 models x 8 GPUs x 3 dtypes x 3 contexts x 3 batches (2,160 rows).

Prints the seconds to build the rows (quantkit's calculators) and to write each format, end to end
through the same library calls the command uses (target: the xlsx in under 5 s). With
``--check-libreoffice`` it then opens the workbook in LibreOffice headless, recalculates it and
compares every formula cell with the Python result (tests/plan/expected.py).

    python benchmarks/bench_plan.py [--models a,b,...] [--check-libreoffice] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = ("llama2-7b,llama2-13b,llama2-70b,llama3.1-8b,llama3.1-70b,mistral-7b,mixtral-8x7b,"
          "qwen2.5-7b,qwen2.5-72b,gemma2-27b")
GPUS = "h100-sxm,h200,a100-80gb,a100-40gb,l40s,l4,mi300x,rtx4090"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--gpus", default=GPUS)
    ap.add_argument("--check-libreoffice", action="store_true")
    ap.add_argument("--keep", type=Path, default=None, help="keep the outputs in this folder")
    args = ap.parse_args()

    t0 = time.perf_counter()
    from quantkit.plan.definition import build_plan
    from quantkit.plan.export import write_plan
    from quantkit.plan.rows import build_rows

    raw = {"models": args.models, "gpus": args.gpus, "dtypes": "bf16,int8,int4",
           "contexts": "4096,32768,131072", "batches": "1,8,32"}
    plan = build_plan(raw)
    t1 = time.perf_counter()
    rows = build_rows(plan)
    t2 = time.perf_counter()
    out = args.keep or Path(tempfile.mkdtemp(prefix="bench_plan_"))
    out.mkdir(parents=True, exist_ok=True)
    xlsx = out / "plan.xlsx"
    write_plan(plan, rows, xlsx, "xlsx", force=True, command="benchmarks/bench_plan.py")
    t3 = time.perf_counter()
    write_plan(plan, rows, out / "plan.csv", "csv", force=True)
    t4 = time.perf_counter()
    write_plan(plan, rows, out / "plan.json", "json", force=True)
    t5 = time.perf_counter()
    print(f"plan: {len(plan.models)} models x {len(plan.gpus)} GPUs x {len(plan.dtypes)} dtypes x "
          f"{len(plan.contexts)} contexts x {len(plan.batches)} batches = {len(rows):,} rows")
    print(f"imports + validate      {t1 - t0:6.2f} s")
    print(f"rows (calculators)      {t2 - t1:6.2f} s")
    print(f"xlsx write              {t3 - t2:6.2f} s  ({xlsx.stat().st_size / 1e6:.2f} MB)")
    print(f"total to xlsx           {t3 - t0:6.2f} s  (target < 5 s)")
    print(f"csv write               {t4 - t3:6.2f} s")
    print(f"json write              {t5 - t4:6.2f} s")
    status = 0
    if args.check_libreoffice:
        from tests.plan.expected import Assume, formula_cells, mismatches
        from tests.plan.libreoffice import SOFFICE, convert

        if not SOFFICE:
            print("LibreOffice (soffice) not found: skipped the recalculation check")
        else:
            t6 = time.perf_counter()
            [recalc] = convert([xlsx], out)
            t7 = time.perf_counter()
            bad = mismatches(xlsx, recalc, Assume())
            print(f"LibreOffice open + recalculate + save  {t7 - t6:6.2f} s; "
                  f"{len(formula_cells(xlsx)):,} formula cells, {len(bad)} differ from quantkit "
                  f"by more than 1e-9 relative")
            for line in bad[:10]:
                print("  ", line)
            status = 1 if bad else 0
    if args.keep is None:
        shutil.rmtree(out)
    return status


if __name__ == "__main__":
    sys.exit(main())
