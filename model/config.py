"""Model configuration: presets and the two checkpoint layouts' config.json."""
import dataclasses
import json
from pathlib import Path

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclasses.dataclass(frozen=True)
class GptOssConfig:
    num_hidden_layers: int = 24
    num_experts: int = 32
    experts_per_token: int = 4
    vocab_size: int = 201088
    hidden_size: int = 2880
    intermediate_size: int = 2880
    swiglu_limit: float = 7.0
    head_dim: int = 64
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    sliding_window: int = 128
    initial_context_length: int = 4096
    max_context: int = 131072
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0
    rope_ntk_beta: float = 32.0
    rope_truncate: bool = False
    rms_norm_eps: float = 1e-5
    # One entry per layer; empty means the released models' pattern (sliding on even layers).
    layer_types: tuple = ()

    def __post_init__(self):
        if not self.layer_types:
            object.__setattr__(self, "layer_types",
                               tuple(SLIDING if i % 2 == 0 else FULL for i in range(self.num_hidden_layers)))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        problems = []
        if len(self.layer_types) != self.num_hidden_layers:
            problems.append(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        if any(t not in (SLIDING, FULL) for t in self.layer_types):
            problems.append(f"layer_types may hold only {SLIDING!r} and {FULL!r}, got {sorted(set(self.layer_types))}")
        if self.num_attention_heads % max(self.num_key_value_heads, 1):
            problems.append(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                            f"num_key_value_heads {self.num_key_value_heads}")
        if self.hidden_size % 32 or self.intermediate_size % 32:
            problems.append(f"hidden_size {self.hidden_size} and intermediate_size {self.intermediate_size} "
                            "must be multiples of the MXFP4 block (32)")
        if self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} must be even for RoPE")
        if not 0 < self.experts_per_token <= self.num_experts:
            problems.append(f"experts_per_token {self.experts_per_token} must be in 1..num_experts ({self.num_experts})")
        for name in ("num_hidden_layers", "vocab_size", "hidden_size", "num_key_value_heads", "max_context"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid gpt-oss config: " + "; ".join(problems))

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    @property
    def qkv_dim(self) -> int:
        return (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim

    # -- presets --------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> "GptOssConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
        return PRESETS[name]

    # -- config.json of either layout -----------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "GptOssConfig":
        """Read the original layout's keys (`num_experts`, `rope_ntk_beta`, ...) or Hugging Face's (`model_type: gpt_oss`)."""
        try:
            if d.get("model_type") == "gpt_oss" or "num_local_experts" in d:
                rs = d.get("rope_scaling") or {}
                if rs and rs.get("rope_type", "yarn") != "yarn":
                    raise ValueError(f"rope_scaling.rope_type {rs.get('rope_type')!r} is not supported (only yarn)")
                kw = dict(
                    num_hidden_layers=d["num_hidden_layers"], num_experts=d["num_local_experts"],
                    experts_per_token=d.get("num_experts_per_tok", d.get("experts_per_token")),
                    vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                    intermediate_size=d["intermediate_size"], swiglu_limit=d.get("swiglu_limit", 7.0),
                    head_dim=d.get("head_dim", d["hidden_size"] // d["num_attention_heads"]),
                    num_attention_heads=d["num_attention_heads"], num_key_value_heads=d["num_key_value_heads"],
                    sliding_window=d.get("sliding_window") or 0,
                    initial_context_length=rs.get("original_max_position_embeddings",
                                                  d.get("initial_context_length", 4096)),
                    max_context=d.get("max_position_embeddings", 131072), rope_theta=d.get("rope_theta", 150000.0),
                    rope_scaling_factor=rs.get("factor", 1.0), rope_ntk_alpha=rs.get("beta_slow", 1.0),
                    rope_ntk_beta=rs.get("beta_fast", 32.0), rope_truncate=bool(rs.get("truncate", False)),
                    rms_norm_eps=d.get("rms_norm_eps", 1e-5), layer_types=tuple(d.get("layer_types") or ()),
                )
            else:
                kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
                # The official config has no context key: the official code uses initial length x YaRN factor.
                kw.setdefault("max_context", int(d.get("initial_context_length", 4096) * d.get("rope_scaling_factor", 32.0)))
                missing = [k for k in ("num_hidden_layers", "num_experts", "vocab_size", "hidden_size",
                                       "intermediate_size", "num_attention_heads", "num_key_value_heads") if k not in d]
                if missing:
                    raise KeyError(", ".join(missing))
        except KeyError as e:
            raise ValueError(f"{source}: missing key {e.args[0]} (neither a complete original nor Hugging Face gpt-oss config)") from None
        except TypeError as e:
            raise ValueError(f"{source}: malformed value: {e}") from None
        try:
            return cls(**kw)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path) -> "GptOssConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(d, source=str(path))

    def to_original_dict(self) -> dict:
        """The official `ModelConfig` keys (the released `original/config.json`)."""
        d = {k: getattr(self, k) for k in (
            "num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
            "intermediate_size", "swiglu_limit", "head_dim", "num_attention_heads", "num_key_value_heads",
            "sliding_window", "initial_context_length", "rope_theta", "rope_scaling_factor", "rope_ntk_alpha",
            "rope_ntk_beta")}
        if self.layer_types != GptOssConfig(num_hidden_layers=self.num_hidden_layers).layer_types:
            d["layer_types"] = list(self.layer_types)  # not an official key; only written when it differs
        return d

    def to_hf_dict(self) -> dict:
        return {
            "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True,
            "num_hidden_layers": self.num_hidden_layers, "num_local_experts": self.num_experts,
            "num_experts_per_tok": self.experts_per_token, "experts_per_token": self.experts_per_token,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "swiglu_limit": self.swiglu_limit,
            "head_dim": self.head_dim, "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "sliding_window": self.sliding_window,
            "layer_types": list(self.layer_types), "initial_context_length": self.initial_context_length,
            "max_position_embeddings": self.max_context, "rope_theta": self.rope_theta,
            "rope_scaling": {"rope_type": "yarn", "factor": self.rope_scaling_factor,
                             "beta_fast": self.rope_ntk_beta, "beta_slow": self.rope_ntk_alpha,
                             "original_max_position_embeddings": self.initial_context_length,
                             "truncate": self.rope_truncate},
            "rms_norm_eps": self.rms_norm_eps, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            # o200k_harmony's <|return|> and <|endoftext|>; null where a small vocabulary lacks them
            "eos_token_id": _in_vocab(200002, self.vocab_size), "pad_token_id": _in_vocab(199999, self.vocab_size),
            "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
                "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]},
        }


def _in_vocab(token_id: int, vocab_size: int) -> int | None:
    return token_id if token_id < vocab_size else None


PRESETS = {
    "gpt-oss-20b": GptOssConfig(num_hidden_layers=24, num_experts=32),
    "gpt-oss-120b": GptOssConfig(num_hidden_layers=36, num_experts=128),
    # Small enough for the CPU and Triton's interpreter; head dim, GQA, YaRN and MXFP4 as in the real models;
    # window 16 so that short sequences cross it; vocab holds the built-in byte tokenizer (256 + 21 specials).
    "tiny": GptOssConfig(num_hidden_layers=4, num_experts=8, experts_per_token=4, vocab_size=512, hidden_size=256,
                         intermediate_size=256, num_attention_heads=8, num_key_value_heads=2, sliding_window=16),
    # gpt-oss-nano (model/nano): the same graph, sized to train on a CPU. Parameters go to attention (copying is
    # its job: 4 query heads of 64 over a 128-wide stream), the experts stay narrow (4 of width 64, top-2); a
    # sliding layer then full ones, the window short enough that conversations cross it. Its weights ship
    # with the package: from_pretrained("nano") loads them.
    "nano": GptOssConfig(num_hidden_layers=4, num_experts=4, experts_per_token=2, vocab_size=1056, hidden_size=128,
                         intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, sliding_window=64,
                         layer_types=("sliding_attention", "full_attention", "sliding_attention", "full_attention")),
}
