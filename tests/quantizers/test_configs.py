"""QuantConfig: one dataclass per method behind one factory; the registry; no torch import."""

import subprocess
import sys

import pytest

from quantkit.errors import ConfigError, UnknownNameError
from quantkit.quantizers.configs import METHODS, Int8Config, LLMInt8Config, QuantConfig


def test_factory_dispatches_to_method_dataclass():
    c = QuantConfig(method="int8", group_size=128)
    assert type(c) is Int8Config and isinstance(c, QuantConfig)
    assert (c.group_size, c.skip, c.scale_dtype, c.granularity, c.scale_bytes) == (128, ("lm_head",), "bf16", "group", 2)
    assert QuantConfig() == Int8Config()
    b = QuantConfig(method="llm.int8")
    assert type(b) is LLMInt8Config and b.threshold == 6.0 and b.scale_bytes == 4
    assert QuantConfig.from_dict(c.to_dict()) == c
    assert c.to_dict() == {"method": "int8", "group_size": 128, "skip": ["lm_head"], "scale_dtype": "bf16"}
    assert list(METHODS) == ["int8", "llm.int8"]


@pytest.mark.parametrize("kwargs, err, pattern", [
    ({"method": "int4"}, UnknownNameError, r"unknown quantization method 'int4' \(did you mean 'int8'\?\); choose from: int8, llm.int8"),
    ({"method": "int8", "treshold": 3}, ConfigError, r"method 'int8' has no option 'treshold'"),
    ({"method": "llm.int8", "group_size": 64}, ConfigError, r"method 'llm.int8' has no option 'group_size'"),
    ({"group_size": 0}, ConfigError, r"group_size must be a positive integer or null, got 0"),
    ({"group_size": True}, ConfigError, r"group_size must be a positive integer or null, got True"),
    ({"scale_dtype": "fp8"}, ConfigError, r"scale_dtype must be one of bf16, fp16, fp32, got 'fp8'"),
    ({"skip": [""]}, ConfigError, r"skip must be a list of non-empty module names"),
    ({"method": "llm.int8", "threshold": float("nan")}, ConfigError, r"threshold must be a finite number >= 0"),
])
def test_validation_errors(kwargs, err, pattern):
    with pytest.raises(err, match=pattern):
        QuantConfig(**kwargs)


def test_configs_and_cli_help_do_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from quantkit.cli import cli\n"
            "r = CliRunner().invoke(cli, ['quantize', '--help'])\n"
            "assert r.exit_code == 0, r.output\n"
            "assert 'int8, llm.int8' in r.output\n"
            "import quantkit.quantizers.configs, quantkit.quantizers.recipes\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
