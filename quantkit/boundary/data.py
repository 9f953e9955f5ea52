"""JSON and YAML files read with their size checked first, nesting limited and YAML aliases refused.

- ``read_text_capped(path, what, cap)``: UTF-8 text of a regular file of at most ``cap`` bytes
  (the size is checked with ``stat`` before any byte is read, and the read stops at ``cap + 1``).
- ``load_json_file`` / ``parse_json``: a JSON document; ``NaN``/``Infinity`` and floats that
  overflow (``1e400``) refused, too-deep nesting (RecursionError) reported, errors as ``ConfigError``.
- ``load_yaml_file``: ``yaml.SafeLoader`` minus aliases (``*ref`` is refused, so an expansion bomb
  never expands) and with a node and depth limit, errors as ``ConfigError``.
"""

from __future__ import annotations

import json

from quantkit.boundary.paths import regular_file, shown
from quantkit.errors import ConfigError, InputError

MAX_CONFIG_BYTES = 64 * 2**20  # config.json, plans, recipes, indexes: 64 MiB (real ones: < 1 MiB)
MAX_DEPTH = 64  # nesting of YAML containers (real recipes and plans: < 4)
MAX_YAML_NODES = 1_000_000


def read_bytes_capped(path, what: str, cap: int = MAX_CONFIG_BYTES) -> bytes:
    """Bytes of the regular file ``path``, refused before reading if larger than ``cap``."""
    st = regular_file(path, what)
    if st.st_size > cap:
        raise InputError(f"{what} {shown(path)} is {st.st_size:,} bytes, over the {cap:,}-byte limit")
    try:
        with open(path, "rb") as fh:
            data = fh.read(cap + 1)
    except OSError as exc:
        raise InputError(f"cannot read {what} {shown(path)}: {exc.strerror or exc}") from None
    if len(data) > cap:  # grew after the stat
        raise InputError(f"{what} {shown(path)} is over the {cap:,}-byte limit")
    return data


def read_text_capped(path, what: str, cap: int = MAX_CONFIG_BYTES) -> str:
    data = read_bytes_capped(path, what, cap)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {shown(path)} is not UTF-8 text (byte {exc.start})") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:40]} is out of the range of a float")
    return value


def parse_json(text: str, where: str):
    """A JSON document from ``text``; ``ConfigError`` naming ``where`` on any problem."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None


def load_json_file(path, what: str = "JSON file", cap: int = MAX_CONFIG_BYTES):
    """The JSON document in ``path`` (a regular file of at most ``cap`` bytes, UTF-8)."""
    return parse_json(read_text_capped(path, what, cap), f"{what} {shown(path)}")


def _loader_class():
    import yaml

    class BoundedSafeLoader(yaml.SafeLoader):
        """SafeLoader that refuses aliases and limits nesting and node count."""

        _nodes = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.YAMLError(_Refused(f"aliases (*{event.anchor}) are not allowed", event.start_mark))
            self._nodes += 1
            if self._nodes > MAX_YAML_NODES:
                raise yaml.YAMLError(_Refused(f"more than {MAX_YAML_NODES:,} nodes", self.peek_event().start_mark))
            depth = getattr(self, "_depth", 0) + 1
            if depth > MAX_DEPTH:
                raise yaml.YAMLError(_Refused(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark))
            self._depth = depth
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth = depth - 1

    return BoundedSafeLoader


class _Refused:
    def __init__(self, problem: str, mark):
        self.problem, self.problem_mark = problem, mark


def load_yaml_file(path, what: str = "YAML file", cap: int = MAX_CONFIG_BYTES, where: str | None = None):
    """The YAML document in ``path``: safe types only, no aliases, bounded size, depth and nodes.
    ``ConfigError`` names the file (or ``where``), the line and the problem (never the document's
    content)."""
    import yaml

    text = read_text_capped(path, what, cap)
    where = where or f"{what} {shown(path)}"
    loader = _loader_class()(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        detail = exc.args[0] if exc.args and isinstance(exc.args[0], _Refused) else exc
        mark = getattr(detail, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(detail, "problem", None) or "syntax error"
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # e.g. a timestamp out of range
        raise ConfigError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    finally:
        loader.dispose()
