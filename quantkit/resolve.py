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
    """A config.json file as a dict, read through ``quantkit.boundary`` (a regular file of at
    most 64 MiB, UTF-8, finite numbers, bounded nesting)."""
    from quantkit.boundary.data import load_json_file
    from quantkit.boundary.paths import shown

    data = load_json_file(path, "config.json")
    if not isinstance(data, dict):
        raise ConfigError(f"{shown(path)}: config.json must hold a JSON object")
    return data


_HUB_TIMEOUT_S = 10.0


def _offline_error(model_id: str, why: str) -> OfflineError:
    return OfflineError(
        f"could not fetch config.json for {model_id!r} from the Hugging Face Hub ({why}); quantkit "
        f"works offline on its catalogue ('quantkit models') or on a local config.json: pass its "
        f"path or the model folder"
    )


def _from_hub(model_id: str) -> dict:
    """config.json of a Hub model: one request, a 10 s timeout, no retries, precise errors.

    Honours HF_HUB_OFFLINE, HF_ENDPOINT and the user's token like huggingface_hub does; an
    offline run answers from the local Hub cache when the file is there.
    """
    import urllib.error
    import urllib.request

    from huggingface_hub import constants, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.utils import build_hf_headers

    cached = try_to_load_from_cache(model_id, "config.json")
    if constants.HF_HUB_OFFLINE:
        if isinstance(cached, str):
            return read_config_file(Path(cached))
        raise _offline_error(model_id, "HF_HUB_OFFLINE is set and it is not in the local cache")
    request = urllib.request.Request(hf_hub_url(model_id, "config.json"), headers=build_hf_headers())
    try:
        with urllib.request.urlopen(request, timeout=_HUB_TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise InputError(f"{model_id!r} on the Hugging Face Hub is gated or private (HTTP {exc.code}): "
                             f"log in with 'hf auth login' or pass a local config.json") from None
        if exc.code == 404:
            raise InputError(f"no model {model_id!r} with a config.json on the Hugging Face Hub (HTTP 404); "
                             f"see 'quantkit models' for the built-in catalogue") from None
        raise _offline_error(model_id, f"HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        if isinstance(cached, str):
            return read_config_file(Path(cached))
        reason = getattr(exc, "reason", exc)
        raise _offline_error(model_id, f"no connection: {reason}") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise ConfigError(f"config.json of {model_id!r} on the Hub is not valid JSON") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config.json of {model_id!r} on the Hub must hold a JSON object")
    return data


def _looks_like_path(model: str) -> bool:
    return model.endswith(".json") or model.startswith((".", "/", "~")) or "\\" in model


def load_spec(model: str) -> ModelSpec:
    """ModelSpec for a catalogue name/alias, a config.json path or folder, or a Hub id."""
    from quantkit.boundary.paths import check_path, inside, shown

    path = check_path(model, "MODEL").expanduser()
    if path.is_dir():
        cfg_path = path / "config.json"
        if not (cfg_path.exists() or cfg_path.is_symlink()):
            raise InputError(f"{shown(path)} has no config.json")
        return ModelSpec.from_hf_config(read_config_file(inside(path, "config.json", "config.json")),
                                        name=path.name)
    if path.exists():  # a file, or a FIFO or device that read_config_file names as such
        return ModelSpec.from_hf_config(read_config_file(path), name=path.parent.name or path.name)
    if _looks_like_path(model) and not has_model(model):
        raise InputError(f"no such file or folder: {shown(model)}")
    if has_model(model) or not _HUB_ID.match(model):
        card = find_model_card(model)  # raises UnknownNameError with suggestions
        return ModelSpec.from_hf_config(card.data, name=card.name)
    return ModelSpec.from_hf_config(_from_hub(model), name=model)
