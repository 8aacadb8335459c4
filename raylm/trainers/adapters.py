"""`model.adapter`: LoRA, DoRA and QLoRA adapters through `peft` (issue 29). The base stays frozen; only the
adapter's parameters reach the optimizer and the checkpoints.

The seams:
- `pretrained_kwargs(m)`: `from_pretrained` keywords of `model.init_from` (safetensors only; a 4-bit
  quantization config for qlora);
- `apply_adapter(model, adapter, gradient_checkpointing, log)`: the task's model -> a `PeftModel` whose
  adapter parameters are the only ones with `requires_grad`;
- `check(cfg)`: what keeps a config's adapter from training here, one line each (preflight, driver);
- `load_causal_lm(model_dir)`: a causal LM export, whole or an adapter directory, ready for serving.

A checkpoint of an adapter run holds the adapter (peft's `adapter_model.safetensors` + `adapter_config.json`
in `model/`, or the adapter's tensors in `dcp/`) and the optimizer; the base is rebuilt from `model.init_from`
(or from config with raylm's seeded init) on restore and at export.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from raylm.errors import UserError
from raylm.trainers.config import AdapterConfig, ModelConfig

if TYPE_CHECKING:
    import torch

    from raylm.config import RootConfig

ADAPTER_CONFIG, ADAPTER_WEIGHTS, RAYLM_JSON = "adapter_config.json", "adapter_model.safetensors", "raylm.json"

# "auto" targets: the attention and MLP projections, by the HF config's model_type.
_DECODER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_GPT2 = ("c_attn", "c_proj", "c_fc")
_BERT = ("query", "key", "value", "dense")
_BART = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
_T5 = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
AUTO_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": _DECODER, "qwen2": _DECODER, "qwen3": _DECODER, "mistral": _DECODER, "gpt2": _GPT2, "bert": _BERT,
    "roberta": _BERT, "bart": _BART, "marian": _BART, "t5": _T5,
}
_FAMILIES = (_DECODER, _GPT2, _BERT, _BART, _T5)  # tried on other model types: the best overlap wins
_HEADS = r".*(classifier|score|qa_outputs)(\..*)?"  # trained whole by peft (modules_to_save): no LoRA inside


def pretrained_kwargs(m: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of `from_pretrained` for `model.init_from`: safetensors weights only, no shipped code
    unless `model.trust_remote_code`; qlora loads the base in 4-bit NF4 (bitsandbytes, CUDA)."""
    kw: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": m.trust_remote_code}
    if m.adapter.type == "qlora":
        import torch
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True)
    return kw


# ---------------------------------------------------------------- config checks


def check(cfg: RootConfig) -> list[str]:
    """Problems of `model.adapter` in `cfg`, one line each (preflight of train/run/tune, and the driver)."""
    a = cfg.model.adapter
    if a.type != "qlora":
        return []
    use_gpu = cfg.trainer.scaling.use_gpu
    if use_gpu is False or (use_gpu == "auto" and not _cuda()):
        return ["model.adapter.type=qlora needs a CUDA GPU (bitsandbytes 4-bit): use lora on CPU"]
    problems = []
    if importlib.util.find_spec("bitsandbytes") is None:
        problems.append("model.adapter.type=qlora needs bitsandbytes: pip install 'raylm[qlora]' "
                        "(or pip install bitsandbytes)")
    if cfg.trainer.scaling.strategy == "fsdp":
        problems.append("model.adapter.type=qlora runs under trainer.scaling.strategy=ddp only (a 4-bit base is "
                        "not sharded by FSDP2 here)")
    return problems


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------- applying


def is_peft(model: Any) -> bool:
    """True for a peft model (e.g. `apply_adapter`'s result), not wrapped by DDP."""
    return callable(getattr(model, "get_base_model", None)) and hasattr(model, "peft_config")


