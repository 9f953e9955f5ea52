"""Turn the MODEL argument into a ModelSpec: a catalogue name, a config.json path, or a Hub id.

Order: an existing path (a config.json file or a folder holding one) wins; then the catalogue
(names and aliases, case-insensitive, e.g. ``meta-llama/Llama-2-70b-hf``); then, for an
``org/name`` id, the Hugging Face Hub (config.json only, via huggingface_hub). Offline, a Hub id
fails with a message that points to the catalogue and to passing a config.json path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from quantkit.catalogue import find_model_card, has_model
from quantkit.errors import ConfigError, InputError, OfflineError
from quantkit.spec import ModelSpec

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_config_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: config.json must hold a JSON object")
    return data


def _from_hub(model_id: str) -> dict:
    from huggingface_hub import hf_hub_download  # only on this path: it is slow to import

    try:
        path = hf_hub_download(model_id, "config.json")
    except Exception as exc:  # network, auth, missing repo: all end here with one message
        raise OfflineError(
            f"could not fetch config.json for {model_id!r} from the Hugging Face Hub "
            f"({type(exc).__name__}); quantkit works offline on its catalogue ('quantkit models') "
            f"or on a local config.json: pass its path or the model folder"
        ) from None
    return read_config_file(Path(path))


def load_spec(model: str) -> ModelSpec:
    """ModelSpec for a catalogue name/alias, a config.json path or folder, or a Hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise InputError(f"{path} has no config.json")
        return ModelSpec.from_hf_config(read_config_file(cfg_path), name=path.name)
    if path.is_file():
        return ModelSpec.from_hf_config(read_config_file(path), name=path.parent.name or path.name)
    if has_model(model) or not _HUB_ID.match(model):
        card = find_model_card(model)  # raises UnknownNameError with suggestions
        return ModelSpec.from_hf_config(card.data, name=card.name)
    return ModelSpec.from_hf_config(_from_hub(model), name=model)
