"""Capacity plans: models x GPUs x dtypes x contexts x batches, from quantkit's calculators.

``build_plan`` validates a plan (names, assumptions), ``build_rows`` computes its rows once with
``quantkit.calculators.estimate``, and ``export.write_plan`` renders them as an xlsx workbook with
live formulas (``formulas.py``, ``xlsx.py``), csv or json. No torch anywhere on this path.
"""

from quantkit.plan.definition import Assumptions, Plan, build_plan, plan_names, read_plan_file
from quantkit.plan.rows import ROW_KEYS, build_rows

__all__ = ["Assumptions", "Plan", "build_plan", "build_rows", "plan_names", "read_plan_file", "ROW_KEYS"]