def base_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft model (itself otherwise)."""
    return model.get_base_model() if is_peft(model) else model


def _architecture(model: torch.nn.Module) -> str:
    conf = getattr(model, "config", None)
    archs = getattr(conf, "architectures", None) or [type(model).__name__]
    kind = getattr(conf, "model_type", "")
    return f"{archs[0]}{f' ({kind})' if kind else ''}"


def _projection_names(model: torch.nn.Module) -> set[str]:
    """Last names of the model's linear layers (nn.Linear, and GPT-2's Conv1D)."""
    import torch

    kinds: tuple[type, ...] = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        kinds += (Conv1D,)
    except ImportError:  # pragma: no cover - transformers always has it today
        pass
    return {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, kinds)}


def target_modules(model: torch.nn.Module, spec: str | list[str]) -> list[str]:
    """The module names the adapters wrap: `spec` as given, or for "auto" the attention and MLP projections
    of the architecture that the model has (Llama/Qwen/Mistral: q/k/v/o + gate/up/down; GPT-2: c_attn, c_proj,
    c_fc; BERT/RoBERTa: query, key, value, dense; BART/Marian; T5)."""
    if spec != "auto":
        return [spec] if isinstance(spec, str) else list(spec)
    present = _projection_names(model)
    kind = getattr(getattr(model, "config", None), "model_type", "")
    known = AUTO_TARGETS.get(kind)
    found = [n for n in known if n in present] if known else []
    if not found:
        best = max(_FAMILIES, key=lambda fam: sum(n in present for n in fam))
        found = [n for n in best if n in present]
    if not found:
        raise UserError(f"model.adapter.target_modules=auto: no attention or MLP projection known for "
                        f"{_architecture(model)}", hint="name them: model.adapter.target_modules=[name, ...] "
                        f"(linear layers of this model: {', '.join(sorted(present)[:12]) or 'none'})")
    return found


def task_type(model: torch.nn.Module) -> str | None:
    """peft's task type for the model's head, from its class name (None: a plain PeftModel)."""
    name = type(base_of(model)).__name__
    for suffixes, kind in ((("ForCausalLM", "LMHeadModel"), "CAUSAL_LM"),
                           (("ForSequenceClassification",), "SEQ_CLS"),
                           (("ForTokenClassification",), "TOKEN_CLS"),
                           (("ForQuestionAnswering",), "QUESTION_ANS"),
                           (("ForConditionalGeneration",), "SEQ_2_SEQ_LM")):
        if name.endswith(suffixes):
            return kind
    return None


def grown_tokens(model: torch.nn.Module, init_from: str | None) -> list[int]:
    """Token ids the model's input embeddings have beyond `init_from`'s vocabulary (the task grew them for
    tokens the data's tokenizer added, e.g. a chat template's): [] when none were added."""
    return grown_tokens_of(init_from, vocab_size(model))


def vocab_size(model: torch.nn.Module) -> int:
    """Rows of the model's input embeddings (inside peft's trainable-tokens wrapper too)."""
    import torch

    emb = model.get_input_embeddings()
    return next(m.num_embeddings for m in emb.modules() if isinstance(m, torch.nn.Embedding))


def grown_tokens_of(init_from: str | None, vocab_size: int | None) -> list[int]:
    """The ids of a vocabulary of `vocab_size` beyond the one of the model directory `init_from`."""
    if not init_from or not vocab_size or not os.path.isfile(os.path.join(init_from, "config.json")):
        return []
    with open(os.path.join(init_from, "config.json")) as f:
        conf = json.load(f)
    before = conf.get("vocab_size") or conf.get("text_config", {}).get("vocab_size")
    return list(range(before, vocab_size)) if before and vocab_size > before else []


def apply_adapter(model: torch.nn.Module, adapter: AdapterConfig, gradient_checkpointing: bool = False,
                  log: Callable[[str], None] = lambda _: None, *, new_tokens: list[int] | None = None
                  ) -> torch.nn.Module:
    """`model` (a transformers model) with `adapter`'s LoRA/DoRA layers: a peft model whose base is frozen.
    The task's head (classifier, QA outputs) is trained whole (peft's modules_to_save for the task type) and
    `new_tokens` (ids the task added to the vocabulary, see `grown_tokens`) train as peft's trainable tokens:
    a frozen base would keep their embeddings random. Logs one line: trainable parameters of the total."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if adapter.type == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                activation_checkpointing_kwargs={"use_reentrant": False})
    targets, kind = target_modules(model, adapter.target_modules), task_type(model)
    conf = LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout, target_modules=targets,
                      use_dora=adapter.type == "dora", task_type=kind,
                      exclude_modules=_HEADS if kind in ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS") else None,
                      trainable_token_indices=_token_targets(model, new_tokens) if new_tokens else None)
    source = getattr(model, "name_or_path", "") or ""
    if source and os.path.isdir(source):  # the adapter's base, as its adapter_config.json records it
        conf.base_model_name_or_path = os.path.abspath(source)
    if gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    try:
        peft_model = get_peft_model(model, conf)
    except ValueError as err:  # e.g. a named target module the model does not have
        raise UserError(f"model.adapter.target_modules={targets}: {err}") from None
    trainable, total = count_parameters(peft_model)
    log(f"[raylm] model.adapter: {adapter.type} r={adapter.r} on {','.join(targets)}"
        f"{f' (+{len(new_tokens)} new token embeddings)' if new_tokens else ''}: {trainable:,} trainable "
        f"parameters of {total:,} ({100 * trainable / max(total, 1):.2f}%)")
    return peft_model


