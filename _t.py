import torch, tempfile, pathlib, warnings; warnings.filterwarnings("ignore")
from tests.quantizers.test_experts import _hub_layout
from quantkit.modelbuild import empty_model, checkpoint_names
from quantkit.modelio import read_config
from transformers.core_model_loading import revert_weight_conversion
for arch in ["mixtral-moe","qwen2-moe-shared","deepseek-v3-mla-qlora"]:
    d = pathlib.Path(tempfile.mkdtemp()); _hub_layout(arch, d)
    m = empty_model(read_config(d), torch.bfloat16)
    exp = set(revert_weight_conversion(m, m.state_dict()))
    names = checkpoint_names(d)
    print(arch, len(exp), len(names), sorted(exp - names)[:3], sorted(names - exp)[:3], getattr(m, "all_tied_weights_keys", None))