def _token_targets(model: torch.nn.Module, ids: list[int]) -> list[int] | dict[str, list[int]]:
    """peft's trainable_token_indices for new token ids: the input embeddings (a tied lm head follows them), and
    an untied lm head's rows too: otherwise the model could never learn to predict the new tokens, and their
    rows would be the task's random growth, which no export could rebuild from the base."""
    import torch

    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or not isinstance(head, torch.nn.Linear) or head.weight is emb.weight:
        return list(ids)
    names = {m: n for n, m in model.named_modules()}
    return {names[emb]: list(ids), names[head]: list(ids)}


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, tied ones counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ---------------------------------------------------------------- checkpoints


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def save_adapter(model: torch.nn.Module, model_dir: str, state_dict: dict | None = None) -> None:
    """peft's adapter files (`adapter_model.safetensors`, `adapter_config.json`) of a (DDP-wrapped) peft model
    into `model_dir`, from `state_dict` when given (a full state dict gathered by name, frozen base left out),
    plus the base's generation config."""
    m = _unwrap(model)
    kw = {"state_dict": state_dict} if state_dict is not None else {}
    m.save_pretrained(model_dir, safe_serialization=True, save_embedding_layers=False, **kw)
    base = base_of(m)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(model_dir)


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors as peft saves them (adapter name removed from the keys); trainable tokens as their
    rows only, never the whole embedding matrix they sit in."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(_unwrap(model), save_embedding_layers=False)


def load_adapter_weights(model: torch.nn.Module, model_dir: str) -> None:
    """The adapter of a checkpoint's `model/` (peft's files) into a (DDP-wrapped) peft model built with the
    same adapter config; every tensor of the model's adapter must be in the file, and nothing else."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    m = _unwrap(model)
    sd = load_file(os.path.join(model_dir, ADAPTER_WEIGHTS))
    expected = set(adapter_state(m))
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise RuntimeError(f"{model_dir}: the adapter does not match the model's: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    res = set_peft_model_state_dict(m, sd)
    if getattr(res, "unexpected_keys", None):
        raise RuntimeError(f"{model_dir}: adapter tensors the model has no place for: {res.unexpected_keys[:5]}")


def checkpoint_line(model: torch.nn.Module, model_dir: str | None = None) -> str:
    """'[raylm] checkpoint: adapter 123 KB (...)': the bytes of the adapter's files in `model_dir` (an hf
    checkpoint's model/), else of its trainable tensors, against the whole model's tensors."""
    m = _unwrap(model)
    params = list(m.parameters())
    full = sum(p.numel() * p.element_size() for p in params)
    if model_dir and os.path.isdir(model_dir):
        size = sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir))
    else:
        size = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return (f"[raylm] checkpoint: adapter {size / 1024:,.0f} KB ({size:,} bytes; the whole model's tensors: "
            f"{full / 2**20:,.1f} MB, {100 * size / max(full, 1):.2f}%)")


# ---------------------------------------------------------------- exports


def is_adapter_dir(model_dir: str) -> bool:
    """An adapter export (or checkpoint model/): peft's adapter_config.json and no config.json."""
    return (os.path.isfile(os.path.join(model_dir, ADAPTER_CONFIG))
            and not os.path.isfile(os.path.join(model_dir, "config.json")))


def adapter_base(model_dir: str) -> str:
    """The base model directory of an adapter directory: raylm.json's `base`, else adapter_config.json's
    base_model_name_or_path (a relative path is taken from the adapter directory)."""
    info = read_raylm_json(model_dir)
    base = info.get("base")
    if not base:
        with open(os.path.join(model_dir, ADAPTER_CONFIG)) as f:
            base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{model_dir}: an adapter directory that names no base model",
                        hint="set base_model_name_or_path in its adapter_config.json")
    if not os.path.isabs(base) and os.path.isdir(os.path.join(model_dir, base)):
        base = os.path.join(model_dir, base)
    if not os.path.isdir(base):
        raise UserError(f"{model_dir}: its base model '{base}' is not a directory here",
                        hint="export with --merge for a directory that holds the whole model")
    return base


def read_raylm_json(model_dir: str) -> dict:
    path = os.path.join(model_dir, RAYLM_JSON)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_causal_lm(model_dir: str, dtype: torch.dtype | None = None, merge: bool = True) -> torch.nn.Module:
    """A causal LM from an export, in eval mode: a whole HF model directory, or an adapter directory (its base
    from adapter_config.json's base_model_name_or_path, grown to the adapter's vocabulary when raylm.json says
    the run added tokens, then `PeftModel.from_pretrained`). `merge`: the adapter merged into the base's
    weights (a plain transformers model, as fast as the base), else the PeftModel. Safetensors only, no
    shipped code."""
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
    if dtype is not None:
        kw["dtype"] = dtype
    if os.path.isfile(os.path.join(model_dir, "config.json")):
        return AutoModelForCausalLM.from_pretrained(model_dir, **kw).eval()
    if not is_adapter_dir(model_dir):
        raise UserError(f"'{model_dir}' is neither a Hugging Face model directory nor an adapter directory "
                        "(no config.json, no adapter_config.json)", hint="pass an export of `raylm export`")
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(adapter_base(model_dir), **kw)
    vocab = read_raylm_json(model_dir).get("vocab_size")
    if vocab and vocab != base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(vocab, mean_resizing=False)  # the adapter's trainable tokens fill the rows
    model = PeftModel.from_pretrained(base, model_dir, is_trainable=False)
    return (model.merge_and_unload() if merge else model).eval()
